//! A websocket source: connects to a `ws://` or `wss://` URL and hands each
//! frame to a handler that sends what it makes of it to topics, as the MQTT
//! source (`connect::mqtt`) does for MQTT messages.
//!
//! - Text frames go to the handler as a [`WsFrame`]; so do binary frames that
//!   are valid UTF-8. A binary frame that is not UTF-8 goes to the dead-letter
//!   topic instead (kind `validation`), and so does a frame larger than
//!   [`max_frame`](WebSocketSource::max_frame) (1 MiB by default; the dead
//!   letter keeps its first `max_frame` bytes). The connection reads frames up
//!   to a hard limit of `max(16 × max_frame, 16 MiB)`; a larger one cannot be
//!   read at all: it is a connection error (logged, then reconnect).
//! - A text frame that is not valid UTF-8 cannot be dead-lettered: tungstenite
//!   fails the read with a UTF-8 error, as RFC 6455 requires of a client, and
//!   does not hand the bytes over. The source logs it as an error and
//!   reconnects; the frame is lost.
//! - Input the handler rejects (it returns an error: a `serde_json` error, a
//!   [`Rejected`](crate::Rejected), anything but the errors below) goes to the
//!   dead-letter topic, exactly once per frame, with the `strom.*` headers of
//!   [`crate::dlq`]: the URL as `strom.source.topic`, `-1` as partition and
//!   offset, the source's name as `strom.agent`; the dead letter is keyed by
//!   the URL, so a source's dead letters stay in order in one partition.
//!   Errors that are not the input's fault ([`Error::Send`],
//!   [`Error::Transport`], [`Error::ShuttingDown`], [`Error::Topic`],
//!   [`Error::Io`]: the broker refused a send, say) are logged and counted,
//!   and the handler is called again for the same frame after a backoff,
//!   until it succeeds or the source stops: a websocket cannot deliver the
//!   frame again, so it is not dropped. A handler that sends several records
//!   may send the first ones twice that way.
//! - The handler returns the [`DeliveryReceipt`]s of its sends; they are
//!   awaited in the background, in arrival order, while the next frames are
//!   handled. Up to [`max_in_flight`](WebSocketSource::max_in_flight) frames
//!   (1000) wait for their writes at once; beyond that the source stops
//!   reading the socket until writes complete, and the server's sends back up
//!   (TCP backpressure). A write that fails is logged as an error and the
//!   frame counted as lost.
//! - The source pings the server every
//!   [`ping_every`](WebSocketSource::ping_every) (10 s). A connection over which
//!   nothing came (no frame, no pong) for
//!   [`dead_after`](WebSocketSource::dead_after) (30 s) while the source was
//!   reading is dead: it is dropped and a new one made. Connecting (TCP, TLS
//!   and the handshake) is bounded by `dead_after` too.
//! - The source never gives up on the network: a refused connection, a reset,
//!   a TLS failure, a handshake answered with an HTTP error, a protocol error
//!   or the server closing the connection are logged (with the attempt number
//!   and the delay) and retried forever, with an exponential backoff with
//!   jitter (each wait a random time between half and all of 100 ms doubling
//!   to 30 s, see [`backoff`](WebSocketSource::backoff)); the backoff starts
//!   over after a connection that worked (the server sent something over it).
//!   [`run`](WebSocketSource::run) returns only on shutdown, or with an error
//!   that is neither the input's nor the network's, before it connects (a CA
//!   file that cannot be read, a dead-letter topic that cannot be created).
//! - On shutdown the source stops reading, waits up to
//!   [`drain_timeout`](WebSocketSource::drain_timeout) (5 s) for the writes in
//!   flight, and closes the websocket with a close handshake. A frame whose
//!   handler is running when shutdown comes gets that long to finish too.
//!
//! # What survives a crash
//!
//! A websocket has no acknowledgements and no redelivery: what the server sent
//! is gone from it once sent. Frames received but whose writes the broker had
//! not yet acknowledged when the process crashed are lost (exactly-once
//! semantics do not replay them: there is nothing to replay from). The source
//! keeps that window small: the handler's sends go out at once (keep the
//! producer's linger small), at most `max_in_flight` frames are ever waiting
//! for their writes, and a graceful shutdown waits for them. A reconnect only
//! sees what the server sends after it: what it sent while the source was
//! away, or on a connection that died, is not delivered again. Where losing
//! those matters, the server must offer a way to resume (a sequence number to
//! ask from), which the handler can keep track of.
//!
//! Metrics (label `source`, the source's name): `strom_websocket_connects_total`,
//! `strom_websocket_disconnects_total` (every connection that ended, shutdown
//! included), `strom_websocket_frames_received_total` and
//! `strom_websocket_bytes_received_total` (text and binary frames, dead-lettered
//! ones included), `strom_websocket_dead_letters_total`,
//! `strom_websocket_seconds_since_last_frame` (computed when scraped; since the
//! source started if no frame came yet), `strom_websocket_connected` (1 while
//! connected), `strom_websocket_lost_total` (frames whose writes failed, or
//! abandoned at shutdown) and `strom_websocket_handler_retries_total` (handler
//! calls, or dead letters, tried again after an error that was not the input's).
//!
//! ```
//! use stream_core::connect::websocket::{WebSocketSource, WsFrame};
//! use stream_core::prelude::*;
//!
//! # fn main() -> Result<(), stream_core::Error> {
//! let app = App::builder("quakes").broker("memory://").build()?;
//! let raw = app.topic::<String, serde_json::Value>("quakes.raw");
//! let rejected = app.topic::<String, bytes::Bytes>("quakes.raw.dlq");
//!
//! WebSocketSource::new(&app, "wss://quakes.example.org/v1/stream", "quakes-feed")?
//!     .dead_letters(&rejected)          // default: "websocket.dlq"
//!     .max_frame(256 * 1024)            // larger frames are dead-lettered
//!     .task(&app, "quakes", move |frame: WsFrame| {
//!         let raw = raw.clone();
//!         async move {
//!             // Not JSON, or no id: the frame is dead-lettered with the reason.
//!             let value: serde_json::Value = serde_json::from_str(&frame.text)?;
//!             let Some(id) = value["id"].as_str().map(str::to_owned) else {
//!                 return Err(Rejected::new("no id").into());
//!             };
//!             Ok(vec![raw.send(&id, &value).await?]) // awaited in the background
//!         }
//!     });
//! # Ok(()) }
//! ```

