//! The load balancer of the earthquake map, run: Debian's nginx with
//! `config/nginx/nginx.conf` (`nginx -t`, then in front of two backends on
//! 127.0.0.1). The configuration is the repository's with only what this
//! machine needs replaced: the upstream servers (`quake-map-1:8080`,
//! `quake-map-2:8080`) become the two backends, nginx listens on a free port of
//! 127.0.0.1, and its pid, logs and temporary files go to a directory of the
//! test's. Every proxy setting is the one docker-compose.yaml runs.
//!
//! The backends are two quake-map processes (this crate's binary), each on a
//! broker of its own in memory (`STROM_BROKER=memory://`, so no events: the
//! map is empty, the event stream sends its keepalive comments), logging JSON
//! lines as in docker-compose.yaml. Killing one (SIGKILL) is a crashed replica.
//!
//! nginx must be installed: `scripts/test-env.sh up` installs Debian's; without
//! it these tests fail. Each test takes a few seconds (the event stream's, 15 s:
//! the replicas' first keepalive), 60 s at most; nginx and the replicas are
//! stopped when it ends, passed or failed.

#![allow(clippy::unwrap_used)]

#[path = "../../examples/tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Process;
use stream_core::App;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one test may take, all of it.
const BOUND: Duration = Duration::from_secs(60);
/// How long one request may take.
const REQUEST: Duration = Duration::from_secs(10);
/// The replicas' upstream addresses in config/nginx/nginx.conf.
const UPSTREAMS: [&str; 2] = ["quake-map-1:8080", "quake-map-2:8080"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("services/ sits in the repository").to_path_buf()
}

fn nginx_conf() -> String {
    std::fs::read_to_string(repo().join("config/nginx/nginx.conf")).unwrap()
}

/// Debian's nginx: on the PATH, or in /usr/sbin (not on every user's PATH).
fn nginx_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!("nginx is not installed: `scripts/test-env.sh up` installs it (as root: apt-get install nginx)")
        })
}

/// A directory of the test's own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("strom-lb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.0.join(file)).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// config/nginx/nginx.conf as it runs here: the replicas at `backends`, nginx
/// on 127.0.0.1:`port`, its pid, logs and temporary files in `dir`. Each
/// replaced line must appear exactly once, so the test follows the file.
fn local_config(text: &str, dir: &Path, port: u16, backends: [SocketAddr; 2]) -> String {
    let dir = dir.display();
    let replacements = [
        ("listen 8080;".to_owned(), format!("listen 127.0.0.1:{port};")),
        (format!("server {} ", UPSTREAMS[0]), format!("server {} ", backends[0])),
        (format!("server {} ", UPSTREAMS[1]), format!("server {} ", backends[1])),
        ("pid /var/run/nginx.pid;".to_owned(), format!("pid {dir}/nginx.pid;")),
        ("error_log /dev/stderr warn;".to_owned(), format!("error_log {dir}/error.log warn;")),
        ("access_log /dev/stdout json;".to_owned(), format!("access_log {dir}/access.log json;")),
        (
            "http {\n".to_owned(),
            format!(
                "http {{\n    client_body_temp_path {dir}/client_body;\n    proxy_temp_path {dir}/proxy;\n    \
                 fastcgi_temp_path {dir}/fastcgi;\n    uwsgi_temp_path {dir}/uwsgi;\n    scgi_temp_path {dir}/scgi;\n"
            ),
        ),
    ];
    let mut text = text.to_owned();
    for (from, to) in replacements {
        assert_eq!(text.matches(&from).count(), 1, "config/nginx/nginx.conf has `{}` once", from.trim());
        text = text.replace(&from, &to);
    }
    text
}

