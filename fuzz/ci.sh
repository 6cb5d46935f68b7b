#!/usr/bin/env bash
# A short coverage-guided fuzz run of every target (README, "Fuzzing"): each starts from its
# corpus in fuzz/corpus/<target> and runs for FUZZ_SECONDS (default 20). A crash fails the
# run; its input is left in fuzz/artifacts/<target>/ (copy it to fuzz/regressions/<target>/
# once fixed, where `cargo test` replays it). New corpus entries go to a scratch directory,
# so CI never changes the committed corpus.
#
# Needs the nightly toolchain and cargo-fuzz; installs cargo-fuzz when missing. The sanitizer
# is off: the parsers are safe Rust (`unsafe_code = "deny"`), so AddressSanitizer would only
# slow the build and the run; libFuzzer still finds panics, overflows (debug assertions are
# on) and timeouts.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-20}"
targets=(pgoutput sse ingest_decode stream_template config_file)

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"
start=$(date +%s)
cargo +nightly fuzz build --sanitizer none
echo "fuzz: built in $(( $(date +%s) - start ))s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  echo "fuzz: $target for ${seconds}s"
  log="$scratch/$target.log"
  if ! cargo +nightly fuzz run --sanitizer none "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $target failed (its input is in fuzz/artifacts/$target/)"
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|DONE' "$log" || true
done
echo "fuzz: all targets passed in $(( $(date +%s) - start ))s"