use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{SinkExt, StreamExt};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::app::{App, AppCore};
use crate::dlq;
use crate::error::{BoxError, Error, Result};
use crate::metrics::Metrics;
use crate::timer::Shutdown;
use crate::topic::{Topic, produce};
use crate::tracking::DeliveryReceipt;
use crate::transport::{RawMessage, TopicSpec};

/// The dead-letter topic used unless [`WebSocketSource::dead_letters`] names
/// one (with the app's topic prefix).
pub const DEFAULT_DEAD_LETTERS: &str = "websocket.dlq";
/// The environment variable naming a PEM file of extra CA certificates for
/// `wss://`, when [`WebSocketSource::root_certificate`] names none.
pub const CA_FILE_ENV: &str = "STROM_WEBSOCKET_CA_FILE";

/// The smallest hard limit on what the connection reads (see [`WebSocketSource::max_frame`]).
const HARD_LIMIT_FLOOR: usize = 16 * 1024 * 1024;
/// How long closing the websocket at shutdown may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The shortest interval the timing settings accept.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// One frame, as the handler gets it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WsFrame {
    /// Its payload: a text frame's text, or a binary frame's bytes if they are UTF-8.
    pub text: String,
    /// When the source received it, epoch milliseconds.
    pub received_ms: i64,
    /// The connection it came on: 1 for the first, one more for each reconnect.
    pub connection: u64,
}

/// A reusable websocket source; see the [module docs](self).
///
/// Built with [`new`](Self::new) and the builder methods; run by
/// [`task`](Self::task) (as a task of the app's worker) or by
/// [`run`](Self::run) inside a task of your own. Cheap to clone.
#[derive(Clone)]
pub struct WebSocketSource {
    core: Arc<AppCore>,
    url: String,
    tls: bool,
    name: String,
    dead_letters: Option<Arc<str>>,
    max_frame: usize,
    ping_every: Duration,
    dead_after: Duration,
    backoff_first: Duration,
    backoff_max: Duration,
    root_certificate: Option<PathBuf>,
    max_in_flight: usize,
    drain_timeout: Duration,
    metrics: SourceMetrics,
}

impl std::fmt::Debug for WebSocketSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketSource")
            .field("url", &self.url)
            .field("name", &self.name)
            .field("max_frame", &self.max_frame)
            .field("ping_every", &self.ping_every)
            .field("dead_after", &self.dead_after)
            .finish_non_exhaustive()
    }
}

