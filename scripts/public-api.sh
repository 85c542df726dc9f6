#!/usr/bin/env bash
# Checks the public API against its committed listing, api/tower-outbound.txt, so a breaking
# change is a decision, not an accident. The listing comes from rustdoc's JSON output (all
# features, the stable toolchain with RUSTC_BOOTSTRAP=1, as cargo-semver-checks does) through
# scripts/public_api.py; it is built in target/api so the main build stays as it is, with
# rustdoc's warnings silenced (they are the `cargo doc` step's business).
#
#   scripts/public-api.sh           fails, showing the difference, when the API changed
#   scripts/public-api.sh --bless   rewrites the listing to accept the change
set -euo pipefail
cd "$(dirname "$0")/.."

listing=api/tower-outbound.txt
bless=false
case "${1:-}" in
    --bless) bless=true ;;
    "") ;;
    *) echo "usage: $0 [--bless]" >&2; exit 2 ;;
esac

export CARGO_TARGET_DIR=target/api
rm -f "$CARGO_TARGET_DIR/doc/tower_outbound.json"
RUSTC_BOOTSTRAP=1 cargo rustdoc --quiet --lib --all-features \
    -- -Z unstable-options --output-format json -A warnings

current="$(mktemp)"
trap 'rm -f "$current"' EXIT
python3 scripts/public_api.py "$CARGO_TARGET_DIR/doc/tower_outbound.json" >"$current"

if $bless; then
    mkdir -p "$(dirname "$listing")"
    cp "$current" "$listing"
    echo "$listing: $(grep -vc '^#' "$listing") lines"
    exit 0
fi

if ! diff -u --label "$listing (committed)" --label "$listing (this tree)" \
    "$listing" "$current"; then
    cat >&2 <<MSG

The public API differs from $listing
(above: - what the committed listing has, + what this tree has).
If the change is meant, accept it with

    scripts/public-api.sh --bless

and commit the listing with it. A removed or changed line is, as a rule, a breaking
change for the crate's users: say so in CHANGELOG.md and give it a semver-breaking version.
MSG
    exit 1
fi
echo "$listing: the public API is unchanged"
