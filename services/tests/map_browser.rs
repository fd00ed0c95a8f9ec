//! The quake map in a real browser: an EMSC stand-in plays the project's
//! recording to quake-source, which sends the events through `quakes.raw`
//! (a `memory://` broker) to quake-map; headless Chromium opens the map
//! (`tests/browser/map.mjs`) and checks one marker per event the API
//! returns, the minimum-magnitude filter, and an event played while the page
//! is open appearing without a reload.
//!
//! Needs Debian's Chromium (`/usr/bin/chromium`, or `CHROMIUM_PATH`), node
//! and `tests/browser/node_modules`: `scripts/browser-env.sh` provides them.
//! Missing, the test fails; it is never skipped.
//!
//! The screenshot goes to `STROM_QUAKE_MAP_SCREENSHOT` if set (the one in the
//! docs: `STROM_QUAKE_MAP_SCREENSHOT=docs/images/quake-map.png`, relative to
//! the workspace), else to `quake-map.png` in Cargo's test temporary directory.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use chrono::{Duration as TimeDelta, SubsecRound, Utc};
use stream_core::TableStore;
use stream_core::connect::websocket::WebSocketSource;
use stream_core::testing::TestDriver;
use strom_services::quake::emsc::{EmscStandIn, sample_recording};
use strom_services::quake::map::{self, QuakeMap};
use strom_services::quake::page::PageSettings;
use strom_services::quake::records::{Action, Quake};
use strom_services::quake::{self, source};

/// How long the test may take, all of it.
const BOUND: Duration = Duration::from_secs(240);
/// How long it waits for one thing.
const WAIT: Duration = Duration::from_secs(60);
/// The filter's threshold the browser checks: the recording has events on both sides.
const MIN_MAG: f64 = 4.0;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the screenshot goes.
fn screenshot_path() -> PathBuf {
    match std::env::var_os("STROM_QUAKE_MAP_SCREENSHOT").filter(|p| !p.is_empty()) {
        // Relative to the workspace, as the docs name it.
        Some(path) => manifest_dir().parent().unwrap().join(path),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("quake-map.png"),
    }
}

/// Fails, loudly, when the browser test cannot run here.
fn check_prerequisites(browser_tests: &Path) {
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing = if !Path::new(&chromium).exists() {
        Some(format!("no browser at {chromium}"))
    } else if Command::new("node").arg("--version").output().is_err() {
        Some("node is not on PATH".into())
    } else if !browser_tests.join("node_modules/playwright-core").is_dir() {
        Some(format!("no {}/node_modules/playwright-core", browser_tests.display()))
    } else {
        None
    };
    if let Some(missing) = missing {
        panic!("the browser test cannot run: {missing}; run scripts/browser-env.sh first");
    }
}

/// `map.mjs` running: its stdin, and its stdout lines as they come. Ended
/// (SIGTERM, so Playwright closes Chromium; then SIGKILL) when dropped.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    output: Arc<Mutex<Vec<String>>>,
}

