#!/usr/bin/env node
// The quake map in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core; no browser is downloaded).
//
// Usage: node map.mjs <base-url> <screenshot.png> [--min-mag 4] [--no-live]
//        (or MAP_URL and MAP_SCREENSHOT in the environment)
//
// 1. Opens <base-url>/ and waits until the page has loaded its events and its
//    event stream is open.
// 2. Checks there is one `.quake-marker` per feature of /api/quakes?limit=5000
//    (the page's own request), each with its unid, and a list of the newest
//    events, newest first, whose texts are the features' (put in as text, not
//    HTML).
// 3. Sets the min-mag filter (#min-mag) to the threshold: only the events of at
//    least that magnitude stay, on the map and in the list; then back to all.
// 4. Unless --no-live: prints READY and waits for a line on stdin (the test
//    then plays one more event; the line may name its unid), and checks that a
//    new event's marker and list item appear without a reload.
// 5. Writes a screenshot to <screenshot.png>.
// 6. Opens the newest event's popup from the list: region, UTC and local
//    time, magnitude, depth. No error may have been thrown in the page.
//
// Only requests to <base-url>'s origin are let through: anything else (the
// map tiles) is aborted, as if offline, so the test never leaves this machine.
// Exits 0 on success; on a failure, prints `map.mjs: FAILED: <why>` to stderr,
// writes <screenshot>-failure.png when it can, and exits 1.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
/** The whole run's bound. */
const TOTAL_MS = Number(process.env.MAP_TEST_TIMEOUT_MS || 120000);
/** How long one thing may take to show. */
const WAIT_MS = 15000;
/** How long the live event may take to show after the line on stdin. */
const LIVE_MS = Number(process.env.MAP_LIVE_TIMEOUT_MS || 10000);
/** How long to wait for the line on stdin. */
const SIGNAL_MS = 60000;

class Failure extends Error {}

function log(message) {
  process.stdout.write(`map.mjs: ${message}\n`);
}

function check(condition, message) {
  if (!condition) throw new Failure(message);
}

function parseArgs(argv) {
  const options = { minMag: 4, live: true, positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--min-mag") options.minMag = Number(argv[++i]);
    else if (arg === "--no-live") options.live = false;
    else if (arg.startsWith("--")) throw new Failure(`unknown option ${arg}`);
    else options.positional.push(arg);
  }
  options.base = options.positional[0] || process.env.MAP_URL;
  options.screenshot = options.positional[1] || process.env.MAP_SCREENSHOT;
  check(options.base, "usage: node map.mjs <base-url> <screenshot.png> [--min-mag N] [--no-live]");
  check(options.screenshot, "no screenshot path (second argument or MAP_SCREENSHOT)");
  check(Number.isFinite(options.minMag), "--min-mag takes a number");
  options.base = options.base.replace(/\/+$/, "");
  return options;
}

/** Polls `probe` (run in the page) until `accept` holds for its value; fails with `describe(value)`. */
async function waitFor(page, probe, arg, accept, describe, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  let value;
  for (;;) {
    value = await page.evaluate(probe, arg);
    if (accept(value)) return value;
    if (Date.now() > deadline) throw new Failure(`${describe(value)} (after ${timeout} ms)`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** What the page shows: its markers and list items. */
function shown() {
  const markers = Array.from(document.querySelectorAll(".quake-marker"));
  const items = Array.from(document.querySelectorAll("#quake-list li[data-unid]"));
  return {
    markers: markers.length,
    markerUnids: markers.map((m) => m.getAttribute("data-unid")),
    markerMags: markers.map((m) => Number(m.getAttribute("data-mag"))),
    items: items.map((li) => ({
      unid: li.getAttribute("data-unid"),
      region: (li.querySelector(".region") || {}).textContent,
      mag: (li.querySelector(".mag") || {}).textContent,
    })),
    elementsInList: document.querySelectorAll("#quake-list img, #quake-list script, #quake-list a").length,
    status: document.getElementById("status").textContent,
    state: document.getElementById("status").dataset.state,
    loaded: document.documentElement.dataset.loaded,
    stream: document.documentElement.dataset.stream,
  };
}

function sameSet(a, b) {
  if (a.length !== b.length) return false;
  const set = new Set(a);
  return b.every((x) => set.has(x));
}

async function readLine(timeout) {
  const lines = createInterface({ input: process.stdin });
  try {
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Failure(`no line on stdin within ${timeout} ms after READY`)), timeout);
      lines.once("line", (line) => {
        clearTimeout(timer);
        resolve(line.trim());
      });
      lines.once("close", () => {
        clearTimeout(timer);
        reject(new Failure("stdin closed before the signal line"));
      });
    });
  } finally {
    lines.close();
  }
}

