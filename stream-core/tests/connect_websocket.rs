//! The websocket source against websocket servers run by the test itself on
//! 127.0.0.1 (tokio-tungstenite; `wss://` with a self-signed certificate made
//! here), writing to a private memory broker. Each test owns its server, its
//! app and its port, so the tests run in parallel.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use stream_core::connect::websocket::{WebSocketSource, WsFrame};
use stream_core::testing::TestDriver;
use stream_core::tracking::DeliveryReceipt;
use stream_core::{App, BoxError, Error, Rejected, Topic};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// How long a test waits for something before failing.
const WAIT: Duration = Duration::from_secs(10);
/// How long stopping a worker may take: the source must not hold it up.
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// The output topic: connection number → frame text.
type Raw = Topic<String, String>;

// ---------------------------------------------------------------- the server

/// What a test server's connection is made of: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A websocket server on 127.0.0.1 that hands each connection it accepts to
/// the test.
struct Server {
    port: u16,
    tls: Option<tokio_native_tls::TlsAcceptor>,
    /// How many handshakes to answer with HTTP 503 before accepting again.
    refuse: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    conns: mpsc::UnboundedReceiver<Conn>,
    conns_tx: mpsc::UnboundedSender<Conn>,
    accept: Option<JoinHandle<()>>,
}

enum Cmd {
    Send(Message),
    StopReading,
}

/// One accepted connection. Dropping it drops the connection (no close
/// handshake), as a server that crashed or reset it would.
struct Conn {
    cmds: mpsc::UnboundedSender<Cmd>,
    task: JoinHandle<()>,
    /// Set when the client closed the websocket with a close frame.
    closed_by_client: Arc<AtomicBool>,
}

impl Server {
    async fn start() -> Server {
        Self::start_with(None).await
    }

    async fn start_with(tls: Option<tokio_native_tls::TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (conns_tx, conns) = mpsc::unbounded_channel();
        let mut server =
            Server { port, tls, refuse: Arc::default(), refused: Arc::default(), conns, conns_tx, accept: None };
        server.serve(listener);
        server
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}/feed", self.port)
    }

    fn serve(&mut self, listener: TcpListener) {
        let (tls, refuse, refused, conns) =
            (self.tls.clone(), self.refuse.clone(), self.refused.clone(), self.conns_tx.clone());
        self.accept = Some(tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (tls, refuse, refused, conns) = (tls.clone(), refuse.clone(), refused.clone(), conns.clone());
                // The handshakes in a task of their own: a client failing one holds up no other.
                tokio::spawn(async move {
                    let io: Box<dyn Io> = match tls {
                        Some(tls) => match tls.accept(tcp).await {
                            Ok(stream) => Box::new(stream),
                            Err(_) => return, // a client that does not trust the certificate
                        },
                        None => Box::new(tcp),
                    };
                    let refusing =
                        refuse.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                    // The callback's type is tungstenite's, large error and all.
                    #[allow(clippy::result_large_err)]
                    let callback = move |_: &Request, response: Response| -> Result<Response, ErrorResponse> {
                        if refusing {
                            let mut refusal = ErrorResponse::new(Some("come back later".into()));
                            *refusal.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                            return Err(refusal);
                        }
                        Ok(response)
                    };
                    let accepted = tokio_tungstenite::accept_hdr_async(io, callback).await;
                    if refusing {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    if let Ok(ws) = accepted {
                        let _ = conns.send(Conn::run(ws));
                    }
                });
            }
        }));
    }

    /// The next connection the server accepted.
    async fn next(&mut self) -> Conn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .unwrap_or_else(|_| panic!("no connection to the server within {WAIT:?}"))
            .unwrap()
    }

    /// Closes the listening socket: connections are refused.
    async fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
    }

    /// Listens again, on the same port.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

