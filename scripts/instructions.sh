#!/usr/bin/env bash
# Instructions per call of each happy-path case, counted by valgrind's callgrind: each case is
# run with 1,000 and with 2,000 calls and the two totals are differenced, so setup and
# teardown cancel out and the figure is exact (the same on every machine and every run).
#
#   scripts/instructions.sh                      # every case of benches/happy_path.rs
#   scripts/instructions.sh outbound/get bare/get
#   FEATURES=metrics scripts/instructions.sh outbound/get   # with crate features on
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }

bench=$(cargo bench --bench happy_path --no-run --message-format=json ${FEATURES:+--features "$FEATURES"} 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*happy_path[^"]*\)".*/\1/p' | tail -1)
[ -x "$bench" ] || { echo "could not build benches/happy_path.rs" >&2; exit 1; }

cases=("$@")
if [ ${#cases[@]} -eq 0 ]; then
  cases=(bare/get bare/post layer/idempotency/post layer/dead_letters/get layer/dead_letters/post
    layer/deadline/get layer/retry_with_deadline/get layer/retry/get layer/retry/post
    layer/circuit_breaker/get layer/retry_after/get layer/throttle/get layer/tower_timeout/get
    layer/timeout/get outbound/get outbound/post outbound_hedge/get tower/get tower/post
    tower_resilience/get tower_resilience/post)
fi

total() {
  local out
  out=$(mktemp)
  HAPPY_PATH_CASE="$1" HAPPY_PATH_CALLS="$2" valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bench" --bench >/dev/null 2>&1
  sed -n 's/^summary: //p' "$out"
  rm -f "$out"
}

printf '%-32s %12s\n' case instructions/call
for case in "${cases[@]}"; do
  one=$(total "$case" 1000)
  two=$(total "$case" 2000)
  printf '%-32s %12s\n' "$case" $(( (two - one) / 1000 ))
done