impl WebSocketSource {
    /// A source reading `url` (`ws://host[:port][/path][?query]`, or `wss://`
    /// for TLS, through the system's OpenSSL). `name` labels its logs and
    /// metrics (label `source`) and is the `strom.agent` of its dead letters.
    /// Extra CA certificates for `wss://` come from [`CA_FILE_ENV`] unless
    /// [`root_certificate`](Self::root_certificate) names a file.
    pub fn new(app: &App, url: &str, name: &str) -> Result<WebSocketSource> {
        let tls = parse_url(url)?;
        if name.is_empty() {
            return Err(Error::Config("websocket source name: must not be empty (it labels logs and metrics)".into()));
        }
        Ok(WebSocketSource {
            core: app.core.clone(),
            url: url.to_owned(),
            tls,
            name: name.to_owned(),
            dead_letters: None,
            max_frame: 1024 * 1024,
            ping_every: Duration::from_secs(10),
            dead_after: Duration::from_secs(30),
            backoff_first: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            root_certificate: std::env::var_os(CA_FILE_ENV).filter(|v| !v.is_empty()).map(PathBuf::from),
            max_in_flight: 1000,
            drain_timeout: Duration::from_secs(5),
            metrics: SourceMetrics::new(app.metrics(), name),
        })
    }

    /// Sends dead letters to `topic` (by default [`DEFAULT_DEAD_LETTERS`],
    /// created when the source starts).
    pub fn dead_letters<K, V>(mut self, topic: &Topic<K, V>) -> Self {
        self.dead_letters = Some(topic.name_arc().clone());
        self
    }

    /// Dead-letters frames larger than `bytes` (default 1 MiB) without calling
    /// the handler; the dead letter keeps their first `bytes` bytes. The
    /// connection reads frames up to `max(16 × bytes, 16 MiB)`: a larger one
    /// drops the connection (logged as an error; the source reconnects).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// How often the source pings the server (default 10 s).
    pub fn ping_every(mut self, every: Duration) -> Self {
        self.ping_every = every.max(MIN_INTERVAL);
        self
    }

    /// How long a connection may stay silent (no frame, no pong) before it is
    /// deemed dead and replaced (default 30 s); also the limit on connecting.
    /// Make it a few times [`ping_every`](Self::ping_every).
    pub fn dead_after(mut self, timeout: Duration) -> Self {
        self.dead_after = timeout.max(MIN_INTERVAL);
        self
    }

