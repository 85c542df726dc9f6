#!/usr/bin/env bash
# Draws docs/grafana/tower-outbound.svg: the Grafana dashboard docs/grafana/tower-outbound.json
# as it shows a real run of the main job. It builds `lehnz_sync`, runs it with `--metrics`
# against its in-process simulator (chaos on), takes the simulator down once in the middle of
# the run (`POST /_sim/outage`), scrapes the endpoint every second and evaluates each panel's
# queries over the scrapes (scripts/render_dashboard.py; python3, standard library only). No
# Grafana, no Prometheus, no network.
#
#   scripts/dashboard.sh                      # 200,000 events, a 12 s outage 8 s in
#   scripts/dashboard.sh --events 50000 --outage-at 4 --outage-secs 6 --out /tmp/d.svg
#   scripts/dashboard.sh --save run.jsonl     # keep the scrapes; --load run.jsonl draws again
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --features lehnz,sim,metrics --example lehnz_sync
exec python3 scripts/render_dashboard.py "$@"
