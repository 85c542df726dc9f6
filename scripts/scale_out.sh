#!/usr/bin/env bash
# The main job scaled out: N `lehnz_sync` processes over one input of EVENTS generated events,
# one shard each, sharing one Lehnz rate-limit window and one dead-letter stream through a
# local Redis Cluster, against one simulator. Then it sums the processes' reports and checks
# them against the simulator's own count.
#
#   scripts/scale_out.sh 4 1000000        # N EVENTS
#   KEEP=1 scripts/scale_out.sh 2 50000   # keep the temporary directory (logs, checkpoints)
#
# It starts three `redis-server --cluster-enabled yes` on free loopback ports, joins them with
# `redis-cli --cluster create` (three primaries, no replicas), starts the simulator
# (examples/lehnz_sim.rs: chaos on, seed 7, a window of 100 requests per 5 s), runs the N
# processes in parallel (release build, feature `redis-cluster`), waits for them, and reads
# the simulator's counts from `GET /_sim/stats`. Everything it started is stopped, and its
# temporary directory removed, when it exits. Needs redis-server, redis-cli, curl and jq.
#
# The checks (exit 1 if one fails): every event stored (0 lost), the summed "delivered" of the
# reports equal to the distinct event ids the simulator stored, no 429 for a used-up window,
# at least 85 % of the window used by the whole fleet (events delivered per second from the
# start of the first process to the end of the last, against 100 requests per 5 s of 500
# events each), and every process's exit status 0.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 2 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]] || ! [[ $2 =~ ^[0-9]+$ ]]; then
  echo "usage: $0 N EVENTS   (N processes, at least 1; EVENTS generated events)" >&2
  exit 2
fi
shards=$1
events=$2
window_limit=100
window_secs=5
batch=500
for tool in redis-server redis-cli curl jq; do
  command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done

cargo build --release --features lehnz,sim,redis-cluster --example lehnz_sync --example lehnz_sim
bin=target/release/examples