    /// The reconnect backoff (default 100 ms doubling to 30 s): each wait is
    /// a random time between half and all of the current step. It starts over
    /// after a connection that worked. The handler's retries use it too.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff_first = first.max(MIN_INTERVAL);
        self.backoff_max = max.max(self.backoff_first);
        self
    }

    /// Trusts the CA certificates of a PEM file for `wss://`, besides the
    /// system's (a self-signed server, a private CA). Read when the source
    /// starts; a file that cannot be read or parsed fails the run.
    pub fn root_certificate(mut self, pem_path: impl Into<PathBuf>) -> Self {
        self.root_certificate = Some(pem_path.into());
        self
    }

    /// How many frames may wait for their writes at once (default 1000);
    /// beyond that the source stops reading the socket.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// How long a stopping source waits for the writes of frames in flight
    /// (default 5 s) before it closes the websocket.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL it reads.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs the source as the app's task `name` ([`App::task`]): it starts
    /// with the worker and stops with it (a run that cannot start, see
    /// [`run`](Self::run), is started again after a backoff).
    pub fn task<H, Fut>(self, app: &App, name: &str, handler: H)
    where
        H: Fn(WsFrame) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<DeliveryReceipt>, BoxError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        app.task(name, move |shutdown| {
            let (source, handler) = (self.clone(), handler.clone());
            async move { source.run(shutdown, move |frame| handler(frame)).await.map_err(BoxError::from) }
        });
    }

    /// Runs the source until `shutdown`: connects (again and again, as
    /// needed), calls `handler` for each frame, one at a time, in the order
    /// they arrive, and awaits the receipts it returned in the background. On
    /// shutdown it stops reading, waits (up to the [drain
    /// timeout](Self::drain_timeout)) for the writes in flight and closes the
    /// websocket. Returns `Ok` then; an error only when it cannot start (a
    /// CA file that cannot be read, a dead-letter topic that cannot be
    /// created), never because of the network or the input.
    pub async fn run<H, Fut>(&self, mut shutdown: Shutdown, handler: H) -> Result<()>
    where
        H: Fn(WsFrame) -> Fut,
        Fut: Future<Output = Result<Vec<DeliveryReceipt>, BoxError>>,
    {
        let connector = self.connector()?;
        let dead_letters = self.dead_letter_topic().await?;
        if self.dead_after <= self.ping_every {
            tracing::warn!(source = %self.name, dead_after_ms = self.dead_after.as_millis() as u64,
                ping_every_ms = self.ping_every.as_millis() as u64,
                "dead_after is not longer than ping_every: a quiet server's connections will be deemed dead");
        }
        tracing::info!(source = %self.name, url = %self.url, max_frame = self.max_frame, "websocket source starting");
        self.metrics.since_last_frame.touch();
        let mut run =
            Run { handling: Handling { source: self, dead_letters }, pending: FuturesOrdered::new(), connection: 0 };
        run.connect_loop(&mut shutdown, &handler, connector).await;
        run.drain().await;
        self.metrics.connected.set(0);
        tracing::info!(source = %self.name, "websocket source stopped");
        Ok(())
    }

    /// The largest frame the connection reads at all.
    fn hard_limit(&self) -> usize {
        self.max_frame.saturating_mul(16).max(HARD_LIMIT_FLOOR)
    }

    fn backoff_from_start(&self) -> Backoff {
        Backoff::new(self.backoff_first, self.backoff_max)
    }

    /// The TLS connector for `wss://`, trusting the extra CA file if any.
    fn connector(&self) -> Result<Option<Connector>> {
        if !self.tls {
            return Ok(None);
        }
        let mut builder = native_tls::TlsConnector::builder();
        if let Some(path) = &self.root_certificate {
            let pem = std::fs::read(path).map_err(|source| Error::Io {
                context: format!("reading the CA file {} of websocket source {}", path.display(), self.name),
                source,
            })?;
            let certificates = native_tls::Certificate::stack_from_pem(&pem)
                .map_err(|e| Error::Config(format!("CA file {}: {e}", path.display())))?;
            if certificates.is_empty() {
                return Err(Error::Config(format!("CA file {}: no PEM certificate in it", path.display())));
            }
            for certificate in certificates {
                builder.add_root_certificate(certificate);
            }
        }
        let connector = builder.build().map_err(|e| Error::Config(format!("websocket TLS: {e}")))?;
        Ok(Some(Connector::NativeTls(connector)))
    }

    /// The dead-letter topic, created if it is the default one.
    async fn dead_letter_topic(&self) -> Result<Arc<str>> {
        if let Some(topic) = &self.dead_letters {
            return Ok(topic.clone());
        }
        let name = self.core.config.topic_name(DEFAULT_DEAD_LETTERS);
        let spec = TopicSpec {
            name: name.clone(),
            partitions: self.core.config.default_partitions,
            replication: self.core.config.replication,
            config: Default::default(),
        };
        self.core.transport.ensure_topics(&[spec]).await?;
        Ok(Arc::from(name))
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a frame in flight resolves to: whether its writes succeeded.
type InFlight = BoxFuture<'static, Result<()>>;

/// How a connection ended.
enum Ended {
    /// The worker is stopping; the websocket was closed.
    Shutdown,
    /// The connection was lost (or given up on).
    Lost {
        /// Why, in words.
        reason: String,
        /// Whether data was lost with it (a frame too large, or not UTF-8).
        frame_lost: bool,
        /// Whether the server sent anything over it.
        worked: bool,
    },
}

/// One run of the source.
struct Run<'a> {
    handling: Handling<'a>,
    /// Frames waiting for their writes, in arrival order.
    pending: FuturesOrdered<InFlight>,
    /// The current connection's number.
    connection: u64,
}

