#!/usr/bin/env bash
# Fuzz every parser that takes network input for a bounded time (CI calls this).
#
# Coverage-guided (libFuzzer through cargo-fuzz, on nightly) where a nightly toolchain is
# installed: cargo-fuzz is installed once into .cache/cargo-fuzz, each target's corpus grows in
# .cache/fuzz-corpus/<target> across runs. Without nightly (or with FEDAI_FUZZ_STABLE=1) the
# stable runner mutates the seeds at random instead. Usage: run.sh [SECONDS per target, 15]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-15}
targets=(event signed bolt11 lnurl lnd zap)
root=$PWD/.cache/cargo-fuzz
if [ "${FEDAI_FUZZ_STABLE:-}" != 1 ] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  if [ ! -x "$root/bin/cargo-fuzz" ]; then
    cargo install --locked cargo-fuzz --version 0.13.2 --root "$root"
  fi
  export PATH=$root/bin:$PATH
  # The harnesses live outside the workspace; they share its lock file (some pinned versions
  # are yanked, so a fresh resolution would fail).
  cp Cargo.lock tests/fuzz/libfuzzer/Cargo.lock
  cargo +nightly fuzz build -O --fuzz-dir tests/fuzz/libfuzzer
  for t in "${targets[@]}"; do
    corpus=.cache/fuzz-corpus/$t
    mkdir -p "$corpus"
    echo "fuzz: $t (libFuzzer, ${secs}s)"
    log=.cache/fuzz-corpus/$t.log
    if ! cargo +nightly fuzz run -O --fuzz-dir tests/fuzz/libfuzzer "$t" "$corpus" "tests/fuzz/seeds/$t" \
      -- -max_total_time="$secs" -max_len=8192 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
      tail -40 "$log"
      echo "fuzz: $t FAILED (the input is under tests/fuzz/libfuzzer/artifacts/$t)"
      exit 1
    fi
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)|DONE" "$log" || true
  done
else
  cargo run --release --locked -p fedai-fuzz -- --seconds "$secs" "${targets[@]}"
fi
