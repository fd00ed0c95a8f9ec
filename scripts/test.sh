#!/usr/bin/env bash
# The project's test command (README, .ci/run): formatting, lints, and every
# test of the workspace — unit, integration, UI (trybuild), examples, doctests.
#
# The tests here run on the in-process memory transport and need no external
# service. Kafka-protocol (Tansu), Postgres and MQTT checks join this script as
# the tests that need them land (see issues #3 and #5).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || fail "cargo is not installed (https://rustup.rs)"

step "cargo fmt --check"
cargo fmt --all --check || fail "formatting: run cargo fmt --all"

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings || fail "clippy"

step "cargo test (workspace)"
cargo test --workspace --locked 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || fail "tests (see target/test-output.log)"

passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' target/test-output.log | awk '{s+=$4} END {print s+0}')
step "all tests passed ($passed)"
