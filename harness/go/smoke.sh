#!/usr/bin/env bash
# By-hand proof of the rig (not part of cargo test): starts MinIO and a stock
# kuiperd on 127.0.0.1 from what build.sh built, checks that MinIO takes a
# bucket and an object, and that kuiperd loads our three Go plugins and runs a
# rule through all of them. Everything lives in a fresh temporary directory;
# both servers are stopped on exit. Usage: harness/go/smoke.sh [RIG_DIR]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rig=${1:-$here/../../target/ekuiper-rig}
rig=$(cd "$rig" && pwd)
work=$(mktemp -d /tmp/ekuiper-rig-smoke.XXXXXX)
MINIO_PORT=${MINIO_PORT:-19000} KUIPER_REST_PORT=${KUIPER_REST_PORT:-19081}
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	echo "work dir (logs): $work"
}
trap cleanup EXIT
say() { printf '\n== %s\n' "$*"; }
# wait_http URL: polls until URL answers (any status), 30 s at most.
wait_http() {
	for _ in $(seq 300); do
		curl -s -o /dev/null "$1" && return 0
		sleep 0.1
	done
	echo "no answer from $1" >&2
	return 1
}

say "MinIO: $(go version -m "$rig/bin/minio" | awk '$1 == "mod" {print $2, $3}') ($("$rig/bin/minio" --version | head -1))"
export MINIO_ROOT_USER=rigadmin MINIO_ROOT_PASSWORD=rigadmin-secret
mkdir -p "$work/minio"
"$rig/bin/minio" server "$work/minio" --quiet \
	--address "127.0.0.1:$MINIO_PORT" --console-address "127.0.0.1:$((MINIO_PORT + 1))" \
	>"$work/minio.log" 2>&1 &
pids+=($!)
s3=http://127.0.0.1:$MINIO_PORT
t0=$(date +%s.%N)
for _ in $(seq 300); do curl -sf -o /dev/null "$s3/minio/health/live" && break; sleep 0.1; done
curl -sf -o /dev/null "$s3/minio/health/live"
echo "MinIO live after $(echo "$(date +%s.%N) - $t0" | bc) s"
sig=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "$MINIO_ROOT_USER:$MINIO_ROOT_PASSWORD")
echo "create bucket: $(curl -s "${sig[@]}" -X PUT -o /dev/null -w '%{http_code}' "$s3/kuiper-plugins")"
echo "put object:    $(curl -s "${sig[@]}" -X PUT --data-binary 'hello' -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -o /dev/null -w '%{http_code}' "$s3/kuiper-plugins/smoke.txt")"
echo "get object:    $(curl -s "${sig[@]}" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$s3/kuiper-plugins/smoke.txt")"
echo "conditional put of an existing key (If-None-Match: *): $(curl -s "${sig[@]}" -X PUT --data-binary 'again' -H 'If-None-Match: *' -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -o /dev/null -w '%{http_code}' "$s3/kuiper-plugins/smoke.txt")"
echo "list bucket:   $(curl -s "${sig[@]}" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$s3/kuiper-plugins?list-type=2" | grep -o '<Key>[^<]*</Key>')"

say "kuiperd base dir $work/kuiper"
cp -R "$rig/base" "$work/kuiper"
cp "$rig/plugins/v1/sources/Ticker.so" "$work/kuiper/plugins/sources/"
cp "$rig/plugins/v1/sinks/Linefile.so" "$work/kuiper/plugins/sinks/"
cp "$rig/plugins/v1/functions/Shout.so" "$work/kuiper/plugins/functions/"
cp "$rig/plugins/v1/etc/sources/ticker.yaml" "$work/kuiper/etc/sources/"
(cd "$work/kuiper" && find plugins etc/sources/ticker.yaml -type f | sort)
# Config by environment: KUIPER__SECTION__KEY (the prefix is kuiper.yaml's name).
# Loopback only; pprof (6060 by default) off so parallel nodes do not clash.
export KuiperBaseKey=$work/kuiper KUIPER__BASIC__IP=127.0.0.1 KUIPER__BASIC__PORT=$((KUIPER_REST_PORT + 1)) \
	KUIPER__BASIC__RESTIP=127.0.0.1 KUIPER__BASIC__RESTPORT=$KUIPER_REST_PORT \
	KUIPER__BASIC__PPROF=false KUIPER__BASIC__CONSOLELOG=true KUIPER__BASIC__FILELOG=false
kuiper=http://127.0.0.1:$KUIPER_REST_PORT
kpid=
start_kuiperd() {
	local t0
	t0=$(date +%s.%N)
	(cd "$work/kuiper" && exec "$rig/bin/kuiperd") >>"$work/kuiperd.log" 2>&1 &
	kpid=$!
	pids+=($kpid)
	wait_http "$kuiper/ping"
	echo "kuiperd (pid $kpid) answers after $(echo "$(date +%s.%N) - $t0" | bc) s"
}
stop_kuiperd() {
	kill "$kpid"
	wait "$kpid" || true
}
start_kuiperd
get() { printf 'GET %-28s -> %s\n' "$1" "$(curl -s "$kuiper$1")"; }
call() { # METHOD PATH BODY
	printf '%s %s %s\n   -> %s\n' "$1" "$2" "$3" "$(curl -s -X "$1" "$kuiper$2" -H 'Content-Type: application/json' -d "$3" -w ' [%{http_code}]')"
}
say "eKuiper REST"
get /
for p in /plugins/sources /plugins/sources/ticker /plugins/sinks /plugins/sinks/linefile \
	/plugins/functions /plugins/functions/shout /plugins/udfs /plugins/udfs/shout /plugins/udfs/whisper; do get "$p"; done
