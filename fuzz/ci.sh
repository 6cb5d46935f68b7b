#!/usr/bin/env bash
# A short coverage-guided fuzz run of every target (README, "Fuzzing"): each starts from its
# corpus in fuzz/corpus/<target> and runs for FUZZ_SECONDS (default 20). A crash fails the
# run; its input is left in fuzz/artifacts/<target>/ (copy it to fuzz/regressions/<target>/
# once fixed, where `cargo test` replays it). New corpus entries go to a scratch directory,
# so CI never changes the committed corpus.
#
# Uses the nightly toolchain when there is one (FUZZ_TOOLCHAIN overrides), else the
# machine's stable one with RUSTC_BOOTSTRAP=1: the instrumentation flags cargo-fuzz passes to
# rustc are unstable ones, and a CI machine may have no other toolchain (none can be fetched).
# Installs cargo-fuzz when missing. The sanitizer is off: the parsers are safe Rust
# (`unsafe_code = "deny"`), so AddressSanitizer would only slow the build and the run;
# libFuzzer still finds panics, overflows (debug assertions are on) and timeouts.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-20}"
# dev (default): unoptimized, about 5 times faster to build from cold (the whole dependency
# tree is compiled again with instrumentation) and about 15 times slower to run: the right
# trade for a short CI run. release: for long runs.
profile="${FUZZ_PROFILE:-dev}"
build_flags=(--sanitizer none)
if [ "$profile" = dev ]; then
  build_flags+=(--dev)
fi
targets=(pgoutput sse ingest_decode stream_template config_file)

toolchain="${FUZZ_TOOLCHAIN:-}"
if [ -z "$toolchain" ] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=nightly
fi
if [ "$toolchain" = nightly ]; then
  fuzz=(cargo +nightly fuzz)
else
  # The default toolchain (or FUZZ_TOOLCHAIN), accepting cargo-fuzz's unstable flags.
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo ${toolchain:+"+$toolchain"} fuzz)
fi
if ! "${fuzz[@]}" --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
echo "fuzz: toolchain ${toolchain:-default} ($(rustc ${toolchain:+"+$toolchain"} --version))"

export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"
start=$(date +%s)
"${fuzz[@]}" build "${build_flags[@]}"
echo "fuzz: built ($profile) in $(( $(date +%s) - start ))s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  echo "fuzz: $target for ${seconds}s"
  log="$scratch/$target.log"
  if ! "${fuzz[@]}" run "${build_flags[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $target failed (its input is in fuzz/artifacts/$target/)"
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|DONE' "$log" || true
done
echo "fuzz: all targets passed in $(( $(date +%s) - start ))s"
