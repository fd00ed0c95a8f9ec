#!/usr/bin/env bash
# What the browser tests (services/tests/map_browser.rs, which runs
# services/tests/browser/map.mjs) need, installed when missing, or a loud failure:
#   - Debian's Chromium at /usr/bin/chromium (apt-get, as root only; a browser
#     is never downloaded by npm or Playwright);
#   - node (>= 20) and npm;
#   - services/tests/browser/node_modules (playwright-core, pinned by its
#     package-lock.json), installed with `npm ci` when missing or stale.
# scripts/test.sh calls it before the tests. CHROMIUM_PATH overrides the browser.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM=${CHROMIUM_PATH:-/usr/bin/chromium}
BROWSER_TESTS=services/tests/browser
NODE_MAJOR_MIN=20

say() { printf '[browser-env] %s\n' "$*"; }
fail() { printf '[browser-env] FAILED: %s\n' "$*" >&2; exit 1; }

# Chromium.
if [ ! -x "$CHROMIUM" ]; then
    if [ "$CHROMIUM" != /usr/bin/chromium ]; then
        fail "CHROMIUM_PATH=$CHROMIUM is not an executable"
    fi
    [ "$(id -u)" -eq 0 ] || fail "install chromium: /usr/bin/chromium is missing (as root: apt-get update && apt-get install chromium)"
    command -v apt-get >/dev/null || fail "install chromium: /usr/bin/chromium is missing and there is no apt-get"
    say "installing Debian's chromium (apt-get)"
    apt-get update -qq || fail "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
        || fail "apt-get install chromium"
    [ -x "$CHROMIUM" ] || fail "install chromium: apt-get installed it, but $CHROMIUM is not there"
fi
# Debian's wrapper script prints noise on stderr; the version on stdout is what counts.
version=$("$CHROMIUM" --version 2>/dev/null) || fail "$CHROMIUM --version failed: is the chromium package broken?"
say "browser: $version ($CHROMIUM)"

# node and npm.
command -v node >/dev/null || fail "install node (>= $NODE_MAJOR_MIN) and npm: node is not on PATH"
command -v npm >/dev/null || fail "install npm: it is not on PATH"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge "$NODE_MAJOR_MIN" ] || fail "node $(node --version) is too old: playwright-core needs >= $NODE_MAJOR_MIN"

# playwright-core, as package-lock.json pins it.
stamp="$BROWSER_TESTS/node_modules/.strom-package-lock.json"
if [ ! -d "$BROWSER_TESTS/node_modules/playwright-core" ] || ! cmp -s "$BROWSER_TESTS/package-lock.json" "$stamp"; then
    say "npm ci in $BROWSER_TESTS"
    (cd "$BROWSER_TESTS" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) \
        || fail "npm ci in $BROWSER_TESTS"
    cp "$BROWSER_TESTS/package-lock.json" "$stamp"
fi
(cd "$BROWSER_TESTS" && node -e 'import("playwright-core").then(() => {}, (e) => { console.error(e.message); process.exit(1); })') \
    || fail "playwright-core does not load in $BROWSER_TESTS"
say "ready: node $(node --version), playwright-core $(cd "$BROWSER_TESTS" && node -p 'require("playwright-core/package.json").version')"
