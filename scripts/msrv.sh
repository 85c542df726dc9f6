#!/usr/bin/env bash
# Checks the declared `rust-version` against the locked dependency tree, the way the ecosystem
# does without the old toolchain at hand: every normal dependency of the default build and of
# the all-features build (on this target) must declare a `rust-version` no newer than the
# crate's own. Fails, naming the offenders, otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

target="$(rustc -vV | sed -n 's/^host: //p')"
metadata="$(mktemp)"
trap 'rm -f "$metadata"' EXIT
cargo metadata --format-version 1 --all-features --locked >"$metadata"

check() {
  local label="$1"; shift
  cargo tree --locked -e normal --target "$target" --prefix none --format "{p}" "$@" \
    | sed 's/ (.*//; s/ (\*)//' | sort -u \
    | python3 -c '
import json, sys
meta = json.load(open(sys.argv[1]))
def v(s): return tuple((list(map(int, s.split("."))) + [0, 0])[:3])
ours = next(p for p in meta["packages"] if p["name"] == "tower-outbound")["rust_version"]
declared = {(p["name"], p["version"]): p.get("rust_version") for p in meta["packages"]}
bad = []
for line in sys.stdin:
    name, _, version = line.strip().partition(" v")
    rv = declared.get((name, version))
    if rv and v(rv) > v(ours):
        bad.append(f"{name} {version} needs Rust {rv}")
label = sys.argv[2]
if bad:
    print(f"rust-version {ours} is too old for the {label} build:", *bad, sep="\n  ")
    sys.exit(1)
print(f"rust-version {ours}: every dependency of the {label} build agrees")
' "$metadata" "$label"
}

check default
check "all-features" --all-features
