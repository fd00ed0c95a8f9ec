#!/usr/bin/env bash
# The services the tests talk to, on 127.0.0.1 only:
#   - a Kafka-protocol broker (Tansu) on 127.0.0.1:9092, installed with cargo
#     when missing and started unless something already answers there;
#   - PostgreSQL on 127.0.0.1:5432 and Mosquitto on 127.0.0.1:1883, started when
#     installed but stopped;
#   - the programs the deployment tests run: nginx (`nginx -t` on the load
#     balancer's config, and nginx in front of two map backends) and promtool
#     (Debian package prometheus), installed with apt-get when missing (as root;
#     otherwise the script says what to install).
# Anything that cannot be provided is a loud failure, never a skipped test.
#
# Usage: scripts/test-env.sh up      start what is missing; prints the pid of a
#                                    broker it started to target/test-env/tansu.pid
#        scripts/test-env.sh down    stops the broker this script started
# scripts/test.sh calls `up` before the tests and `down` after them.
set -euo pipefail
cd "$(dirname "$0")/.."

KAFKA_PORT=9092
STATE=target/test-env
TANSU_VERSION=0.6.0

say() { printf '[test-env] %s\n' "$*"; }
fail() { printf '[test-env] FAILED: %s\n' "$*" >&2; exit 1; }

# Whether something accepts TCP connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() { # port, seconds, what
    local deadline=$((SECONDS + $2))
    until listening "$1"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

tansu_bin() {
    if command -v tansu >/dev/null 2>&1; then command -v tansu
    elif [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
    else return 1
    fi
}

kafka_up() {
    mkdir -p "$STATE"
    if listening "$KAFKA_PORT"; then
        say "a broker already answers on 127.0.0.1:$KAFKA_PORT; using it"
        return
    fi
    local tansu
    if ! tansu=$(tansu_bin); then
        say "installing Tansu $TANSU_VERSION (cargo install, about 10-30 minutes, once)"
        cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
            || fail "cargo install tansu failed"
        tansu=$(tansu_bin) || fail "tansu is not on PATH after installing it"
    fi
    # SQLite storage, not memory://: Tansu 0.6.0's memory engine returns nothing
    # for a fetch that starts inside a record batch (as a restart from a
    # committed offset, or librdkafka resuming a paused partition, does), so a
    # consumer stalls there; the SQLite engine answers such fetches correctly.
    say "starting $tansu on 127.0.0.1:$KAFKA_PORT (SQLite storage in $STATE; log: $STATE/tansu.log)"
    rm -f "$STATE"/tansu.db*
    (cd "$STATE" && exec nohup "$tansu" broker \
        --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine sqlite://tansu.db >tansu.log 2>&1) &
    echo $! >"$STATE/tansu.pid"
    wait_for_port "$KAFKA_PORT" 60 || { tail -20 "$STATE/tansu.log" >&2; fail "Tansu did not listen on :$KAFKA_PORT within 60 s"; }
    say "broker ready (pid $(cat "$STATE/tansu.pid"))"
}

postgres_up() {
    if listening 5432; then return; fi
    if [ -d /etc/postgresql ] && command -v pg_ctlcluster >/dev/null; then
        say "starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start \
            || fail "PostgreSQL is installed but did not start"
        wait_for_port 5432 30 || fail "PostgreSQL did not listen on 127.0.0.1:5432"
    else
        fail "PostgreSQL is not installed and nothing listens on 127.0.0.1:5432"
    fi
}

mosquitto_up() {
    if listening 1883; then return; fi
    if command -v mosquitto >/dev/null; then
        say "starting Mosquitto"
        mosquitto -d -c /etc/mosquitto/mosquitto.conf || fail "Mosquitto is installed but did not start"
        wait_for_port 1883 30 || fail "Mosquitto did not listen on 127.0.0.1:1883"
    else
        fail "Mosquitto is not installed and nothing listens on 127.0.0.1:1883"
    fi
}

# Debian packages providing the programs the tests run, when missing: a list of
# "command:package" pairs. Installed as root; anyone else is told what to install.
tools_up() {
    local missing=() pair
    for pair in "$@"; do
        # nginx lives in /usr/sbin, which a user's PATH may lack.
        command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
    done
    [ "${#missing[@]}" -eq 0 ] && return
    if [ "$(id -u)" -ne 0 ]; then
        fail "the tests need the Debian packages ${missing[*]}: run 'sudo apt-get install ${missing[*]}' (or this script as root)"
    fi
    say "installing ${missing[*]} (apt-get)"
    # The services must not start on their own (nginx on :80, a Prometheus
    # server on :9090): the tests run the programs themselves.
    local policy=/usr/sbin/policy-rc.d created=no
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=yes
    fi
    local installed=yes
    apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || installed=no
    if [ "$created" = yes ]; then rm -f "$policy"; fi
    [ "$installed" = yes ] || fail "apt-get install ${missing[*]} failed"
}

case "${1:-up}" in
    up)
        tools_up nginx:nginx promtool:prometheus
        kafka_up
        postgres_up
        mosquitto_up
        ;;
    down)
        if [ -f "$STATE/tansu.pid" ]; then
            pid=$(cat "$STATE/tansu.pid")
            if kill "$pid" 2>/dev/null; then say "stopped the broker (pid $pid)"; fi
            rm -f "$STATE/tansu.pid"
        fi
        ;;
    *) fail "usage: $0 up|down" ;;
esac
