// A fault-test variant of the rig (build.sh step contract230): the linefile
// sink, built against contract module v2.3.0 instead of the v2.3.1 that
// kuiperd v2.4.0 links. Same Go, same -trimpath, same CGO as the rig's other
// plugins, so the contract version is the only difference; a stock kuiperd
// must refuse the library (plugin.Open compares every shared package's hash).
// v2.3.0's api.StreamContext lacks GetRunId and WithRun, which v2.3.1 has.
//
// It is a module of its own because one module can hold only one version of
// another: the rig's main module pins v2.3.1 for kuiperd and the good plugins.
// linefile/linefile.go is a byte-for-byte copy of ../../plugins/sinks/linefile/;
// build.sh refuses to build if the two differ. The contract module has no
// requirements of its own, so nothing else changes.
module kuiper-registry/harness/go/variants/contract

go 1.25.4

require github.com/lf-edge/ekuiper/contract/v2 v2.3.0
