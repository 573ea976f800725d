#!/usr/bin/env bash
# Side-by-side relay benchmark: fedai-relay (LMDB, durable) and nostr-rs-relay (SQLite, crates.io)
# measured by the same client (fedai-relay-bench) in the same run, on loopback.
# Peer binaries are built once and cached under .cache/peers (gitignored).
# Usage: tests/bench-relays.sh [--events N] [--subscribers N] [--fanout-events N]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PEERS=$ROOT/.cache/peers
NRS_VERSION=0.8.12

cargo build --release --locked -q -p fedai-relay -p fedai-tests --bins
if [ ! -x "$PEERS/bin/nostr-rs-relay" ]; then
  command -v protoc >/dev/null || { apt-get update -qq && apt-get install -y -qq protobuf-compiler; }
  # Not --locked: its lockfile pins time 0.3.25, which no longer compiles on current Rust.
  cargo install nostr-rs-relay --version "$NRS_VERSION" --root "$PEERS"
fi

FLOOD=${FLOOD:-8}
WORK=$(mktemp -d)
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
PIDS=()
trap cleanup EXIT

mkdir -p "$WORK/fedai" "$WORK/fedai-unbounded" "$WORK/nrs"
# Limits raised so the benchmark measures the relay, not its rate limiter.
target/release/fedai-relay --bind 127.0.0.1:7801 --data-dir "$WORK/fedai" \
  --events-per-minute 100000000 --events-per-minute-per-pubkey 100000000 --log warn >/dev/null 2>&1 &
PIDS+=($!)
target/release/fedai-relay --bind 127.0.0.1:7803 --memory \
  --events-per-minute 100000000 --events-per-minute-per-pubkey 100000000 --log warn >/dev/null 2>&1 &
PIDS+=($!)
target/release/fedai-relay --bind 127.0.0.1:7804 --data-dir "$WORK/fedai-unbounded" \
  --max-pending-writes 0 \
  --events-per-minute 100000000 --events-per-minute-per-pubkey 100000000 --log warn >/dev/null 2>&1 &
PIDS+=($!)
cat > "$WORK/nrs/config.toml" <<TOML
[info]
relay_url = "ws://127.0.0.1:7802/"
name = "nostr-rs-relay bench"
[database]
data_directory = "$WORK/nrs"
[network]
address = "127.0.0.1"
port = 7802
[limits]
max_event_bytes = 524288
max_ws_message_bytes = 1048576
max_ws_frame_bytes = 1048576
TOML
(cd "$WORK/nrs" && RUST_LOG=warn exec "$PEERS/bin/nostr-rs-relay" --config "$WORK/nrs/config.toml" --db "$WORK/nrs" >/dev/null 2>&1) &
PIDS+=($!)
sleep 2

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo
echo "| relay | publish ev/s, 1 in flight (accepted) | 32 in flight, 1 conn | 32 in flight × 4 conns | fan-out to 50 subs p50 / p99 ms (deliveries) | REQ 500 events p50 / p99 ms |"
echo "|---|---|---|---|---|---|"
target/release/fedai-relay-bench --url ws://127.0.0.1:7801 --label "fedai-relay (LMDB)" "$@"
target/release/fedai-relay-bench --url ws://127.0.0.1:7802 --label "nostr-rs-relay $NRS_VERSION (SQLite)" "$@"
target/release/fedai-relay-bench --url ws://127.0.0.1:7803 --label "fedai-relay (--memory)" "$@"

echo
echo "Under a flood: $FLOOD connections pipelining kind-1 notes from fresh keys for 10 s; one quiet"
echo "connection publishes an event every 20 ms (latency to OK, ms)."
echo
echo "| relay | quiet publish idle p50 / p99 | under flood p50 / p99 / max | quiet refused | flood accepted ev/s | flood refused |"
echo "|---|---|---|---|---|---|"
target/release/fedai-relay-bench --url ws://127.0.0.1:7801 --label "fedai-relay (LMDB)" --flood "$FLOOD"
target/release/fedai-relay-bench --url ws://127.0.0.1:7804 --label "fedai-relay (LMDB, --max-pending-writes 0)" --flood "$FLOOD"
target/release/fedai-relay-bench --url ws://127.0.0.1:7802 --label "nostr-rs-relay $NRS_VERSION (SQLite)" --flood "$FLOOD"
