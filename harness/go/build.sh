#!/usr/bin/env bash
# Builds the real-eKuiper test rig into target/ekuiper-rig/ (under the repo root):
#   bin/kuiperd                       eKuiper v2.4.0, built from this module (see go.mod)
#   bin/minio                         MinIO server, `go install github.com/minio/minio@$MINIO_VERSION`
#   plugins/v1/{sources/Ticker.so,sinks/Linefile.so,functions/Shout.so}
#   plugins/v2/sources/Ticker.so      the same source built with -tags rigv2 (reports version 2.0.0)
#   plugins/v1/etc/sources/ticker.yaml
#   plugins/notrim/sinks/Linefile.so  the sink built WITHOUT -trimpath: a library kuiperd
#                                     refuses ("different version of package"), for fault tests
#   plugins/contract230/sinks/Linefile.so  the sink built against contract module v2.3.0
#                                     (kuiperd links v2.3.1): module variants/contract/
#   plugins/go1254/sinks/Linefile.so  the sink built with Go 1.25.4 (OTHER_GO; kuiperd: the machine's Go)
#   plugins/musl/sinks/Linefile.so    the sink linked against musl (CC=musl-gcc; needs
#                                     Debian's musl-tools), kuiperd against glibc
#                                     These three and notrim are libraries a stock kuiperd
#                                     refuses, each for another reason (README.md's table)
#   lib/libkdep.so, plugins/needlib/sinks/Needlib.so  a sink that needs a C library
#                                     besides libc: kuiperd opens it only with
#                                     LD_LIBRARY_PATH=lib/ (the fleet test's odd node lacks it)
#   base/                             an empty eKuiper base directory as its release package
#                                     lays it out (etc/ from the eKuiper module, data/,
#                                     plugins/{sources,sinks,functions,portable,wasm}, log/);
#                                     copy it per node: kuiperd writes into it
# Idempotent: each step is skipped when a stamp of its inputs matches, so a run
# with nothing changed takes well under a second. Go runs niced, one package at
# a time (-p 1): the machine is shared. Usage: harness/go/build.sh [OUT_DIR]
set -euo pipefail

MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c # newest the Go proxy serves; see README.md
EKUIPER_VERSION=2.4.0
OTHER_GO=go1.25.4 # the go1254 variant's toolchain (GOTOOLCHAIN: fetched as golang.org/toolchain)
MUSL_CC=${MUSL_CC:-musl-gcc} # the musl variant's C compiler (Debian package musl-tools)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/target/ekuiper-rig}
mkdir -p "$out/bin" "$out/stamps"
out=$(cd "$out" && pwd)
cd "$here"

# No VCS stamping: the plugins and kuiperd of any commit of this repository are
# then byte-identical, so a clone at another commit reuses the Go build cache
# (vcs.* build settings do not enter the package hashes plugin.Open compares).
export GOFLAGS="-p=1 -buildvcs=false ${GOFLAGS:-}"
export CGO_ENABLED=1 # kuiperd must be cgo-linked for plugin.Open; plugins need it too
# Flags of eKuiper's own release build (Makefile target build_without_edgex).
# The plugins get the same -trimpath: a mismatch makes plugin.Open fail.
kuiperd_ldflags="-s -w -X github.com/lf-edge/ekuiper/v2/cmd.Version=$EKUIPER_VERSION -X github.com/lf-edge/ekuiper/v2/cmd.LoadFileType=relative"
GO="nice -n 15 go"

# stamp NAME INPUT... : prints a hash of the go version and the inputs' contents.
stamp() {
	local name=$1
	shift
	{
		go version
		echo "$GOFLAGS $CGO_ENABLED $kuiperd_ldflags $MINIO_VERSION $MUSL_CC"
		cat "$@"
	} | sha256sum | cut -d' ' -f1
}
# step NAME OUTPUT INPUTS... -- CMD... : runs CMD unless OUTPUT exists and the stamp matches.
step() {
	local name=$1 output=$2
	shift 2
	local inputs=()
	while [ "$1" != -- ]; do inputs+=("$1"); shift; done
	shift
	local want have=""
	want=$(stamp "$name" "${inputs[@]}")
	[ -f "$out/stamps/$name" ] && have=$(cat "$out/stamps/$name")
	if [ -e "$output" ] && [ "$want" = "$have" ]; then
		printf '%-14s up to date\n' "$name"
		return
	fi
	local t0=$SECONDS
	"$@"
	echo "$want" >"$out/stamps/$name"
	printf '%-14s built in %ds\n' "$name" $((SECONDS - t0))
}

