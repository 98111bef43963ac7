#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what the tests need, checks style and lints, and runs every test.
# Safe to run again and again; needs no standard input.
set -euo pipefail
cd "$(dirname "$0")/.."

# Keep the target directory outside the clone so CI runs on the same machine reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/freshet/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "test dependencies"
scripts/test-deps.sh

step "format"
cargo fmt --all --check

step "dependency direction"
python3 scripts/check-deps.py

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --locked

step "tests"
cargo nextest run --workspace --locked --no-fail-fast --failure-output final
