#!/usr/bin/env bash
# The README's first commands from a fresh clone with an empty target/:
# seconds until `cargo run --release --bin plugin-api` answers /ping, and
# seconds for `cargo run --release --bin kuiper-node -- sync` to finish.
#
#   bash benches/first_run.sh [REV]    (default HEAD; crates already downloaded
#                                       into ~/.cargo are reused, as after any
#                                       earlier build on the machine)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
REV=${1:-HEAD}
WORK=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
PID=
git clone -q "$REPO" "$WORK/repo"
git -C "$WORK/repo" checkout -q "$REV"
cd "$WORK/repo"
echo "first run of $(git log -1 --format='%h %s') on $(nproc) cores"

# The service: from the command to the first pong.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start=$(date +%s.%N)
KUIPER_LISTEN=127.0.0.1:$port cargo run -q --release --bin plugin-api >"$WORK/api.log" 2>&1 &
PID=$!
until curl -sf "http://127.0.0.1:$port/ping" >/dev/null 2>&1; do
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/api.log"; exit 1; }
  sleep 0.5
done
end=$(date +%s.%N)
kill "$PID"; wait "$PID" 2>/dev/null || true
PID=
printf 'service: %.0f s from `cargo run --release --bin plugin-api` to /ping\n' "$(echo "$end - $start" | bc)"

# The node, from another empty target/.
rm -rf target
start=$(date +%s.%N)
cargo run -q --release --bin kuiper-node -- sync --store ./data --root "$WORK/root" >/dev/null
end=$(date +%s.%N)
printf 'node: %.0f s for `cargo run --release --bin kuiper-node -- sync` from an empty target/\n' "$(echo "$end - $start" | bc)"