/// `nginx -t` on `config` (written to `dir`): whether it passed, and what it said.
fn nginx_test(dir: &Scratch, config: &str) -> (bool, String) {
    let path = dir.0.join("nginx.conf");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(nginx_bin())
        .arg("-t")
        .arg("-p")
        .arg(&dir.0)
        .arg("-e")
        .arg(dir.0.join("error.log"))
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ---- nginx --------------------------------------------------------------------

/// nginx in the foreground (master and workers in a process group of their
/// own), stopped when dropped.
struct Nginx {
    child: Child,
    port: u16,
    dir: Scratch,
}

impl Nginx {
    /// Starts nginx with `config` (the repository's, or a variant of it) in
    /// front of `backends`, and waits until it answers /lb-health.
    async fn start(name: &str, config: &str, backends: [SocketAddr; 2]) -> Nginx {
        let dir = Scratch::new(name);
        let port = free_port();
        let config = local_config(config, &dir.0, port, backends);
        let path = dir.0.join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(&dir.0)
            .arg("-e")
            .arg(dir.0.join("error.log"))
            .arg("-c")
            .arg(&path)
            .arg("-g")
            .arg("daemon off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut nginx = Nginx { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = nginx.child.try_wait().unwrap() {
                panic!("nginx exited with {status}:\n{}", nginx.dir.read("error.log"));
            }
            if let Ok(reply) = get(port, "/lb-health").await {
                assert_eq!(reply.status, 200, "/lb-health: {reply:?}");
                return nginx;
            }
            assert!(Instant::now() < deadline, "nginx did not answer:\n{}", nginx.dir.read("error.log"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn error_log(&self) -> String {
        self.dir.read("error.log")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers and exits; SIGKILL to the whole
        // group if it does not within 5 s.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
        let _ = self.child.wait();
    }
}

// ---- the replicas -------------------------------------------------------------

/// A quake-map process on 127.0.0.1 (the tests' `Process`), killed when dropped.
struct Replica {
    process: Option<Process>,
    addr: SocketAddr,
}

impl Replica {
    /// Starts quake-map on a port the system picks, and waits until it answers
    /// /health.
    async fn start() -> Replica {
        let on = App::builder("quake-map").broker("memory://").without_web().build().unwrap();
        let extra = [("STROM_WEB_HOST", "127.0.0.1"), ("STROM_LOG_FORMAT", "json")];
        let process = Process::start(env!("CARGO_BIN_EXE_quake-map"), &on, &extra);
        let replica = Replica { addr: SocketAddr::from(([127, 0, 0, 1], process.port())), process: Some(process) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !get(replica.addr.port(), "/health").await.is_ok_and(|reply| reply.status == 200) {
            assert!(Instant::now() < deadline, "quake-map is not healthy:\n{}", replica.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        replica
    }

    fn log(&self) -> String {
        self.process.as_ref().map(Process::log).unwrap_or_default()
    }

    /// The sum of the replica's metric lines that start with `prefix`, asked
    /// of the replica itself (the load balancer does not pass /metrics).
    async fn metric(&self, prefix: &str) -> f64 {
        let reply = get(self.addr.port(), "/metrics").await.unwrap();
        reply
            .body
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGKILL, as a crash: connections refused from now on, open ones reset.
    fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }
}

// ---- a small HTTP client ------------------------------------------------------

/// Response headers: (name lower-cased, value).
type Headers = Vec<(String, String)>;

/// A response: status, headers, body as received.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Headers,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Splits a response head from what follows it; None until the head is complete.
fn parse_head(raw: &[u8]) -> Option<(u16, Headers, usize)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some((status, headers, end + 4))
}

/// `GET path` through 127.0.0.1:`port`, on a connection of its own.
async fn get(port: u16, path: &str) -> std::io::Result<Reply> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let (status, headers, start) =
            parse_head(&raw).ok_or_else(|| std::io::Error::other(format!("no response head: {raw:?}")))?;
        Ok(Reply { status, headers, body: String::from_utf8_lossy(&raw[start..]).into_owned() })
    };
    tokio::time::timeout(REQUEST, exchange)
        .await
        .map_err(|_| std::io::Error::other(format!("GET {path}: timed out")))?
}

/// An open `GET /api/quakes/stream` through 127.0.0.1:`port`, as a
/// browser's EventSource holds it.
struct EventStream {
    stream: TcpStream,
    raw: Vec<u8>,
}

impl EventStream {
    /// Connects and waits (at most `wait`) for the response head.
    async fn open(port: u16, wait: Duration) -> (EventStream, Reply) {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let request = "GET /api/quakes/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n";
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut events = EventStream { stream, raw: Vec::new() };
        let head = events.read_until(wait, |_| true).await.expect("no response head in time");
        (events, head)
    }

    /// Reads until the body so far satisfies `done` (the head complete), for at
    /// most `wait`: the response so far, or None when time ran out.
    async fn read_until(&mut self, wait: Duration, done: impl Fn(&str) -> bool) -> Option<Reply> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buffer = [0u8; 4096];
        loop {
            if let Some((status, headers, start)) = parse_head(&self.raw) {
                let body = String::from_utf8_lossy(&self.raw[start..]).into_owned();
                if done(&body) {
                    return Some(Reply { status, headers, body });
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buffer)).await {
                Ok(Ok(0)) => panic!("the stream closed: {}", String::from_utf8_lossy(&self.raw)),
                Ok(Ok(n)) => self.raw.extend_from_slice(&buffer[..n]),
                Ok(Err(e)) => panic!("reading the stream: {e}"),
                Err(_) => return None,
            }
        }
    }
}

/// The replicas' `max_fails` in config/nginx/nginx.conf.
fn max_fails() -> usize {
    let config = nginx_conf();
    let found: Vec<usize> = config
        .split("max_fails=")
        .skip(1)
        .map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(found.len(), 2, "max_fails on both replicas");
    found[0]
}

// ---- the tests ----------------------------------------------------------------

#[test]
fn nginx_accepts_the_load_balancer_config() {
    let dir = Scratch::new("config-test");
    let backends: [SocketAddr; 2] = ["127.0.0.1:18081".parse().unwrap(), "127.0.0.1:18082".parse().unwrap()];
    let config = local_config(&nginx_conf(), &dir.0, free_port(), backends);
    let (passed, said) = nginx_test(&dir, &config);
    assert!(passed, "nginx -t rejects config/nginx/nginx.conf:\n{said}");
    assert!(said.contains("test is successful"), "{said}");

    // And nginx -t does reject a broken configuration.
    let broken = config.replace("proxy_buffering off;", "proxy_buffering of;");
    let (passed, said) = nginx_test(&dir, &broken);
    assert!(!passed && said.contains("proxy_buffering"), "nginx -t accepts a broken config:\n{said}");
}

/// Two quake-map replicas and nginx in front of them.
async fn start(name: &str) -> ([Replica; 2], Nginx) {
    let (one, two) = tokio::join!(Replica::start(), Replica::start());
    let nginx = Nginx::start(name, &nginx_conf(), [one.addr, two.addr]).await;
    ([one, two], nginx)
}

#[tokio::test]
async fn requests_are_spread_over_both_replicas() {
    tokio::time::timeout(BOUND, async {
        let (replicas, nginx) = start("spread").await;

        let mut upstreams = Vec::new();
        for _ in 0..20 {
            let reply = get(nginx.port, "/api/quakes").await.unwrap();
            assert_eq!(reply.status, 200, "{reply:?}\n{}", nginx.error_log());
            assert!(reply.body.contains("FeatureCollection"), "{reply:?}");
            upstreams.push(reply.header("x-upstream").expect("X-Upstream: which replica answered").to_owned());
        }
        // Round-robin: both answer, about half each, and each counted what it
        // answered.
        for replica in &replicas {
            let answered = upstreams.iter().filter(|u| **u == replica.addr.to_string()).count();
            assert!(answered >= 5, "{} answered {answered} of 20: {upstreams:?}", replica.addr);
            let counted = replica.metric("strom_quake_map_requests_total{route=\"/api/quakes\"}").await;
            assert_eq!(counted, answered as f64, "X-Upstream names the replica that answered");
        }

        // The page passes too; the replicas' metrics stay inside; the load
        // balancer answers its own health.
        let page = get(nginx.port, "/").await.unwrap();
        assert_eq!(page.status, 200, "{page:?}");
        assert!(page.header("content-type").is_some_and(|t| t.starts_with("text/html")), "{page:?}");
        assert_eq!(get(nginx.port, "/metrics").await.unwrap().status, 404, "/metrics is not proxied");
        let health = get(nginx.port, "/lb-health").await.unwrap();
        assert_eq!((health.status, health.header("x-upstream")), (200, None), "nginx answers /lb-health itself");

        // The access log: a JSON object a line (for Loki), naming the replica.
        let log = nginx.dir.read("access.log");
        let lines: Vec<serde_json::Value> =
            log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
        assert!(lines.len() >= 22, "a line a proxied request: {log}");
        for line in &lines {
            assert!(line["level"].is_string() && line["fields"]["message"].is_string(), "{line}");
        }
        let api = |l: &&serde_json::Value| l["fields"]["message"] == "GET /api/quakes 200";
        let answered = lines.iter().filter(api).filter(|l| l["fields"]["upstream"] == replicas[0].addr.to_string());
        assert_eq!(answered.count(), upstreams.iter().filter(|u| **u == replicas[0].addr.to_string()).count());
        assert!(lines.iter().any(|l| l["level"] == "WARN"), "the 404 of /metrics is a warning");

        // So do the replicas: the tracing JSON layout config/alloy reads
        // (level, and the message and event fields under `fields`).
        for replica in &replicas {
            let log = replica.log();
            for line in log.lines() {
                let line: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                assert!(line["level"].is_string() && line["fields"]["message"].is_string(), "{line}");
            }
            assert!(log.contains("metrics at http://"), "{log}");
        }
    })
    .await
    .expect("the test took too long");
}

#[tokio::test]
async fn server_sent_events_pass_through_unbuffered() {
    tokio::time::timeout(BOUND, async {
        let (replicas, nginx) = start("sse").await;

        // The response head at once, and the stream stays open at a replica.
        let (mut stream, head) = EventStream::open(nginx.port, Duration::from_secs(3)).await;
        assert_eq!(head.status, 200, "{head:?}\n{}", nginx.error_log());
        assert_eq!(head.header("content-type"), Some("text/event-stream"), "{head:?}");
        let upstream = head.header("x-upstream").expect("X-Upstream").to_owned();
        let serving = replicas.iter().find(|r| r.addr.to_string() == upstream).expect("one of the replicas");
        assert_eq!(serving.metric("strom_quake_sse_clients").await, 1.0, "the replica holds the stream");

        // With no events (an empty broker), the body is the replica's
        // keepalive comments (`: keepalive`, every 15 s from the stream's
        // start): the first comes through as soon as the replica writes it,
        // not when a buffer fills or the stream ends. (A few bytes: nginx 1.22
        // passes them at once even with proxy_buffering on, so deployment.rs
        // checks the setting itself.)
        let opened = Instant::now();
        let comment = stream.read_until(Duration::from_secs(20), |body| body.contains("keepalive\n\n")).await;
        let comment = comment.unwrap_or_else(|| panic!("no keepalive within 20 s\n{}", nginx.error_log()));
        assert!(opened.elapsed() < Duration::from_secs(18), "the keepalive took {:?}", opened.elapsed());
        assert!(comment.body.len() < 64, "one small comment, passed on alone: {comment:?}");
    })
    .await
    .expect("the test took too long");
}

#[tokio::test]
async fn a_killed_replica_loses_no_request() {
    tokio::time::timeout(BOUND, async {
        let ([one, mut two], nginx) = start("failover").await;
        let mut before = Vec::new();
        for _ in 0..4 {
            let reply = get(nginx.port, "/api/quakes").await.unwrap();
            assert_eq!(reply.status, 200);
            before.push(reply.header("x-upstream").unwrap_or_default().to_owned());
        }
        for replica in [&one, &two] {
            assert!(before.contains(&replica.addr.to_string()), "both replicas served before the kill: {before:?}");
        }

        two.kill();
        let killed = two.addr.to_string();
        // Every request is answered: one that reaches the dead replica is
        // retried on the other (proxy_next_upstream); after max_fails such
        // failures nginx stops trying the dead one (fail_timeout).
        let mut tried_dead = Vec::new();
        for i in 0..20 {
            let reply = get(nginx.port, "/api/quakes").await.unwrap();
            assert_eq!(reply.status, 200, "request {i} after the kill: {reply:?}\n{}", nginx.error_log());
            let upstream = reply.header("x-upstream").unwrap_or_default();
            assert!(upstream.ends_with(&one.addr.to_string()), "request {i} answered by {upstream}");
            if upstream.contains(&killed) {
                tried_dead.push(i);
            }
        }
        let fails = max_fails();
        assert!(!tried_dead.is_empty(), "nginx tried the dead replica at least once");
        assert!(
            tried_dead.len() <= fails && tried_dead.iter().all(|&i| i < 2 * fails),
            "after {fails} failures nginx leaves the dead replica alone; tried it at requests {tried_dead:?}"
        );
        assert!(nginx.error_log().contains("upstream server temporarily disabled"), "{}", nginx.error_log());

        // A new event stream is served by the replica that lives.
        let (_stream, head) = EventStream::open(nginx.port, Duration::from_secs(3)).await;
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(head.header("x-upstream"), Some(one.addr.to_string().as_str()), "{head:?}");
    })
    .await
    .expect("the test took too long");
}