async function run(options, state) {
  const origin = new URL(options.base).origin;
  state.profile = mkdtempSync(join(tmpdir(), "strom-map-chromium-"));
  state.context = await chromium.launchPersistentContext(state.profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--no-first-run",
      "--disable-quic",
      "--disable-sync",
    ],
    viewport: { width: 1280, height: 800 },
    serviceWorkers: "block",
    timezoneId: "Europe/Berlin",
    locale: "en-GB",
  });
  const context = state.context;
  const blocked = new Set();
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(origin + "/") || url === origin) return route.continue();
    blocked.add(new URL(url).host);
    return route.abort("internetdisconnected");
  });
  const page = context.pages()[0] || (await context.newPage());
  state.page = page;
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  // The page's Content-Security-Policy must allow everything it does.
  page.on("console", (message) => {
    if (/Content.Security.Policy/i.test(message.text())) errors.push(message.text());
  });

  // 1. The page, its events, its stream.
  const response = await page.goto(options.base + "/", { waitUntil: "load", timeout: WAIT_MS });
  check(response && response.ok(), `GET / answered ${response && response.status()}`);
  await waitFor(
    page,
    shown,
    null,
    (s) => s.loaded === "true" && s.stream === "open",
    (s) => `the page did not load its events and open its stream (loaded=${s.loaded}, stream=${s.stream}, status "${s.status}")`,
  );

  // 2. One marker per feature the API returns to the page's own request.
  const collection = await page.evaluate(async () => {
    const response = await fetch("/api/quakes?limit=5000");
    return { status: response.status, body: await response.json() };
  });
  check(collection.status === 200, `/api/quakes?limit=5000 answered ${collection.status}`);
  check(collection.body.type === "FeatureCollection", "/api/quakes is not a FeatureCollection");
  const features = collection.body.features;
  check(features.length > 0, "/api/quakes has no features: the test played none?");
  const unids = features.map((f) => f.properties.unid);
  let s = await waitFor(
    page,
    shown,
    null,
    (s) => sameSet(s.markerUnids, unids),
    (s) => `${s.markers} .quake-marker elements, but /api/quakes has ${features.length} features`,
  );
  log(`${s.markers} markers for ${features.length} features; status "${s.status}"`);
  check(s.state === "connected", `status state ${s.state}, not connected ("${s.status}")`);
  check(s.status.includes(`${features.length} events shown`), `status "${s.status}" does not say ${features.length} events shown`);

  // The world outline: drawn below the tiles, which the test blocks (as offline).
  const outline = await waitFor(
    page,
    () => document.querySelectorAll(".leaflet-world-pane path").length,
    null,
    (n) => n >= 100,
    (n) => `the world outline has ${n} shapes drawn, not the countries`,
  );
  log(`world outline: ${outline} shapes`);

  // The list: the newest events first, at most 100, their texts as the data has them.
  const byTime = [...features].sort((a, b) => Date.parse(b.properties.time) - Date.parse(a.properties.time));
  const expectedItems = byTime.slice(0, 100);
  check(
    s.items.length === expectedItems.length,
    `the list has ${s.items.length} items, not ${expectedItems.length}`,
  );
  expectedItems.forEach((f, i) => {
    const item = s.items[i];
    check(
      Date.parse(features.find((g) => g.properties.unid === item.unid).properties.time) === Date.parse(f.properties.time),
      `list item ${i} is ${item.unid}, not the ${i + 1}. newest event ${f.properties.unid}`,
    );
    const region = features.find((g) => g.properties.unid === item.unid).properties.flynn_region;
    if (typeof region === "string" && region !== "") {
      check(item.region === region, `list item ${item.unid} says ${JSON.stringify(item.region)}, not ${JSON.stringify(region)}`);
    }
  });
  check(s.elementsInList === 0, `the list holds ${s.elementsInList} img/script/a elements: data went in as HTML`);

  // 3. The filter.
  const threshold = options.minMag;
  const big = features.filter((f) => f.properties.mag >= threshold).map((f) => f.properties.unid);
  check(big.length < features.length, `no event below M${threshold}: the filter check would prove nothing`);
  check(big.length > 0, `no event at or above M${threshold}: the filter check would prove nothing`);
  await page.fill("#min-mag", String(threshold));
  s = await waitFor(
    page,
    shown,
    null,
    (s) => sameSet(s.markerUnids, big),
    (s) => `with min-mag ${threshold}: ${s.markers} markers, not the ${big.length} of at least M${threshold}`,
  );
  check(s.markerMags.every((m) => m >= threshold), `a marker below M${threshold} is still shown`);
  const bigSet = new Set(big);
  check(s.items.length === Math.min(100, big.length), `with min-mag ${threshold} the list has ${s.items.length} items, not ${Math.min(100, big.length)}`);
  check(s.items.every((i) => bigSet.has(i.unid)), `with min-mag ${threshold} the list still shows an event below M${threshold}`);
  log(`min-mag ${threshold}: ${s.markers} markers of ${features.length}; status "${s.status}"`);
  await page.fill("#min-mag", "0");
  await page.locator("#min-mag").blur();
  s = await waitFor(
    page,
    shown,
    null,
    (s) => sameSet(s.markerUnids, unids),
    (s) => `back to all magnitudes: ${s.markers} markers, not ${features.length}`,
  );

  // 4. A live event.
  if (options.live) {
    const before = new Set(s.markerUnids);
    process.stdout.write("READY\n");
    const expected = await readLine(SIGNAL_MS);
    log(`waiting for ${expected ? `event ${expected}` : "a new event"} to show`);
    const started = Date.now();
    s = await waitFor(
      page,
      shown,
      null,
      (s) => {
        const fresh = s.markerUnids.filter((u) => !before.has(u));
        const wanted = expected ? fresh.filter((u) => u === expected) : fresh;
        return wanted.length > 0 && s.items.some((i) => wanted.includes(i.unid));
      },
      (s) => `no new marker and list item ${expected ? `for ${expected} ` : ""}appeared without a reload (${s.markers} markers, status "${s.status}")`,
      LIVE_MS,
    );
    const fresh = s.markerUnids.filter((u) => !before.has(u));
    check(
      new Set(s.markerUnids).size === s.markerUnids.length,
      "two markers for one unid",
    );
    log(`live event ${fresh.join(", ")} shown after ${Date.now() - started} ms; status "${s.status}"`);
  }

  // 5. The screenshot, once everything shows.
  await page.waitForTimeout(300);
  await page.screenshot({ path: options.screenshot });
  log(`screenshot: ${options.screenshot}`);
  // 6. A popup, opened from the list's first item (the newest event).
  const all = await page.evaluate(async () => (await (await fetch("/api/quakes?limit=5000")).json()).features);
  const first = all.find((f) => f.properties.unid === s.items[0].unid).properties;
  await page.locator("#quake-list li").first().locator("button").click({ timeout: WAIT_MS });
  const popup = await waitFor(
    page,
    () => {
      const box = document.querySelector(".leaflet-popup .quake-popup");
      return box ? box.innerText : null;
    },
    null,
    (text) => text !== null,
    () => `clicking the list item of ${first.unid} opened no popup`,
  );
  const utc = new Date(Date.parse(first.time)).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  for (const part of [first.flynn_region, utc, "Local:", "Depth:", first.mag.toFixed(1)]) {
    if (typeof part === "string" && part !== "") {
      check(popup.includes(part), `the popup of ${first.unid} does not say ${JSON.stringify(part)}: ${JSON.stringify(popup)}`);
    }
  }
  log(`popup of ${first.unid}: ${JSON.stringify(popup)}`);
  await page.evaluate(() => document.querySelector(".leaflet-popup-close-button")?.click());

  check(errors.length === 0, `errors in the page: ${errors.join("; ")}`);
  log(`requests blocked (not ${origin}): ${blocked.size ? [...blocked].join(", ") : "none"}`);
}

async function main() {
  const state = {};
  let options;
  const watchdog = setTimeout(() => {
    process.stderr.write(`map.mjs: FAILED: not done within ${TOTAL_MS} ms\n`);
    process.exit(1);
  }, TOTAL_MS);
  let failed = false;
  try {
    options = parseArgs(process.argv.slice(2));
    await run(options, state);
    log("OK");
  } catch (error) {
    failed = true;
    process.stderr.write(`map.mjs: FAILED: ${error instanceof Failure ? error.message : error.stack || error}\n`);
    if (state.page && options && options.screenshot) {
      const path = options.screenshot.replace(/(\.png)?$/, "-failure.png");
      await state.page.screenshot({ path }).then(
        () => process.stderr.write(`map.mjs: the page as it was: ${path}\n`),
        () => {},
      );
    }
  } finally {
    if (state.context) await state.context.close().catch(() => {});
    if (state.profile) rmSync(state.profile, { recursive: true, force: true });
    clearTimeout(watchdog);
  }
  process.exit(failed ? 1 : 0);
}

main();
