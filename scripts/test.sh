#!/usr/bin/env bash
# The project's test command (README, .ci/run): formatting, lints, and every
# test of the workspace — unit, integration, UI (trybuild), examples, doctests.
#
# The tests run against real services on 127.0.0.1, which scripts/test-env.sh
# provides: a Kafka-protocol broker (Tansu, installed with cargo when missing,
# started on :9092 unless one answers there and stopped again afterwards),
# PostgreSQL and Mosquitto, and the programs the deployment tests run (nginx,
# promtool); scripts/browser-env.sh provides headless Chromium and
# playwright-core for the map's browser test. A missing service fails the
# run; no test is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || fail "cargo is not installed (https://rustup.rs)"

step "cargo fmt --check"
cargo fmt --all --check || fail "formatting: run cargo fmt --all"

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings || fail "clippy"

step "test services (scripts/test-env.sh)"
had_broker=$([ -f target/test-env/tansu.pid ] && echo yes || echo no)
scripts/test-env.sh up || fail "test services"
# Stop the broker afterwards only if this run started it.
if [ "$had_broker" = no ] && [ -f target/test-env/tansu.pid ]; then
    trap 'scripts/test-env.sh down' EXIT
fi
step "browser tests' needs (scripts/browser-env.sh: Chromium, playwright-core)"
scripts/browser-env.sh || fail "browser test environment"

export STROM_TEST_KAFKA=127.0.0.1:9092
# The services and examples the tests start listen on this machine only.
export STROM_WEB_HOST=127.0.0.1

step "cargo test (workspace, all features)"
# All features, so that tests behind one (connect_postgres needs `postgres`) run too.
cargo test --workspace --all-features --locked 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || fail "tests (see target/test-output.log)"

passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' target/test-output.log | awk '{s+=$4} END {print s+0}')
step "all tests passed ($passed)"
