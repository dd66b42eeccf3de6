#!/usr/bin/env bash
# Builds the real-eKuiper test rig into target/ekuiper-rig/ (under the repo root):
#   bin/kuiperd                       eKuiper v2.4.0, built from this module (see go.mod)
#   bin/minio                         MinIO server, `go install github.com/minio/minio@$MINIO_VERSION`
#   plugins/v1/{sources/Ticker.so,sinks/Linefile.so,functions/Shout.so}
#   plugins/v2/sources/Ticker.so      the same source built with -tags rigv2 (reports version 2.0.0)
#   plugins/v1/etc/sources/ticker.yaml
#   plugins/notrim/sinks/Linefile.so  the sink built WITHOUT -trimpath: a library kuiperd
#                                     refuses ("different version of package"), for fault tests
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

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/target/ekuiper-rig}
mkdir -p "$out/bin" "$out/stamps"
out=$(cd "$out" && pwd)
cd "$here"

export GOFLAGS="-p=1 ${GOFLAGS:-}"
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
		echo "$GOFLAGS $CGO_ENABLED $kuiperd_ldflags $MINIO_VERSION"
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

echo "total          ${SECONDS}s (this run)"
cd "$out"
find bin plugins -type f | sort | xargs ls -l | awk '{printf "%10.1f MiB  %s\n", $5/1048576, $9}'
