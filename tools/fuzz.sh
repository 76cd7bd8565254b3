#!/usr/bin/env bash
# Fuzz plflow's dataset readers: builds the seed corpora (small valid files of every format),
# then runs each cargo-fuzz target for SECONDS (default 60) with memory limits. A crash, hang
# or over-limit allocation stops that target and leaves its input in fuzz/artifacts/<target>/;
# copy it to datasets/tests/data/fuzz/<target>-<hash> so that fuzz_regressions.rs keeps it.
#   cargo install cargo-fuzz          # once; needs the nightly toolchain
#   tools/fuzz.sh 1800                # half an hour per target
#   tools/fuzz.sh 60 parquet idx      # some targets only
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(idx cifar arrow_ipc parquet image_archive image_decode pipeline model)
fi
cargo run --quiet --example seeds -- corpus
cargo +nightly fuzz build -O
status=0
for t in "${targets[@]}"; do
  echo "== $t for ${seconds}s"
  if ! cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=1024 -malloc_limit_mb=512 -timeout=20 \
      -print_final_stats=1 2>&1 | tee "target/fuzz-$t.log" | grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|ERROR|SUMMARY"; then
    status=1
  fi
  if ls "artifacts/$t"/* >/dev/null 2>&1; then
    echo "   $t left inputs in fuzz/artifacts/$t/"; status=1
  fi
done
exit $status