impl Run<'_> {
    /// Connects, reads, reconnects, until shutdown.
    async fn connect_loop<H, Fut>(&mut self, shutdown: &mut Shutdown, handler: &H, connector: Option<Connector>)
    where
        H: Fn(WsFrame) -> Fut,
        Fut: Future<Output = Result<Vec<DeliveryReceipt>, BoxError>>,
    {
        let source = self.handling.source;
        let limit = source.hard_limit();
        let config = WebSocketConfig::default().max_message_size(Some(limit)).max_frame_size(Some(limit));
        let mut backoff = source.backoff_from_start();
        // Attempts since the last connection that worked.
        let mut attempt: u64 = 0;
        loop {
            attempt += 1;
            let connecting = tokio::time::timeout(
                source.dead_after,
                tokio_tungstenite::connect_async_tls_with_config(
                    source.url.as_str(),
                    Some(config),
                    true,
                    connector.clone(),
                ),
            );
            let Some(connected) = self.alongside(shutdown, connecting).await else { return };
            let delay = match connected {
                Ok(Ok((ws, response))) => {
                    self.connection += 1;
                    source.metrics.connects.inc();
                    source.metrics.connected.set(1);
                    tracing::info!(source = %source.name, url = %source.url, connection = self.connection, attempt,
                        status = %response.status(), "connected to the websocket server");
                    let ended = self.session(ws, shutdown, handler).await;
                    source.metrics.connected.set(0);
                    source.metrics.disconnects.inc();
                    let Ended::Lost { reason, frame_lost, worked } = ended else { return };
                    if worked {
                        backoff.reset();
                        attempt = 0;
                    }
                    let delay = backoff.next_delay();
                    let retry_in_ms = delay.as_millis() as u64;
                    if frame_lost {
                        tracing::error!(source = %source.name, url = %source.url, connection = self.connection,
                            retry_in_ms, %reason, "websocket connection failed on a frame, which is lost; reconnecting");
                    } else {
                        tracing::warn!(source = %source.name, url = %source.url, connection = self.connection,
                            retry_in_ms, %reason, "websocket connection lost; reconnecting");
                    }
                    delay
                }
                failed => {
                    let reason = match failed {
                        Ok(Err(e)) => describe(&e, limit),
                        _ => format!("no connection within {:?} (dead_after)", source.dead_after),
                    };
                    let delay = backoff.next_delay();
                    tracing::warn!(source = %source.name, url = %source.url, attempt,
                        retry_in_ms = delay.as_millis() as u64, %reason,
                        "cannot connect to the websocket server; trying again");
                    delay
                }
            };
            if self.alongside(shutdown, tokio::time::sleep(delay)).await.is_none() {
                return;
            }
        }
    }

    /// Waits for `fut` while settling writes as they complete; `None` on shutdown.
    async fn alongside<F: Future>(&mut self, shutdown: &mut Shutdown, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                biased;
                () = shutdown.wait() => return None,
                Some(written) = self.pending.next(), if !self.pending.is_empty() => {
                    settle(self.handling.source, written);
                }
                out = &mut fut => return Some(out),
            }
        }
    }

    /// Reads one connection until it is lost or the worker stops.
    async fn session<H, Fut>(&mut self, mut ws: Ws, shutdown: &mut Shutdown, handler: &H) -> Ended
    where
        H: Fn(WsFrame) -> Fut,
        Fut: Future<Output = Result<Vec<DeliveryReceipt>, BoxError>>,
    {
        let source = self.handling.source;
        let limit = source.hard_limit();
        let mut last_heard = Instant::now();
        let mut worked = false;
        let mut paused = false;
        let mut close_reason = None;
        let mut ping = tokio::time::interval_at(Instant::now() + source.ping_every, source.ping_every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (reason, frame_lost) = loop {
            // Too many frames waiting for their writes: stop reading (backpressure).
            // Silence while not reading is not the server's fault.
            let full = self.pending.len() >= source.max_in_flight;
            if full {
                paused = true;
            } else if paused {
                paused = false;
                last_heard = Instant::now();
            }
            tokio::select! {
                biased;
                () = shutdown.wait() => {
                    self.drain().await;
                    close(&mut ws, source).await;
                    return Ended::Shutdown;
                }
                Some(written) = self.pending.next(), if !self.pending.is_empty() => settle(source, written),
                () = tokio::time::sleep_until(last_heard + source.dead_after), if !full => {
                    break (format!("nothing heard from the server for {:?} (no frame, no pong)", source.dead_after), false);
                }
                _ = ping.tick() => {
                    // Bounded: a server that stopped reading must not hold the source here.
                    let sent = tokio::select! {
                        biased;
                        () = shutdown.wait() => continue,
                        sent = tokio::time::timeout(source.dead_after, ws.send(Message::Ping(Bytes::new()))) => sent,
                    };
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break (format!("cannot send a ping: {}", describe(&e, limit)), false),
                        Err(_) => break (format!("a ping could not be sent within {:?}", source.dead_after), false),
                    }
                }
                message = ws.next(), if !full => {
                    let message = match message {
                        None => {
                            let reason = match close_reason.take() {
                                Some(why) => format!("the server closed the connection: {why}"),
                                None => "the server closed the connection".to_owned(),
                            };
                            break (reason, false);
                        }
                        Some(Err(e)) => {
                            let frame_lost = matches!(e, tungstenite::Error::Capacity(_) | tungstenite::Error::Utf8(_));
                            break (describe(&e, limit), frame_lost);
                        }
                        Some(Ok(message)) => message,
                    };
                    last_heard = Instant::now();
                    let (payload, text) = match message {
                        Message::Text(text) => (Bytes::from(text), true),
                        Message::Binary(bytes) => (bytes, false),
                        Message::Ping(_) | Message::Pong(_) => {
                            worked = true;
                            continue;
                        }
                        Message::Close(frame) => {
                            close_reason = Some(match frame {
                                Some(frame) => format!("code {}, {:?}", frame.code, frame.reason.as_str()),
                                None => "no code".to_owned(),
                            });
                            continue;
                        }
                        Message::Frame(_) => continue,
                    };
                    worked = true;
                    let received_ms = now_ms();
                    source.metrics.frames.inc();
                    source.metrics.bytes.inc_by(payload.len() as u64);
                    source.metrics.since_last_frame.set(received_ms);
                    let processing = self.handling.process(payload, text, received_ms, self.connection, handler);
                    let handled = tokio::select! {
                        biased;
                        in_flight = processing => Some(in_flight),
                        () = grace(shutdown, source.drain_timeout) => None,
                    };
                    match handled {
                        Some(in_flight) => self.pending.push_back(in_flight),
                        None => {
                            tracing::warn!(source = %source.name, timeout_ms = source.drain_timeout.as_millis() as u64,
                                "a frame was still being handled at the end of the drain timeout; it is lost");
                            source.metrics.lost.inc();
                        }
                    }
                    // The source was not reading while it handled the frame.
                    last_heard = Instant::now();
                }
            }
        };
        Ended::Lost { reason, frame_lost, worked }
    }

    /// Waits (bounded) for the writes of the frames in flight.
    async fn drain(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let source = self.handling.source;
        let pending = &mut self.pending;
        let drained = tokio::time::timeout(source.drain_timeout, async {
            while let Some(written) = pending.next().await {
                settle(source, written);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(source = %source.name, frames = self.pending.len(),
                timeout_ms = source.drain_timeout.as_millis() as u64,
                "writes still unacknowledged at the end of the drain timeout; the worker flushes them, unwatched");
            self.pending = FuturesOrdered::new();
        }
    }
}

/// Resolves `drain_timeout` after shutdown.
async fn grace(shutdown: &mut Shutdown, timeout: Duration) {
    shutdown.wait().await;
    tokio::time::sleep(timeout).await;
}

/// Closes the websocket with a close handshake (bounded).
async fn close(ws: &mut Ws, source: &WebSocketSource) {
    let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
        ws.close(None).await?;
        // The server answers with its close frame, then ends the connection;
        // what it sent before that is not read any more.
        let mut dropped = 0_u64;
        while let Some(message) = ws.next().await {
            if matches!(message?, Message::Text(_) | Message::Binary(_)) {
                dropped += 1;
            }
        }
        Ok::<u64, tungstenite::Error>(dropped)
    })
    .await;
    match closed {
        Ok(Ok(0)) => tracing::debug!(source = %source.name, "websocket closed"),
        Ok(Ok(dropped)) => tracing::warn!(source = %source.name, frames = dropped,
            "frames the server sent before it saw the close were not handled"),
        Ok(Err(e)) => tracing::debug!(source = %source.name, error = %e, "websocket close did not complete cleanly"),
        Err(_) => tracing::warn!(source = %source.name, "websocket close did not complete in time"),
    }
}

