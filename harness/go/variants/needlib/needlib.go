// Command needlib is a rig sink that links against libkdep.so, a C library
// build.sh builds into lib/. kuiperd opens it only where the dynamic linker
// finds that library (LD_LIBRARY_PATH=lib/): the fleet test runs one node
// without it, as a node lacking a system library a plugin needs.
//
// Build: see build.sh (CGO_LDFLAGS=-L.../lib, -trimpath, -buildmode=plugin).
package main

/*
#cgo LDFLAGS: -lkdep
int kdep_ready(void);
*/
import "C"

import "github.com/lf-edge/ekuiper/contract/v2/api"

type needlib struct{}

func (needlib) Provision(api.StreamContext, map[string]any) error { return nil }

func (needlib) Connect(_ api.StreamContext, sch api.StatusChangeHandler) error {
	sch(api.ConnectionConnected, "")
	return nil
}

// Collect calls into libkdep.so, so the library is really needed.
func (needlib) Collect(api.StreamContext, api.MessageTuple) error {
	C.kdep_ready()
	return nil
}

func (needlib) CollectList(api.StreamContext, api.MessageTupleList) error { return nil }

func (needlib) Close(api.StreamContext) error { return nil }

var _ api.TupleCollector = needlib{}

// Needlib is the exported constructor eKuiper looks up (a func() api.Sink).
func Needlib() api.Sink { return needlib{} }
