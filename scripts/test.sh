#!/usr/bin/env bash
# Runs every test of tower-outbound, with all features and with none. The Redis tests start
# their own redis-server on a free loopback port, so the binary must be installed: this
# installs it when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server is missing; installing it from the system's packages"
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
    elif command -v brew >/dev/null 2>&1; then
        brew install redis
    else
        echo "install redis-server with your package manager, then run this again" >&2
        exit 1
    fi
fi

# Everything, then the lean default build (no features) on its own: what an application that
# adds the crate without features compiles must build and pass too.
cargo test --all-features "$@"
cargo test --no-default-features "$@"