impl Conn {
    fn run(mut ws: tokio_tungstenite::WebSocketStream<Box<dyn Io>>) -> Conn {
        let (cmds, mut rx) = mpsc::unbounded_channel();
        let closed_by_client = Arc::new(AtomicBool::new(false));
        let closed = closed_by_client.clone();
        let task = tokio::spawn(async move {
            let mut reading = true;
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(Cmd::Send(message)) => {
                            if ws.send(message).await.is_err() {
                                return;
                            }
                        }
                        Some(Cmd::StopReading) => reading = false,
                        None => return, // dropped: the connection goes with it
                    },
                    // Reading answers the client's pings (and its close).
                    message = ws.next(), if reading => match message {
                        Some(Ok(Message::Close(_))) => closed.store(true, Ordering::SeqCst),
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return,
                    },
                }
            }
        });
        Conn { cmds, task, closed_by_client }
    }

    fn send(&self, message: Message) {
        self.cmds.send(Cmd::Send(message)).unwrap();
    }

    fn text(&self, text: impl Into<String>) {
        self.send(Message::text(text.into()));
    }

    /// Stops reading: the client's pings go unanswered.
    fn stop_reading(&self) {
        self.cmds.send(Cmd::StopReading).unwrap();
    }

    /// Drops the connection without a close handshake and waits until it is gone.
    async fn drop_now(self) {
        drop(self.cmds);
        let _ = self.task.await;
    }
}

// ---------------------------------------------------------------- the source

/// What the source's runs returned, in order.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<Vec<Result<(), String>>>>);

impl Runs {
    fn results(&self) -> Vec<Result<(), String>> {
        self.0.lock().unwrap().clone()
    }
}

/// Runs `source` as a task of `app` that records what each run returned.
fn run_with<H, Fut>(app: &App, source: WebSocketSource, handler: H) -> Runs
where
    H: Fn(WsFrame) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<DeliveryReceipt>, BoxError>> + Send + 'static,
{
    let runs = Runs::default();
    let (handler, recorded) = (Arc::new(handler), runs.clone());
    app.task(&format!("websocket-{}", source.name()), move |shutdown| {
        let (source, handler, runs) = (source.clone(), handler.clone(), recorded.clone());
        async move {
            let result = source.run(shutdown, move |frame| handler(frame)).await;
            runs.0.lock().unwrap().push(result.as_ref().map(|_| ()).map_err(ToString::to_string));
            result.map_err(BoxError::from)
        }
    });
    runs
}

/// Runs `source`, writing each frame's text to `raw`, keyed by its connection number.
fn forward(app: &App, source: WebSocketSource, raw: &Raw) -> Runs {
    let raw = raw.clone();
    run_with(app, source, move |frame: WsFrame| {
        let raw = raw.clone();
        async move { Ok(vec![raw.send(&frame.connection.to_string(), &frame.text).await?]) }
    })
}

fn source(app: &App, url: &str, name: &str) -> WebSocketSource {
    WebSocketSource::new(app, url, name).unwrap()
}

/// A metric of one source, as exported.
fn metric(app: &App, name: &str, source: &str) -> f64 {
    let prefix = format!("strom_websocket_{name}{{source=\"{source}\"}} ");
    app.metrics().encode().lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok()).unwrap_or(0.0)
}

async fn metric_reaches(driver: &TestDriver, name: &str, source: &str, value: f64) {
    driver
        .wait_until(WAIT, async |d| Ok(metric(d.app_ref(), name, source) == value))
        .await
        .unwrap_or_else(|_| panic!("{name} of {source} did not reach {value} within {WAIT:?}"));
}

/// Reads `n` frames from `raw`: (connection, text).
async fn read(driver: &TestDriver, raw: &Raw, n: usize) -> Vec<(String, String)> {
    let events = driver.read(raw, n, WAIT).await.unwrap();
    events.iter().map(|e| (e.key().unwrap().clone(), e.value().clone())).collect()
}

fn on(connection: &str, texts: &[&str]) -> Vec<(String, String)> {
    texts.iter().map(|t| (connection.to_owned(), (*t).to_owned())).collect()
}

/// Stops the worker, which must take less than [`STOP_WITHIN`], and checks
/// that the source ran once and returned `Ok` (it never gave up before).
async fn stop(driver: TestDriver, runs: &Runs) {
    let started = Instant::now();
    tokio::time::timeout(STOP_WITHIN, driver.stop()).await.expect("the worker stopped in time").unwrap();
    assert!(started.elapsed() < STOP_WITHIN);
    assert_eq!(runs.results(), [Ok(())], "one run, ended by the shutdown");
}

// ---------------------------------------------------------------- the tests

