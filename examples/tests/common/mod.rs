//! What the process tests share: the broker, and worker processes run as an
//! operator runs them, with their logs and HTTP endpoint.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stream_core::App;

/// How long a test waits for something before failing.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// The broker named by `STROM_TEST_KAFKA` (default 127.0.0.1:9092), which
/// must be running: `scripts/test-env.sh up` starts one.
pub(crate) fn kafka_url() -> String {
    let addr = std::env::var("STROM_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    if std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_err() {
        panic!("no Kafka-protocol broker answers on {addr}: start one with `scripts/test-env.sh up`");
    }
    format!("kafka://{addr}")
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.0): the status and the body.
pub(crate) fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

impl Process {
    /// Starts a worker binary on `app`'s broker and topic prefix, with an HTTP
    /// port of its own, and waits until it serves HTTP.
    pub(crate) fn start(bin: &str, app: &App, extra: &[(&str, &str)]) -> Process {
        let mut cmd = Command::new(bin);
        cmd.env("STROM_BROKER", &app.config().broker)
            .env("STROM_TOPIC_PREFIX", &app.config().topic_prefix)
            .env("STROM_WEB_PORT", "0")
            .env("STROM_COMMIT_INTERVAL_MS", "200")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the worker starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut process = Process { child, log, port: 0 };
        process.port = process.wait_for_port();
        process
    }
}

pub(crate) struct Process {
    child: Child,
    log: Arc<Mutex<String>>,
    port: u16,
}

impl Process {
    pub(crate) fn wait_for_port(&mut self) -> u16 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(rest) = self.log.lock().unwrap().split("metrics at http://").nth(1) {
                let addr = rest.split("/metrics").next().unwrap();
                return addr.rsplit(':').next().unwrap().parse().unwrap();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("worker exited with {status}: {}", self.log());
            }
            assert!(Instant::now() < deadline, "worker did not serve HTTP: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port of its HTTP endpoint.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path)
    }

    pub(crate) async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while self.get("/ready").0 != 200 {
            assert!(Instant::now() < deadline, "worker not ready: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of a metric line starting with `prefix`, 0 when absent.
    pub(crate) fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then the exit code and how long the exit took.
    pub(crate) async fn terminate(mut self) -> (i32, Duration, String) {
        let started = Instant::now();
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), started.elapsed(), self.log());
            }
            assert!(Instant::now() < deadline, "worker ignored SIGTERM: {}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn kill(mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
