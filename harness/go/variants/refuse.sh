#!/usr/bin/env bash
# By-hand check of the fault-test variants (not part of cargo test): for each
# library under RIG_DIR/plugins/<variant>/sinks/Linefile.so (v1, the good one,
# first as the control), starts the rig's stock kuiperd in a fresh copy of
# base/ with that library as plugins/sinks/Linefile.so, and prints what
# GET /plugins/sinks answers and kuiperd's log lines about the plugin, then
# stops it. Free loopback ports, pprof off, one kuiperd at a time; logs stay
# in a temporary directory. Usage: harness/go/variants/refuse.sh [RIG_DIR [VARIANT...]]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rig=${1:-$here/../../../target/ekuiper-rig}
rig=$(cd "$rig" && pwd)
shift || true
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(v1 notrim contract230 go1254 musl)
work=$(mktemp -d /tmp/ekuiper-variants.XXXXXX)
kpid=
cleanup() {
	[ -n "$kpid" ] && kill "$kpid" 2>/dev/null && wait "$kpid" 2>/dev/null
	echo "work dir (logs): $work"
}
trap cleanup EXIT

# free_port: a loopback port nobody listens on now (bound, then released).
free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

for v in "${variants[@]}"; do
	lib=$rig/plugins/$v/sinks/Linefile.so
	printf '\n== %s: %s\n' "$v" "$lib"
	[ -f "$lib" ] || { echo "missing (run build.sh)"; continue; }
	base=$work/$v
	cp -R "$rig/base" "$base"
	cp "$lib" "$base/plugins/sinks/Linefile.so"
	rest=$(free_port) rpc=$(free_port)
	log=$work/$v.log
	(cd "$base" && exec env KuiperBaseKey="$base" KUIPER__BASIC__IP=127.0.0.1 KUIPER__BASIC__PORT="$rpc" \
		KUIPER__BASIC__RESTIP=127.0.0.1 KUIPER__BASIC__RESTPORT="$rest" \
		KUIPER__BASIC__PPROF=false KUIPER__BASIC__CONSOLELOG=true KUIPER__BASIC__FILELOG=false \
		"$rig/bin/kuiperd") >"$log" 2>&1 &
	kpid=$!
	up=
	for _ in $(seq 300); do
		curl -s -o /dev/null "http://127.0.0.1:$rest/ping" && { up=1; break; }
		kill -0 "$kpid" 2>/dev/null || break
		sleep 0.1
	done
	if [ -n "$up" ]; then
		echo "GET /plugins/sinks          -> $(curl -s "http://127.0.0.1:$rest/plugins/sinks")"
		echo "GET /plugins/sinks/linefile -> $(curl -s "http://127.0.0.1:$rest/plugins/sinks/linefile")"
		kill "$kpid"
		wait "$kpid" || true
	else
		rc=0
		wait "$kpid" || rc=$?
		echo "kuiperd did not answer; exit status $rc; last log lines:"
		tail -20 "$log"
	fi
	kpid=
	echo "log lines naming linefile or plugin:"
	grep -iE 'linefile|plugin' "$log" | grep -v 'schema directory' | cut -c1-600 || echo "(none)"
done