#[tokio::test]
async fn frames_flow_in_order_and_the_websocket_is_closed_at_shutdown() {
    let mut server = Server::start().await;
    let app = TestDriver::app("ws-flow");
    let raw: Raw = app.topic("ws.raw");
    let runs = forward(&app, source(&app, &server.url(), "flow"), &raw);
    let driver = TestDriver::start(&app).await.unwrap();
    let conn = server.next().await;
    metric_reaches(&driver, "connected", "flow", 1.0).await;

    let texts: Vec<String> = (0..20).map(|n| format!(r#"{{"n": {n}}}"#)).collect();
    for text in &texts {
        conn.text(text.clone());
    }
    conn.send(Message::binary(Bytes::from_static("binary, but UTF-8: ä".as_bytes())));
    let got = read(&driver, &raw, 21).await;
    let mut expected: Vec<&str> = texts.iter().map(String::as_str).collect();
    expected.push("binary, but UTF-8: ä");
    assert_eq!(got, on("1", &expected), "in order, all on the first connection");

    let bytes: usize = expected.iter().map(|t| t.len()).sum();
    assert_eq!(metric(&app, "connects_total", "flow"), 1.0);
    assert_eq!(metric(&app, "disconnects_total", "flow"), 0.0);
    assert_eq!(metric(&app, "frames_received_total", "flow"), 21.0);
    assert_eq!(metric(&app, "bytes_received_total", "flow"), bytes as f64);
    assert_eq!(metric(&app, "dead_letters_total", "flow"), 0.0);
    assert_eq!(metric(&app, "lost_total", "flow"), 0.0);
    let since = metric(&app, "seconds_since_last_frame", "flow");
    assert!((0.0..5.0).contains(&since), "{since}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = metric(&app, "seconds_since_last_frame", "flow");
    assert!(later >= since + 1.0, "the gauge keeps counting: {since} then {later}");

    stop(driver, &runs).await;
    assert!(conn.closed_by_client.load(Ordering::SeqCst), "closed with a close handshake");
    assert_eq!(metric(&app, "connected", "flow"), 0.0);
    assert_eq!(metric(&app, "disconnects_total", "flow"), 1.0);
}

#[tokio::test]
async fn a_dropped_connection_is_made_again_and_what_is_sent_after_it_flows() {
    let mut server = Server::start().await;
    let app = TestDriver::app("ws-drop");
    let raw: Raw = app.topic("ws.raw");
    let runs = forward(&app, source(&app, &server.url(), "drop"), &raw);
    let driver = TestDriver::start(&app).await.unwrap();

    let first = server.next().await;
    for n in 0..5 {
        first.text(format!("a{n}"));
    }
    assert_eq!(read(&driver, &raw, 5).await, on("1", &["a0", "a1", "a2", "a3", "a4"]));
    first.drop_now().await; // mid-stream, no close handshake

    let second = server.next().await;
    for n in 0..5 {
        second.text(format!("b{n}"));
    }
    assert_eq!(read(&driver, &raw, 5).await, on("2", &["b0", "b1", "b2", "b3", "b4"]));
    assert_eq!(metric(&app, "connects_total", "drop"), 2.0);
    assert_eq!(metric(&app, "disconnects_total", "drop"), 1.0);
    assert_eq!(metric(&app, "connected", "drop"), 1.0);
    assert_eq!(metric(&app, "frames_received_total", "drop"), 10.0);
    stop(driver, &runs).await;
}

#[tokio::test]
async fn a_server_down_for_seconds_is_retried_with_backoff_until_it_is_back() {
    let mut server = Server::start().await;
    let app = TestDriver::app("ws-down");
    let raw: Raw = app.topic("ws.raw");
    let ws = source(&app, &server.url(), "down").backoff(Duration::from_millis(50), Duration::from_millis(400));
    let runs = forward(&app, ws, &raw);
    let driver = TestDriver::start(&app).await.unwrap();
    let first = server.next().await;
    first.text("before");
    assert_eq!(read(&driver, &raw, 1).await, on("1", &["before"]));

    server.stop().await; // connections are refused
    first.drop_now().await;
    metric_reaches(&driver, "connected", "down", 0.0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(runs.results().is_empty(), "the source is still running: {:?}", runs.results());
    assert_eq!(metric(&app, "connects_total", "down"), 1.0);

    // Back, but answering the first two handshakes with 503.
    server.refuse.store(2, Ordering::SeqCst);
    server.restart().await;
    let second = server.next().await;
    assert_eq!(server.refused.load(Ordering::SeqCst), 2, "the refused handshakes were retried");
    second.text("after");
    assert_eq!(read(&driver, &raw, 1).await, on("2", &["after"]));
    assert_eq!(metric(&app, "connects_total", "down"), 2.0);
    assert_eq!(metric(&app, "disconnects_total", "down"), 1.0);
    stop(driver, &runs).await;
}

#[tokio::test]
async fn a_server_that_stops_answering_pings_is_declared_dead_and_replaced() {
    let mut server = Server::start().await;
    let app = TestDriver::app("ws-dead");
    let raw: Raw = app.topic("ws.raw");
    let dead_after = Duration::from_secs(1);
    let ws = source(&app, &server.url(), "dead").ping_every(Duration::from_millis(100)).dead_after(dead_after);
    let runs = forward(&app, ws, &raw);
    let driver = TestDriver::start(&app).await.unwrap();
    let first = server.next().await;

    // Quiet, but answering pings: alive.
    tokio::time::sleep(dead_after * 2).await;
    assert_eq!(metric(&app, "connects_total", "dead"), 1.0, "a quiet server that answers pings is alive");
    first.text("one");
    assert_eq!(read(&driver, &raw, 1).await, on("1", &["one"]));

    first.stop_reading(); // the connection stays open, the pings go unanswered
    let stopped = Instant::now();
    let second = server.next().await;
    let took = stopped.elapsed();
    assert!(took >= dead_after - Duration::from_millis(150), "declared dead after {took:?}");
    second.text("two");
    assert_eq!(read(&driver, &raw, 1).await, on("2", &["two"]));
    assert_eq!(metric(&app, "connects_total", "dead"), 2.0);
    assert_eq!(metric(&app, "disconnects_total", "dead"), 1.0);
    stop(driver, &runs).await;
    drop(first);
}

#[tokio::test]
async fn bad_frames_are_dead_lettered_once_each_with_the_reason_and_the_rest_flows() {
    let mut server = Server::start().await;
    let url = server.url();
    let app = TestDriver::app("ws-bad");
    let raw: Raw = app.topic("ws.raw");
    let rejected = app.topic::<String, Bytes>("ws.raw.dlq");
    let out = raw.clone();
    // Through `task`, as a service would run it.
    source(&app, &url, "bad").max_frame(1024).dead_letters(&rejected).task(&app, "websocket", move |frame: WsFrame| {
        let raw = out.clone();
        async move {
            let value: Value = serde_json::from_str(&frame.text)?;
            if value["ok"] == Value::Bool(false) {
                return Err(Rejected::new(format!("not ok: {}", value["n"])).into());
            }
            Ok(vec![raw.send(&frame.connection.to_string(), &frame.text).await?])
        }
    });
    let driver = TestDriver::start(&app).await.unwrap();
    let conn = server.next().await;

    conn.text(r#"{"n": 1}"#);
    conn.send(Message::binary(vec![0xff, 0xfe, 0x00, b'a']));
    conn.text("x".repeat(4096));
    conn.send(Message::binary(vec![b'y'; 2048]));
    conn.text(r#"{"n": 2, "ok": false}"#);
    conn.text("not json");
    conn.text(r#"{"n": 3}"#);

    assert_eq!(read(&driver, &raw, 2).await, on("1", &[r#"{"n": 1}"#, r#"{"n": 3}"#]), "in order");
    let letters = driver.dead_letters("ws.raw", 5, WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(driver.messages("ws.raw.dlq").await.unwrap().len(), 5, "exactly one dead letter per bad frame");
    for letter in &letters {
        assert_eq!(letter.source_topic, url);
        assert_eq!((letter.source_partition, letter.source_offset), (-1, -1));
        assert_eq!(letter.agent, "bad");
        assert_eq!(letter.key.as_deref(), Some(url.as_bytes()), "keyed by the URL");
    }
    let [not_utf8, long_text, long_binary, refused, not_json] = &letters[..] else { panic!("{letters:?}") };
    assert_eq!(not_utf8.kind, "validation");
    assert!(not_utf8.error.contains("binary frame of 4 bytes is not valid UTF-8"), "{}", not_utf8.error);
    assert_eq!(not_utf8.value.as_deref(), Some(&[0xff, 0xfe, 0x00, b'a'][..]));
    assert_eq!(long_text.kind, "validation");
    assert!(
        long_text.error.contains("text frame of 4096 bytes is over the limit of 1024 bytes"),
        "{}",
        long_text.error
    );
    assert_eq!(long_text.value.as_ref().map(Bytes::len), Some(1024), "the first max_frame bytes");
    assert!(
        long_binary.error.contains("binary frame of 2048 bytes is over the limit of 1024"),
        "{}",
        long_binary.error
    );
    assert_eq!(long_binary.value.as_deref(), Some(&[b'y'; 1024][..]));
    assert_eq!((refused.kind.as_str(), refused.error.as_str()), ("rejected", "not ok: 2"));
    assert_eq!(refused.value.as_deref(), Some(&br#"{"n": 2, "ok": false}"#[..]));
    assert_eq!(not_json.kind, "decode");
    assert_eq!(not_json.value.as_deref(), Some(&b"not json"[..]));

    assert_eq!(metric(&app, "dead_letters_total", "bad"), 5.0);
    assert_eq!(metric(&app, "frames_received_total", "bad"), 7.0);
    assert_eq!(metric(&app, "connects_total", "bad"), 1.0, "bad frames do not cost the connection");
    assert_eq!(metric(&app, "lost_total", "bad"), 0.0);
    tokio::time::timeout(STOP_WITHIN, driver.stop()).await.unwrap().unwrap();
}

#[tokio::test]
async fn frames_that_cannot_be_read_fail_the_connection_and_the_source_reconnects() {
    let mut server = Server::start().await;
    let app = TestDriver::app("ws-unreadable");
    let raw: Raw = app.topic("ws.raw");
    let runs = forward(&app, source(&app, &server.url(), "unreadable").max_frame(1024), &raw);
    let driver = TestDriver::start(&app).await.unwrap();

    // A text frame that is not UTF-8: tungstenite fails the connection on it.
    let first = server.next().await;
    first.send(Message::Frame(Frame::message(vec![b'a', 0xff, 0xfe], OpCode::Data(Data::Text), true)));
    let second = server.next().await;
    // A frame over the hard limit, max(16 × max_frame, 16 MiB): it cannot be read at all.
    second.send(Message::binary(vec![b'z'; 16 * 1024 * 1024 + 1]));
    let third = server.next().await;
    third.text("readable");
    assert_eq!(read(&driver, &raw, 1).await, on("3", &["readable"]));
    assert_eq!(metric(&app, "connects_total", "unreadable"), 3.0);
    assert_eq!(metric(&app, "dead_letters_total", "unreadable"), 0.0);
    assert!(driver.messages("websocket.dlq").await.unwrap().is_empty());
    stop(driver, &runs).await;
}

#[tokio::test]
async fn a_refused_write_is_retried_and_neither_dead_lettered_nor_dropped() {
    let mut server = Server::start().await;
    let app = TestDriver::app("ws-refused");
    let raw: Raw = app.topic("ws.raw");
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let (out, tries) = (raw.clone(), attempts.clone());
    let ws = source(&app, &server.url(), "refused").backoff(Duration::from_millis(20), Duration::from_millis(100));
    let runs = run_with(&app, ws, move |frame: WsFrame| {
        let (raw, tries) = (out.clone(), tries.clone());
        async move {
            let first = {
                let mut tries = tries.lock().unwrap();
                tries.push(frame.text.clone());
                tries.iter().filter(|t| **t == frame.text).count() == 1
            };
            if first {
                // As a broker refusing the write would.
                return Err(Error::Send { topic: raw.name().into(), reason: "simulated refusal".into() }.into());
            }
            Ok(vec![raw.send(&frame.connection.to_string(), &frame.text).await?])
        }
    });
    let driver = TestDriver::start(&app).await.unwrap();
    let conn = server.next().await;
    conn.text("p");
    conn.text("q");
    assert_eq!(read(&driver, &raw, 2).await, on("1", &["p", "q"]));
    assert_eq!(*attempts.lock().unwrap(), ["p", "p", "q", "q"]);
    assert!(driver.messages("websocket.dlq").await.unwrap().is_empty(), "a refused write is not the input's fault");
    assert_eq!(metric(&app, "handler_retries_total", "refused"), 2.0);
    assert_eq!(metric(&app, "dead_letters_total", "refused"), 0.0);
    assert_eq!(metric(&app, "lost_total", "refused"), 0.0);
    stop(driver, &runs).await;
}

/// A self-signed certificate for 127.0.0.1 and its key (PKCS #8), both PEM.
fn self_signed() -> (Vec<u8>, Vec<u8>) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::{X509, X509NameBuilder};

    let key =
        PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, "strom websocket test").unwrap();
    let name = name.build();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap()).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
    cert.append_extension(BasicConstraints::new().critical().ca().build().unwrap()).unwrap();
    let san = SubjectAlternativeName::new().ip("127.0.0.1").build(&cert.x509v3_context(None, None)).unwrap();
    cert.append_extension(san).unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    (cert.build().to_pem().unwrap(), key.private_key_to_pem_pkcs8().unwrap())
}

#[tokio::test]
async fn wss_works_with_a_trusted_self_signed_certificate_and_an_untrusted_one_is_retried() {
    let (cert, key) = self_signed();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let identity = native_tls::Identity::from_pkcs8(&cert, &key).unwrap();
    let acceptor = tokio_native_tls::TlsAcceptor::from(native_tls::TlsAcceptor::new(identity).unwrap());
    let mut server = Server::start_with(Some(acceptor)).await;
    assert!(server.url().starts_with("wss://127.0.0.1:"));

    let app = TestDriver::app("ws-tls");
    let raw: Raw = app.topic("ws.raw");
    let backoff = (Duration::from_millis(50), Duration::from_millis(200));
    let trusting = source(&app, &server.url(), "trusting").root_certificate(&ca).backoff(backoff.0, backoff.1);
    let untrusting = source(&app, &server.url(), "untrusting").backoff(backoff.0, backoff.1);
    let runs = forward(&app, trusting, &raw);
    let untrusting_runs = forward(&app, untrusting, &raw);
    let driver = TestDriver::start(&app).await.unwrap();

    let conn = server.next().await;
    conn.text("secret");
    assert_eq!(read(&driver, &raw, 1).await, on("1", &["secret"]));
    assert_eq!(metric(&app, "connects_total", "trusting"), 1.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(&app, "connects_total", "untrusting"), 0.0, "the certificate is not trusted");
    assert!(untrusting_runs.results().is_empty(), "a TLS failure does not end the run");

    let started = Instant::now();
    tokio::time::timeout(STOP_WITHIN, driver.stop()).await.unwrap().unwrap();
    assert!(started.elapsed() < STOP_WITHIN);
    assert_eq!(runs.results(), [Ok(())]);
    assert_eq!(untrusting_runs.results(), [Ok(())]);
}

#[tokio::test]
async fn a_missing_ca_file_fails_the_run_with_its_path() {
    let app = TestDriver::app("ws-no-ca");
    let raw: Raw = app.topic("ws.raw");
    let ws = source(&app, "wss://127.0.0.1:9/", "no-ca").root_certificate("/nonexistent/strom-ca.pem");
    let runs = forward(&app, ws, &raw);
    let driver = TestDriver::start(&app).await.unwrap();
    driver.wait_until(WAIT, async |_| Ok(!runs.results().is_empty())).await.unwrap();
    let first = runs.results()[0].clone().unwrap_err();
    assert!(first.contains("/nonexistent/strom-ca.pem"), "{first}");
    tokio::time::timeout(STOP_WITHIN, driver.stop()).await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_while_the_server_is_unreachable_is_prompt() {
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let app = TestDriver::app("ws-unreachable");
    let raw: Raw = app.topic("ws.raw");
    let runs = forward(&app, source(&app, &format!("ws://127.0.0.1:{port}"), "unreachable"), &raw);
    let driver = TestDriver::start(&app).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(metric(&app, "connects_total", "unreachable"), 0.0);
    assert_eq!(metric(&app, "connected", "unreachable"), 0.0);
    let started = Instant::now();
    stop(driver, &runs).await;
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}