/// A frame's writes are done: count the ones that failed.
fn settle(source: &WebSocketSource, written: Result<()>) {
    if let Err(e) = written {
        tracing::error!(source = %source.name, url = %source.url, error = %e,
            "a write for a websocket frame failed; the frame is lost (a websocket cannot send it again)");
        source.metrics.lost.inc();
    }
}

/// A tungstenite error, in words.
fn describe(e: &tungstenite::Error, limit: usize) -> String {
    match e {
        tungstenite::Error::Http(response) => {
            format!("the server refused the websocket handshake with HTTP {}", response.status())
        }
        tungstenite::Error::Capacity(e) => format!(
            "{e}: over the hard limit of {limit} bytes, so it could not be read (frames over max_frame but \
             under that limit are dead-lettered)"
        ),
        tungstenite::Error::Utf8(e) => format!(
            "a text frame is not valid UTF-8 ({e}); tungstenite fails the connection on it, as RFC 6455 \
             requires, and does not hand its bytes over"
        ),
        e => e.to_string(),
    }
}

/// What handling a frame needs (kept apart from the run's queue, which is not `Sync`).
struct Handling<'a> {
    source: &'a WebSocketSource,
    dead_letters: Arc<str>,
}

impl Handling<'_> {
    /// Calls the handler (or dead-letters), retrying what is not the input's
    /// fault; returns what resolves once the frame's writes are acknowledged.
    async fn process<H, Fut>(
        &self,
        payload: Bytes,
        text_frame: bool,
        received_ms: i64,
        connection: u64,
        handler: &H,
    ) -> InFlight
    where
        H: Fn(WsFrame) -> Fut,
        Fut: Future<Output = Result<Vec<DeliveryReceipt>, BoxError>>,
    {
        let source = self.source;
        let size = payload.len();
        let what = if text_frame { "text" } else { "binary" };
        if size > source.max_frame {
            let max = source.max_frame;
            let reason = format!(
                "{what} frame of {size} bytes is over the limit of {max} bytes; the dead letter keeps the first {max} bytes"
            );
            return self.dead_letter(payload.slice(..max), dlq::Kind::Validation, &reason, received_ms).await;
        }
        let text = match std::str::from_utf8(&payload) {
            Ok(text) => text.to_owned(),
            Err(e) => {
                let reason = format!("{what} frame of {size} bytes is not valid UTF-8: {e}");
                return self.dead_letter(payload, dlq::Kind::Validation, &reason, received_ms).await;
            }
        };
        let frame = WsFrame { text, received_ms, connection };
        let mut backoff = source.backoff_from_start();
        let mut attempt: u64 = 0;
        loop {
            attempt += 1;
            let error = match handler(frame.clone()).await {
                Ok(receipts) => {
                    return Box::pin(async move {
                        for receipt in receipts {
                            receipt.await?;
                        }
                        Ok(())
                    });
                }
                Err(e) => e,
            };
            match classify(error) {
                Ok((kind, reason)) => return self.dead_letter(payload, kind, &reason, received_ms).await,
                Err(e) => {
                    let delay = backoff.next_delay();
                    source.metrics.retries.inc();
                    if matches!(e, Error::ShuttingDown) {
                        tracing::debug!(source = %source.name, "the worker is shutting down; the frame waits");
                    } else {
                        tracing::error!(source = %source.name, error = %e, attempt,
                            retry_in_ms = delay.as_millis() as u64,
                            "the handler failed, not because of the frame; handling it again");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Sends the frame's dead letter (trying again while the broker refuses it).
    async fn dead_letter(&self, value: Bytes, kind: dlq::Kind, reason: &str, received_ms: i64) -> InFlight {
        let source = self.source;
        tracing::warn!(source = %source.name, url = %source.url, kind = kind.as_str(), %reason,
            dead_letters = %self.dead_letters, "websocket frame dead-lettered");
        let raw = RawMessage {
            topic: Arc::from(source.url.as_str()),
            partition: -1,
            offset: -1,
            key: Some(Bytes::copy_from_slice(source.url.as_bytes())),
            value: Some(value),
            headers: Vec::new(),
            timestamp_ms: Some(received_ms),
        };
        let mut letter = dlq::letter(&raw, kind, reason, &source.name);
        letter.topic = self.dead_letters.clone();
        letter.partition = None;
        let mut backoff = source.backoff_from_start();
        loop {
            match produce(&source.core, letter.clone()).await {
                Ok(receipt) => {
                    source.metrics.dead_letters.inc();
                    return Box::pin(receipt.into_future());
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    source.metrics.retries.inc();
                    tracing::error!(source = %source.name, error = %e, retry_in_ms = delay.as_millis() as u64,
                        dead_letters = %self.dead_letters, "cannot send a dead letter; trying again");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Whether a handler's error is the input's fault (dead-letter it, with this
/// kind and reason) or not (handle the frame again), as the MQTT source decides.
fn classify(e: BoxError) -> Result<(dlq::Kind, String)> {
    match e.downcast::<Error>() {
        Ok(e) => match *e {
            e @ (Error::Send { .. }
            | Error::Transport { .. }
            | Error::ShuttingDown
            | Error::Topic { .. }
            | Error::Io { .. }) => Err(e),
            e => Ok((dlq::Kind::of(&e), e.to_string())),
        },
        Err(e) => {
            let kind = if e.is::<serde_json::Error>() || e.is::<crate::codec::CodecError>() {
                dlq::Kind::Decode
            } else if e.is::<crate::record::ValidationError>() {
                dlq::Kind::Validation
            } else if e.is::<crate::Rejected>() {
                dlq::Kind::Rejected
            } else {
                dlq::Kind::Handler
            };
            Ok((kind, e.to_string()))
        }
    }
}

/// An exponential backoff with jitter: each wait is a random time between
/// half and all of the current step, which doubles from `first` to `max`.
#[derive(Debug, Clone)]
struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max, step: first }
    }

    fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        Duration::try_from_secs_f64(step.as_secs_f64() * (0.5 + fastrand::f64() / 2.0)).unwrap_or(step)
    }

    fn reset(&mut self) {
        self.step = self.first;
    }
}

/// `ws://` or `wss://` with a host; whether it is TLS.
fn parse_url(url: &str) -> Result<bool> {
    let bad = |why: &str| {
        Error::Config(format!("websocket URL {url:?}: {why} (expected ws://host[:port][/path] or wss://...)"))
    };
    let request = url.into_client_request().map_err(|e| bad(&e.to_string()))?;
    let uri = request.uri();
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(bad("the scheme must be ws or wss")),
    };
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(tls)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

/// A gauge of the seconds since a time, computed when scraped.
#[derive(Debug, Clone)]
struct SecondsSince(Arc<AtomicI64>);

impl Default for SecondsSince {
    fn default() -> Self {
        SecondsSince(Arc::new(AtomicI64::new(now_ms())))
    }
}

impl SecondsSince {
    fn set(&self, epoch_ms: i64) {
        self.0.store(epoch_ms, Ordering::Relaxed);
    }

    fn touch(&self) {
        self.set(now_ms());
    }
}

impl TypedMetric for SecondsSince {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for SecondsSince {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> std::fmt::Result {
        let since_ms = now_ms().saturating_sub(self.0.load(Ordering::Relaxed)).max(0);
        encoder.encode_gauge(&(since_ms as f64 / 1000.0))
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One source's metrics, in families shared by the app's sources.
#[derive(Clone)]
struct SourceMetrics {
    connects: Counter,
    disconnects: Counter,
    frames: Counter,
    bytes: Counter,
    dead_letters: Counter,
    since_last_frame: SecondsSince,
    connected: Gauge,
    lost: Counter,
    retries: Counter,
}

impl SourceMetrics {
    fn new(metrics: &Metrics, source: &str) -> Self {
        let label = SourceLabel { source: source.to_owned() };
        let counter = |name: &str, help: &str| {
            metrics.register_once(name, help, Family::<SourceLabel, Counter>::default).get_or_create(&label).clone()
        };
        let connected = metrics
            .register_once("websocket_connected", "1 while connected to the websocket server", || {
                Family::<SourceLabel, Gauge>::default()
            })
            .get_or_create(&label)
            .clone();
        let since_last_frame = metrics
            .register_once(
                "websocket_seconds_since_last_frame",
                "Seconds since the last text or binary frame (or since the source started)",
                Family::<SourceLabel, SecondsSince>::default,
            )
            .get_or_create(&label)
            .clone();
        SourceMetrics {
            connects: counter("websocket_connects", "Websocket connections made (handshake done)"),
            disconnects: counter("websocket_disconnects", "Websocket connections that ended, shutdown included"),
            frames: counter("websocket_frames_received", "Text and binary frames received"),
            bytes: counter("websocket_bytes_received", "Payload bytes of the text and binary frames received"),
            dead_letters: counter("websocket_dead_letters", "Frames sent to the dead-letter topic"),
            since_last_frame,
            connected,
            lost: counter("websocket_lost", "Frames lost: their writes failed, or they were abandoned at shutdown"),
            retries: counter(
                "websocket_handler_retries",
                "Frames handled (or dead-lettered) again after an error that was not the input's fault",
            ),
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(!parse_url("ws://127.0.0.1:9000/feed?x=1").unwrap());
        assert!(parse_url("wss://example.org").unwrap());
        assert!(parse_url("wss://[::1]:443/a").unwrap());
        for bad in ["http://x", "ws://", "mqtt://h:1", "ws//h", "wss:///path", ""] {
            assert!(matches!(parse_url(bad), Err(Error::Config(_))), "{bad}");
        }
        let app = App::builder("t").broker("memory://").build().unwrap();
        assert!(WebSocketSource::new(&app, "ws://h", "").is_err());
        assert!(WebSocketSource::new(&app, "tcp://h", "n").is_err());
    }

    #[test]
    fn the_backoff_grows_with_jitter_up_to_its_max_and_starts_over() {
        let (first, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let mut backoff = Backoff::new(first, max);
        let steps = [100, 200, 400, 800, 1000, 1000];
        for step in steps {
            let delay = backoff.next_delay();
            let step = Duration::from_millis(step);
            assert!(delay >= step / 2 && delay <= step, "{delay:?} for a step of {step:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= first);
        let delays: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| Backoff::new(first, max).next_delay()).collect();
        assert!(delays.len() > 1, "jitter: {delays:?}");
    }

    #[test]
    fn errors_the_input_is_not_to_blame_for_are_not_dead_lettered() {
        let not_json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        assert_eq!(classify(Box::new(not_json)).unwrap().0, dlq::Kind::Decode);
        assert_eq!(classify("nope".into()).unwrap().0, dlq::Kind::Handler);
        assert_eq!(classify(crate::Rejected::new("no").into()).unwrap(), (dlq::Kind::Rejected, "no".into()));
        assert!(classify(Box::new(Error::ShuttingDown)).is_err());
        let refused = Error::Send { topic: "t".into(), reason: "full".into() };
        assert!(classify(Box::new(refused)).is_err());
    }

    #[test]
    fn the_hard_limit_is_well_above_max_frame() {
        let app = App::builder("t").broker("memory://").build().unwrap();
        let source = WebSocketSource::new(&app, "ws://h", "n").unwrap();
        assert_eq!(source.hard_limit(), 16 * 1024 * 1024);
        assert_eq!(source.max_frame(4 << 20).hard_limit(), 64 << 20);
    }
}