impl Browser {
    fn start(browser_tests: &Path, base: &str, screenshot: &Path) -> Browser {
        let mut child = Command::new("node")
            .arg(browser_tests.join("map.mjs"))
            .arg(base)
            .arg(screenshot)
            .args(["--min-mag", &MIN_MAG.to_string()])
            .current_dir(browser_tests)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                out.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                out.lock().unwrap().push(line);
            }
        });
        Browser { stdin: child.stdin.take(), child, lines, output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Waits for the line `READY`; panics if map.mjs ends or says nothing within `timeout`.
    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == "READY" => return,
                Ok(_) => {}
                Err(_) => panic!("map.mjs did not get READY within {timeout:?}:\n{}", self.output()),
            }
        }
    }

    fn signal(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for map.mjs to end; whether it succeeded.
    fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() >= deadline {
                panic!("map.mjs did not end within {timeout:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An event that is not in the recording: M5.3 off Crete, happening now.
fn live_event() -> Quake {
    let now = Utc::now().trunc_subsecs(3);
    Quake {
        action: Action::Create,
        unid: "29991231_0000001".into(),
        time: now - TimeDelta::seconds(20),
        lastupdate: now,
        lat: 35.3,
        lon: 25.6,
        depth: Some(12.0),
        mag: 5.3,
        magtype: Some("mw".into()),
        flynn_region: Some("CRETE, GREECE".into()),
        auth: Some("NOA".into()),
        evtype: Some("ke".into()),
        source_id: Some("browser-test".into()),
        source_catalog: Some("EMSC-RTS".into()),
    }
}

async fn wait_for_events(map: &QuakeMap, n: usize) {
    let deadline = Instant::now() + WAIT;
    while map.len() < n {
        assert!(Instant::now() < deadline, "quake-map holds {} events, not {n}, after {WAIT:?}", map.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_shows_every_event_filters_them_and_adds_new_ones_live() {
    tokio::time::timeout(BOUND, the_map()).await.expect("the browser test ends in time");
}

async fn the_map() {
    let browser_tests = manifest_dir().join("tests/browser");
    check_prerequisites(&browser_tests);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let broker = format!("memory://quake-map-browser-{}-{nanos:x}", std::process::id());

    // EMSC's stand-in, quake-source and quake-map, on one broker.
    let stand_in = EmscStandIn::start("127.0.0.1:0").await.unwrap();
    let source_app = TestDriver::app_on(&broker, "quake-source");
    source::source(&source_app, WebSocketSource::new(&source_app, &stand_in.url(), source::SOURCE_NAME).unwrap());
    let source_driver = TestDriver::start(&source_app).await.unwrap();
    let map_app =
        TestDriver::builder_on(&broker, "quake-map").web_port(0).table_store(TableStore::Memory).build().unwrap();
    // The default tiles (OpenStreetMap): map.mjs lets no request leave this
    // machine, so the page shows them as it does offline, over the world outline.
    let map = map::serve(&map_app, &quake::raw(&map_app), PageSettings::default());
    let map_driver = TestDriver::start(&map_app).await.unwrap();
    let web: SocketAddr = map_driver.worker().and_then(|w| w.web_addr()).unwrap();
    stand_in.wait_for_clients(1, WAIT).await.unwrap();

    // The recording, its times moved to now: creates, updates (one stale),
    // malformed messages (dead-lettered).
    let recording = sample_recording().rebased(Utc::now());
    let (good, _) = recording.split_valid();
    let unids: HashSet<String> =
        good.iter().map(|r| Quake::from_emsc(std::str::from_utf8(r.frame.bytes()).unwrap()).unwrap().unid).collect();
    stand_in.play_all(&recording.frames);
    wait_for_events(&map, unids.len()).await;

    // The browser, until it is ready for the live event.
    let screenshot = screenshot_path();
    let _ = std::fs::remove_file(&screenshot);
    let mut browser = {
        let (tests, base, shot) = (browser_tests, format!("http://{web}"), screenshot.clone());
        tokio::task::spawn_blocking(move || {
            let mut browser = Browser::start(&tests, &base, &shot);
            browser.wait_ready(Duration::from_secs(90));
            browser
        })
        .await
        .unwrap()
    };

    // One more event while the page is open.
    let live = live_event();
    assert!(!unids.contains(&live.unid));
    stand_in.play(live.to_emsc().to_string());
    wait_for_events(&map, unids.len() + 1).await;
    browser.signal(&live.unid);
    let (succeeded, browser) =
        tokio::task::spawn_blocking(move || (browser.wait(Duration::from_secs(60)), browser)).await.unwrap();
    assert!(succeeded, "map.mjs failed:\n{}", browser.output());
    println!("{}", browser.output());

    let png = std::fs::read(&screenshot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "{} is no screenshot", screenshot.display());
    drop(browser);

    map_driver.stop().await.unwrap();
    source_driver.stop().await.unwrap();
}