mods=(go.mod go.sum)

t0=$SECONDS
step modules "$out/stamps/modules.ok" "${mods[@]}" -- \
	sh -c "$GO mod download && $GO list -deps github.com/lf-edge/ekuiper/v2/cmd/kuiperd ./plugins/... >/dev/null && touch '$out/stamps/modules.ok'"

step kuiperd "$out/bin/kuiperd" "${mods[@]}" build.sh -- \
	$GO build -trimpath -ldflags "$kuiperd_ldflags" -o "$out/bin/kuiperd" github.com/lf-edge/ekuiper/v2/cmd/kuiperd

# The release package's directories (Makefile target build_prepare), with the
# stock etc/ (kuiper.yaml is required: kuiperd will not start without it).
make_base() {
	local src tmp
	src=$(go list -m -f '{{.Dir}}' github.com/lf-edge/ekuiper/v2)
	tmp=$(mktemp -d "$out/base.XXXXXX")
	mkdir -p "$tmp"/{etc,data,log} "$tmp"/plugins/{sources,sinks,functions,portable,wasm}
	cp -R "$src/etc/." "$tmp/etc/"
	chmod -R u+w "$tmp" # the module cache is read-only
	rm -rf "$out/base" && mv "$tmp" "$out/base"
}
step base "$out/base/etc/kuiper.yaml" "${mods[@]}" build.sh -- make_base

build_plugin() { # TYPE DIR NAME FILE [TAGS]
	mkdir -p "$out/plugins/$2/$1"
	$GO build -trimpath -buildmode=plugin ${5:+-tags "$5"} -o "$out/plugins/$2/$1/$4.so" "./plugins/$1/$3"
}
step plugins "$out/plugins/v1/functions/Shout.so" "${mods[@]}" build.sh $(find plugins -type f | sort) -- \
	sh -c "$(declare -f build_plugin); out='$out'; GO='$GO'
		build_plugin sources v1 ticker Ticker &&
		build_plugin sources v2 ticker Ticker rigv2 &&
		build_plugin sinks v1 linefile Linefile &&
		build_plugin functions v1 shout Shout &&
		mkdir -p '$out/plugins/v1/etc/sources' &&
		cp plugins/sources/ticker/ticker.yaml '$out/plugins/v1/etc/sources/ticker.yaml'"

# The same sink without -trimpath: plugin.Open fails on it (its packages hash
# differently from kuiperd's). This compiles the standard library a second time.
step notrim "$out/plugins/notrim/sinks/Linefile.so" "${mods[@]}" build.sh plugins/sinks/linefile/linefile.go -- \
	sh -c "mkdir -p '$out/plugins/notrim/sinks' && $GO build -buildmode=plugin -o '$out/plugins/notrim/sinks/Linefile.so' ./plugins/sinks/linefile"

# MinIO is a separate module with its own go.mod, installed as its docs say.
# GOFLAGS=-mod=mod would not apply; go install pkg@version ignores our module.
step minio "$out/bin/minio" build.sh -- \
	env GOBIN="$out/bin" $GO install "github.com/minio/minio@$MINIO_VERSION"

# Fault-test variants: the linefile sink built so that a stock kuiperd refuses
# it, each for one reason; everything else as in step plugins (same source,
# -trimpath, CGO). They come after MinIO so that a failure here leaves the
# rest of the rig built. Each step checks that its library differs as meant
# (and deletes it if not).
variant() { echo "$out/plugins/$1/sinks/Linefile.so"; }
# refuse LIB MESSAGE: deletes LIB, fails with MESSAGE.
refuse() {
	rm -f "$1"
	echo "build.sh: $1 $2" >&2
	return 1
}

