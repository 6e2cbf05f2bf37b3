#!/usr/bin/env bash
# `make demo`: the main job end to end on this host, unattended, in a scratch
# directory. It never touches /etc/ecap or /var/lib/ecap: trust dir, journal, run
# dir and single-use state all point into $DEMO (the last through a variable named
# UNSAFE: outside a demo, single-use state stays in /var/lib/ecap/used-tokens). Each step lives in scripts/demo.d/NN-*.sh and is
# sourced in order so later steps can use what earlier ones made.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
DEMO="$PWD/demo-out"
rm -rf "$DEMO"
mkdir -p "$DEMO"
chmod 700 "$DEMO"
export ECAP_TRUST_DIR="$DEMO/trusted-keys"
export ECAP_JOURNAL="$DEMO/journal.jsonl"
export ECAP_RUN_DIR="$DEMO/run"
export ECAP_UNSAFE_SINGLE_USE_DIR="$DEMO/used-tokens"
DEMO_PIDS=()
cleanup() {
  for p in "${DEMO_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$'; printf ' %q' "$@"; printf '\n'; "$@"; }

for f in scripts/demo.d/*.sh; do
  # shellcheck source=/dev/null
  source "$f"
done
printf '\nDemo finished; everything it wrote is under %s\n' "$DEMO"