call POST /plugins/functions/shout/register '{"functions":["shout","whisper"]}'
for p in /plugins/functions/shout /plugins/udfs /plugins/udfs/whisper; do get "$p"; done

say "a rule through the source, both functions and the sink"
out=$work/out.jsonl
call POST /streams '{"sql":"CREATE STREAM tick () WITH (TYPE=\"ticker\", FORMAT=\"json\")"}'
call POST /rules "{\"id\":\"r1\",\"sql\":\"SELECT n, shout(message) AS loud, whisper(\\\"QUIET\\\") AS soft, version FROM tick\",\"actions\":[{\"linefile\":{\"path\":\"$out\"}}]}"
for _ in $(seq 50); do [ -s "$out" ] && [ "$(wc -l <"$out")" -ge 3 ] && break; sleep 0.1; done
get /rules/r1/status | grep -E 'status|records_out_total' 
echo "sink file ($out):"
head -3 "$out" || true

# rows VERSION: waits for a sink line carrying VERSION and prints the newest two.
rows() {
	for _ in $(seq 50); do grep -q "\"version\":\"$1\"" "$out" && break; sleep 0.1; done
	grep "\"version\":\"$1\"" "$out" | tail -2 || echo "no record with version $1"
}

say "restart with the same files: is the registered function list kept?"
stop_kuiperd
start_kuiperd
for p in /plugins/functions/shout /plugins/udfs /rules; do get "$p"; done

say "update: Ticker.so replaced by Ticker@v2.0.0.so (the rigv2 build), restart"
stop_kuiperd
rm "$work/kuiper/plugins/sources/Ticker.so"
cp "$rig/plugins/v2/sources/Ticker.so" "$work/kuiper/plugins/sources/Ticker@v2.0.0.so"
start_kuiperd
get /plugins/sources/ticker
rows 2.0.0

say "two libraries of one name: Ticker@v1.0.0.so (v1 build) beside Ticker@v2.0.0.so, restart"
stop_kuiperd
cp "$rig/plugins/v1/sources/Ticker.so" "$work/kuiper/plugins/sources/Ticker@v1.0.0.so"
ls "$work/kuiper/plugins/sources"
: >"$out"
start_kuiperd
get /plugins/sources/ticker
for _ in $(seq 50); do [ -s "$out" ] && break; sleep 0.1; done
echo "records now: $(tail -1 "$out")"
rm "$work/kuiper/plugins/sources/Ticker@v1.0.0.so"

say "a library that cannot be opened (plugins/sinks/Broken.so, not an ELF file), restart"
stop_kuiperd
echo 'not a library' >"$work/kuiper/plugins/sinks/Broken.so"
start_kuiperd
get /plugins/sinks
get /plugins/sinks/broken
grep -i 'broken' "$work/kuiperd.log" | cut -c1-300 | tail -3 || true

say "a Go plugin built from the same package under another name (Linefile2.so, a copy), restart"
stop_kuiperd
cp "$rig/plugins/v1/sinks/Linefile.so" "$work/kuiper/plugins/sinks/Linefile2.so"
start_kuiperd
get /plugins/sinks
grep -i 'linefile2 open error' "$work/kuiperd.log" | cut -c1-400 | tail -1 || true
rm "$work/kuiper/plugins/sinks/Linefile2.so"

say "the sink built without -trimpath in place of Linefile.so, restart"
if [ -f "$rig/plugins/notrim/sinks/Linefile.so" ]; then
	stop_kuiperd
	cp "$rig/plugins/notrim/sinks/Linefile.so" "$work/kuiper/plugins/sinks/Linefile.so"
	start_kuiperd
	get /plugins/sinks
	get /rules/r1/status | grep -E '"status"|"message"'
	grep -i 'linefile open error' "$work/kuiperd.log" | cut -c1-400 | tail -1 || true
	stop_kuiperd
	cp "$rig/plugins/v1/sinks/Linefile.so" "$work/kuiper/plugins/sinks/Linefile.so"
	start_kuiperd
fi

say "delete through eKuiper's REST: DELETE /plugins/sinks/linefile"
call DELETE /plugins/sinks/linefile ''
get /plugins/sinks
ls "$work/kuiper/plugins/sinks"

say "kuiperd log: errors and warnings"
grep -E 'level=(error|warning)' "$work/kuiperd.log" | grep -v 'schema directory' | cut -c1-300 | sort -k3 | uniq -f2 | head -20 || true