# Against contract v2.3.0: a module of its own (variants/contract/go.mod says
# why) holding a copy of the sink, which must not drift from the original.
build_contract230() {
	local lib
	lib=$(variant contract230)
	if ! cmp -s plugins/sinks/linefile/linefile.go variants/contract/linefile/linefile.go; then
		echo "build.sh: variants/contract/linefile/linefile.go differs from plugins/sinks/linefile/linefile.go: copy it again" >&2
		return 1
	fi
	mkdir -p "$(dirname "$lib")"
	(cd variants/contract && $GO build -trimpath -buildmode=plugin -o "$lib" ./linefile)
	local info
	info=$(go version -m "$lib")
	grep -qE 'dep[[:space:]]+github.com/lf-edge/ekuiper/contract/v2[[:space:]]+v2.3.0[[:space:]]' <<<"$info" ||
		refuse "$lib" "does not link contract v2.3.0"
}
step contract230 "$(variant contract230)" build.sh plugins/sinks/linefile/linefile.go \
	variants/contract/go.mod variants/contract/go.sum variants/contract/linefile/linefile.go -- build_contract230

# With another Go toolchain (the module's go directive, 1.25.4, allows it). The
# first run downloads that toolchain (a 62 MiB zip, 214 MiB unpacked in the module
# cache) and compiles its standard library.
build_go1254() {
	local lib
	lib=$(variant go1254)
	mkdir -p "$(dirname "$lib")"
	GOTOOLCHAIN=$OTHER_GO $GO build -trimpath -buildmode=plugin -o "$lib" ./plugins/sinks/linefile
	[ "$(go version "$lib" | awk '{print $2}')" = "$OTHER_GO" ] ||
		refuse "$lib" "was not built by $OTHER_GO"
}
step go1254 "$(variant go1254)" "${mods[@]}" build.sh plugins/sinks/linefile/linefile.go -- build_go1254

# Linked against musl: CC=$MUSL_CC for the cgo parts (runtime/cgo, net, os/user)
# and the external link. build.sh installs nothing: without musl-gcc it fails
# here, naming the package, after everything else is built.
build_musl() {
	local lib
	lib=$(variant musl)
	if ! command -v "$MUSL_CC" >/dev/null; then
		echo "build.sh: step musl needs $MUSL_CC (not found): install Debian's musl-tools package (apt-get install -y musl-tools)" >&2
		return 1
	fi
	mkdir -p "$(dirname "$lib")"
	CC=$MUSL_CC $GO build -trimpath -buildmode=plugin -o "$lib" ./plugins/sinks/linefile
	# Debian's musl-gcc links musl's libc as NEEDED libc.so (glibc's is libc.so.6).
	local needed
	needed=$(readelf -d "$lib" | grep NEEDED)
	if ! grep -qF '[libc.so]' <<<"$needed" || grep -qF 'libc.so.6' <<<"$needed"; then
		refuse "$lib" "is not linked against musl's libc: $needed"
	fi
}
step musl "$(variant musl)" "${mods[@]}" build.sh plugins/sinks/linefile/linefile.go -- build_musl

# A sink linked against lib/libkdep.so (variants/kdep/kdep.c, built here with
# cc): a library kuiperd loads only where the dynamic linker finds libkdep.
build_needlib() {
	local lib="$out/plugins/needlib/sinks/Needlib.so"
	mkdir -p "$out/lib" "$(dirname "$lib")"
	cc -shared -fPIC -o "$out/lib/libkdep.so" variants/kdep/kdep.c
	CGO_LDFLAGS="-L$out/lib" $GO build -trimpath -buildmode=plugin -o "$lib" ./variants/needlib
	if ! readelf -d "$lib" | grep -q 'NEEDED.*libkdep.so'; then
		refuse "$lib" "does not need libkdep.so"
	fi
}
step needlib "$out/plugins/needlib/sinks/Needlib.so" "${mods[@]}" build.sh variants/needlib/needlib.go variants/kdep/kdep.c -- build_needlib

echo "total          ${SECONDS}s (this run)"
cd "$out"
find bin plugins -type f | sort | xargs ls -l | awk '{printf "%10.1f MiB  %s\n", $5/1048576, $9}'
