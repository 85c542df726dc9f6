#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for a number of executions, then the header parsers again on
# long inputs (up to 64 KiB) to catch work that grows faster than the input.
#
#   scripts/fuzz.sh [RUNS] [TARGET...]      default: 1000000 runs, every target
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Seeds are read from
# fuzz/seeds/TARGET (committed); new inputs go to fuzz/corpus-run/TARGET and crashes to
# fuzz/artifacts/TARGET (both ignored by git). One line per run is appended to
# fuzz/logs/summary.txt: target, max_len, executions, seconds, findings.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

RUNS="${1:-1000000}"
shift || true
PARSERS=(retry_after ratelimit_draft7 ratelimit_structured x_ratelimit duration header_map)
ALL=("${PARSERS[@]}" lehnz_key lehnz_reply dead_letter_file sim_request outbound_stack)
TARGETS=("${@:-${ALL[@]}}")
LONG_RUNS="${LONG_RUNS:-$((RUNS / 10))}"

# The dead-letter target writes a file per execution: keep it in memory when possible.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then export TMPDIR=/dev/shm; fi

mkdir -p logs
cargo +nightly fuzz build -O

run() {
  local target="$1" max_len="$2" runs="$3" extra=()
  # Long inputs from the first run on: libFuzzer otherwise grows inputs slowly and a short run
  # never reaches them.
  if [ "$max_len" -gt 4096 ]; then extra=(-len_control=0); fi
  mkdir -p "corpus-run/$target" "seeds/$target" "artifacts/$target"
  local log="logs/$target-$max_len.log" start end status findings
  start=$(date +%s)
  status=0
  cargo +nightly fuzz run -O "$target" "corpus-run/$target" "seeds/$target" -- \
    -runs="$runs" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}" \
    >"$log" 2>&1 || status=$?
  end=$(date +%s)
  findings=$(find "artifacts/$target" -type f | wc -l)
  local done_line
  done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -1 || true)
  printf '%s max_len=%s runs=%s seconds=%s findings=%s status=%s | %s\n' \
    "$target" "$max_len" "$runs" "$((end - start))" "$findings" "$status" "$done_line" \
    | tee -a logs/summary.txt
}

for target in "${TARGETS[@]}"; do
  run "$target" 4096 "$RUNS"
done
for target in "${TARGETS[@]}"; do
  case " ${PARSERS[*]} " in
    *" $target "*) run "$target" 65536 "$LONG_RUNS" ;;
  esac
done
