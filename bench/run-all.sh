#!/usr/bin/env bash
# Runs every bench scenario on this machine (release build) and rewrites bench/RESULTS.md
# from their reports; charts are copied to bench/charts/. Usage: bash bench/run-all.sh
# The runner is the cargo feature `bench` (the sidecar binary is built without it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --features bench
out=$(mktemp -d)
scenarios=(capture-drain capture-latency memory snapshot ingest-drain ingest-latency ingest-outage naive failover ingest-share chaos)
# Sizes other than the defaults, per scenario (the issue's figures).
declare -A args=([ingest-outage]="--rows 300000 --duration 15" [ingest-drain]="--table-forms plain,partitioned,unindexed --runs 5" [memory]="--runs 5" [snapshot]="--runs 5" [failover]="--runs 10 --rate 500" [chaos]="--duration 300 --kills 50 --seed 20261202")
for s in "${scenarios[@]}"; do
  echo "== $s" >&2
  # The previous scenario's writes are flushed first, so that no scenario pays for another's
  # disk writeback (a million-row drain leaves seconds of it).
  sync
  # shellcheck disable=SC2086
  "${CARGO_TARGET_DIR:-target}/release/ds-sync" bench "$s" ${args[$s]:-} --out "$out" >&2
done
rm -rf bench/charts && mkdir -p bench/charts
{
  echo "# Benchmark results"
  echo
  echo "Written by \`bash bench/run-all.sh\` on $(date -u +%Y-%m-%d): every scenario with its default"
  echo "size unless its command line says otherwise, one after another, each next to its ceiling"
  echo "or baseline measured in the same run."
  echo "Each section is that scenario's report.md; the command line is in it."
  echo
  cat bench/NOTES.md 2>/dev/null || true
  for s in "${scenarios[@]}"; do
    dir=$(ls -d "$out/$s"-* | head -1)
    for svg in "$dir"/*.svg; do
      [ -e "$svg" ] || continue
      cp "$svg" "bench/charts/$s-$(basename "$svg")"
    done
    echo
    sed -e "s|^# ds-sync bench|## ds-sync bench|" \
        -e "s|(throughput.svg)|(charts/$s-throughput.svg)|" \
        -e "s|(latency.svg)|(charts/$s-latency.svg)|" "$dir/report.md"
  done
} > bench/RESULTS.md
rm -rf "$out"
echo "wrote bench/RESULTS.md" >&2