dir=$(mktemp -d "${TMPDIR:-/tmp}/scale-out.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then
    echo "kept $dir"
  else
    rm -rf "$dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A loopback port that nothing listens on, below the ephemeral range (32768 and up on Linux),
# whose cluster bus port (port + 10000) is free too.
free_port() {
  local port
  while :; do
    port=$((10000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
      ! (exec 3<>"/dev/tcp/127.0.0.1/$((port + 10000))") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
}

# Starts cluster node $1 in its own directory on a free port (another one if that was taken
# in the meantime); its address goes to $dir/redis-$1/addr, its process id to
# $dir/redis-$1/pid.
start_node() {
  local node=$dir/redis-$1 port pid
  mkdir -p "$node"
  for _ in 1 2 3 4 5; do
    port=$(free_port)
    (cd "$node" && exec redis-server --port "$port" --bind 127.0.0.1 --save "" \
      --appendonly no --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 2000 >redis.log 2>&1) &
    pid=$!
    echo "$pid" >"$node/pid"
    for _ in $(seq 50); do
      if redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then
        echo "127.0.0.1:$port" >"$node/addr"
        return
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
  done
  echo "redis-server did not start: $(tail -n 2 "$node/redis.log")" >&2
  return 1
}

# The cluster: three primaries covering every slot.
nodes=()
for i in 0 1 2; do
  start_node "$i" || { pids+=("$(cat "$dir/redis-$i/pid")"); exit 1; }
  pids+=("$(cat "$dir/redis-$i/pid")")
  nodes+=("$(cat "$dir/redis-$i/addr")")
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/cluster.log" 2>&1 ||
  { cat "$dir/cluster.log" >&2; exit 1; }
for node in "${nodes[@]}"; do
  for attempt in $(seq 200); do
    redis-cli -h 127.0.0.1 -p "${node#*:}" cluster info | grep -q cluster_state:ok && break
    [ "$attempt" -lt 200 ] || { echo "the cluster did not become ok" >&2; exit 1; }
    sleep 0.1
  done
done
redis_urls=$(printf 'redis://%s/,' "${nodes[@]}")
redis_urls=${redis_urls%,}

# The simulator, on a free port; it prints its URL and key, then serves until SIGTERM.
"$bin/lehnz_sim" --seed 7 --window "$window_limit/$window_secs" >"$dir/sim.out" 2>"$dir/sim.err" &
pids+=($!)
for _ in $(seq 100); do
  grep -q '^key=' "$dir/sim.out" 2>/dev/null && break
  sleep 0.1
done
url=$(sed -n 's/^url=//p' "$dir/sim.out")
key=$(sed -n 's/^key=//p' "$dir/sim.out")
[ -n "$url" ] && [ -n "$key" ] || { echo "the simulator did not start" >&2; cat "$dir/sim.err" >&2; exit 1; }

echo "scale-out: $shards processes, $events events, simulator $url, Redis Cluster ${nodes[*]}"
start_ns=$(date +%s%N)
jobs=()
for ((i = 0; i < shards; i++)); do
  LEHNZ_API_KEY=$key "$bin/lehnz_sync" --shard "$i/$shards" --base-url "$url" --redis "$redis_urls" \
    --window "$window_limit/$window_secs" --batch "$batch" --events "$events" --seed $((7 + i)) \
    --checkpoint "$dir/shard-$i.checkpoint" >"$dir/shard-$i.log" 2>"$dir/shard-$i.err" &
  jobs+=($!)
  pids+=($!)
done
statuses=()
for pid in "${jobs[@]}"; do
  status=0
  wait "$pid" || status=$?
  statuses+=("$status")
done
wall_ms=$((($(date +%s%N) - start_ns) / 1000000))

delivered=0
for ((i = 0; i < shards; i++)); do
  n=$(sed -nE 's/^  delivered +([0-9]+) events.*/\1/p' "$dir/shard-$i.log")
  [[ $n =~ ^[0-9]+$ ]] || n=0
  delivered=$((delivered + n))
  echo "shard $i/$shards: exit ${statuses[$i]}, delivered $n, checkpoint $(cat "$dir/shard-$i.checkpoint" 2>/dev/null || echo none)"
  grep -E '^  (batches|retries|gate|throttle|redis|dead-letter stream|wall time|rate) ' "$dir/shard-$i.log" | sed 's/^/  /' || true
  tail -n 1 "$dir/shard-$i.log" | sed 's/^/  /'
  if [ "${statuses[$i]}" -ne 0 ]; then tail -n 5 "$dir/shard-$i.err" | sed 's/^/  stderr: /'; fi
done

stats=$(curl -sf "$url/_sim/stats")
stat() { jq -r ".$1" <<<"$stats"; }
stored=$(stat events)
distinct=$(stat distinct_event_ids)
duplicates=$(stat duplicate_event_ids)
window_refused=$(stat rate_limited_window)
injected=$(stat rate_limited_injected)
letters=$(redis-cli -c -h 127.0.0.1 -p "${nodes[0]#*:}" xlen lehnz:dead-letters)
lost=$((events - distinct))
window_rate=$((window_limit * batch / window_secs))
rate=$((distinct * 1000 / (wall_ms > 0 ? wall_ms : 1)))
used=$((rate * 1000 / window_rate))

echo
echo "simulator (GET /_sim/stats)"
echo "  events stored          $stored ($distinct distinct ids, $duplicates of them stored more than once)"
echo "  429s                   $(stat rate_limited) ($injected injected by chaos, $window_refused for a used-up window)"
echo "  windows                $(stat windows_opened) opened, $(stat window_unused) requests unused, $(stat window_idle_ms) ms idle between them"
echo "  responses by status    $(jq -c .responses_by_status <<<"$stats")"
echo "fleet"
echo "  wall time              $((wall_ms / 1000)).$(printf %03d $((wall_ms % 1000))) s (first start to last exit)"
echo "  delivered, summed      $delivered"
echo "  rate                   $rate events/s of the $window_rate the window allows: $((used / 10)).$((used % 10)) %"
echo "  dead letters left      $letters on lehnz:dead-letters"

failed=0
check() {
  if [ "$1" = ok ]; then echo "ok    $2"; else echo "FAIL  $2"; failed=1; fi
}
verdict() { if "$@"; then echo ok; else echo fail; fi; }
check "$(verdict [ "$lost" -eq 0 ])" "lost: $lost (of $events events, $distinct distinct ids stored)"
check "$(verdict [ "$delivered" -eq "$distinct" ])" "summed reports: $delivered delivered; the simulator stored $distinct distinct ids"
check "$(verdict [ "$window_refused" -eq 0 ])" "429s for a used-up window: $window_refused"
check "$(verdict [ "$used" -ge 850 ])" "window used: $((used / 10)).$((used % 10)) % (target 85 %)"
for ((i = 0; i < shards; i++)); do
  check "$(verdict [ "${statuses[$i]}" -eq 0 ])" "shard $i/$shards exited ${statuses[$i]}"
done
exit "$failed"
