#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ under libFuzzer (nightly and cargo-fuzz needed:
# `rustup toolchain install nightly`, `cargo install cargo-fuzz`).
#
#   scripts/fuzz.sh record [RUNS]          every target, then writes the record: fuzz/record.txt
#                                          and its table in docs/reliability.md (both committed)
#   scripts/fuzz.sh [RUNS] [TARGET...]     the named targets (default: all), a summary line each
#
# RUNS defaults to 1000000. Every target runs RUNS executions with
#     -runs=RUNS -max_len=4096 -seed=1 -timeout=10 -rss_limit_mb=2048
# then the header parsers run LONG_RUNS more (default RUNS / 10) with
#     -runs=LONG_RUNS -max_len=65536 -len_control=0 -seed=1 -timeout=10 -rss_limit_mb=2048
# (-len_control=0: inputs up to 64 KiB from the start, to catch work that grows faster than the
# input). libFuzzer stops after -runs executions unless it finds something; its first pass over
# the corpus counts and always runs whole, which in `record` mode is only the few seeds. So in a
# record each line's executions equal its runs when nothing was found.
#
# Each run starts from the committed seeds (fuzz/seeds/TARGET) and, for `record`, an empty
# corpus of its own (fuzz/corpus-record/TARGET, cleared first), so a record can be reproduced
# from the repository alone; otherwise new inputs accumulate in fuzz/corpus-run/TARGET. Crashes
# go to fuzz/artifacts/TARGET; libFuzzer's full output to fuzz/logs/ (all three ignored by git).
# The fuzzing processes run under `nice -n 19`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

RECORD=0
if [ "${1:-}" = record ]; then
  RECORD=1
  shift
fi
RUNS="${1:-1000000}"
shift || true
PARSERS=(retry_after ratelimit_draft7 ratelimit_structured x_ratelimit duration header_map)
ALL=("${PARSERS[@]}" lehnz_key lehnz_reply dead_letter_file sim_request outbound_stack)
if [ "$RECORD" = 1 ] && [ "$#" -gt 0 ]; then
  echo "scripts/fuzz.sh record runs every target; name none" >&2
  exit 2
fi
TARGETS=("${@:-${ALL[@]}}")
LONG_RUNS="${LONG_RUNS:-$((RUNS / 10))}"
COMMON=(-seed=1 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)

# The dead-letter target writes files on every execution: keep them in memory when possible.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then export TMPDIR=/dev/shm; fi

mkdir -p logs
# The code the record is of: the commit at the start (a commit made during the run is not it).
commit=$(git rev-parse --short=12 HEAD)
if ! git diff --quiet HEAD -- ../src ../Cargo.toml ../Cargo.lock . ':!record.txt' 2>/dev/null; then
  commit="$commit+uncommitted"
fi
cargo +nightly fuzz build -O

LINES=()
# One of libFuzzer's final stats (-print_final_stats=1) from a log.
final_stat() { { grep -E "^stat::$1:" "$2" || true; } | tail -1 | awk '{print $2}'; }

run() {
  local target="$1" max_len="$2" runs="$3" extra=()
  if [ "$max_len" -gt 4096 ]; then extra=(-len_control=0); fi
  local corpus="corpus-run/$target"
  if [ "$RECORD" = 1 ]; then
    corpus="corpus-record/$target"
    rm -rf "$corpus"
  fi
  mkdir -p "$corpus" "artifacts/$target"
  local log="logs/$target-$max_len.log" start end status=0 before after
  before=$(find "artifacts/$target" -type f | wc -l)
  start=$(date +%s)
  nice -n 19 cargo +nightly fuzz run -O "$target" "$corpus" "seeds/$target" -- \
    -runs="$runs" -max_len="$max_len" "${extra[@]}" "${COMMON[@]}" >"$log" 2>&1 || status=$?
  end=$(date +%s)
  after=$(find "artifacts/$target" -type f | wc -l)
  local executions slowest peak seconds rate
  executions=$(final_stat number_of_executed_units "$log")
  slowest=$(final_stat slowest_unit_time_sec "$log")
  peak=$(final_stat peak_rss_mb "$log")
  seconds=$((end - start))
  rate=$(( ${executions:-0} / (seconds > 0 ? seconds : 1) ))
  local line
  line=$(printf '%s max_len=%s flags=%s runs=%s executions=%s seconds=%s exec_per_s=%s slowest_s=%s peak_rss_mb=%s findings=%s status=%s' \
    "$target" "$max_len" "$(IFS=,; echo "${extra[*]:-}" | sed 's/^$/-/')" "$runs" "${executions:-?}" \
    "$seconds" "$rate" "${slowest:-?}" "${peak:-?}" "$((after - before))" "$status")
  echo "$line" | tee -a logs/summary.txt
  LINES+=("$line")
}

for target in "${TARGETS[@]}"; do
  run "$target" 4096 "$RUNS"
done
for target in "${TARGETS[@]}"; do
  case " ${PARSERS[*]} " in
    *" $target "*) run "$target" 65536 "$LONG_RUNS" ;;
  esac
done

[ "$RECORD" = 1 ] || exit 0

# The record: what ran, on what, and one line per run.
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //' || true)
load=$(sed 's/ [0-9]*\/.*//' /proc/loadavg 2>/dev/null || true)
note="\`scripts/fuzz.sh record $RUNS\` (LONG_RUNS=$LONG_RUNS) at commit $commit on $(date -u +%Y-%m-%d);"
note="$note $(rustc +nightly --version), $(cargo fuzz --version); $(nproc) cores${cpu:+ ($cpu)},"
note="$note load average ${load:-unknown} at the end"
{
  echo "# Recorded by $note."
  echo "# Flags of every run: -runs=RUNS -max_len=MAX_LEN ${COMMON[*]}, and those in flags=."
  printf '%s\n' "${LINES[@]}"
} >record.txt

# Its table in docs/reliability.md, between the markers.
table=$(awk '
  function thousands(n,   s) {
    s = n ""
    while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s)
    return s
  }
  /^#/ { next }
  {
    for (i = 2; i <= NF; i++) { eq = index($i, "="); f[substr($i, 1, eq - 1)] = substr($i, eq + 1) }
    flags = (f["flags"] == "-") ? "" : " (`" f["flags"] "`)"
    printf "| `%s` | %s%s | %s | %s s | %s/s | %s | %s MB | %s |\n", \
      $1, f["max_len"], flags, thousands(f["executions"]), f["seconds"], thousands(f["exec_per_s"]), \
      (f["slowest_s"] == 0 ? "< 1 s" : f["slowest_s"] " s"), f["peak_rss_mb"], \
      (f["status"] == 0 ? f["findings"] : f["findings"] " (exit " f["status"] ")")
  }' record.txt)
header="| target | max_len | executions | time | rate | slowest input | peak RSS | findings |
|--------|---------|------------|------|------|---------------|----------|----------|"
awk -v table="$header"$'\n'"$table" -v note="Recorded by $note." '
  /<!-- fuzz-record:start -->/ { print; print ""; print note; print ""; print table; print ""; skip = 1; next }
  /<!-- fuzz-record:end -->/ { skip = 0 }
  !skip { print }' ../docs/reliability.md >../docs/reliability.md.new
mv ../docs/reliability.md.new ../docs/reliability.md
echo "wrote fuzz/record.txt and its table in docs/reliability.md"
