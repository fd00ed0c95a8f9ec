//! An MQTT source: subscribes to topic filters on an MQTT broker and hands each
//! message to a handler that sends what it makes of it to topics.
//!
//! Delivery is at-least-once, end to end:
//!
//! - The source subscribes with QoS 1 in a persistent session (a stable client
//!   id, clean session off), so the MQTT broker keeps what is published while
//!   the source is away and delivers it when it returns.
//! - A message is acknowledged to the MQTT broker only once everything its
//!   handler sent (the [`DeliveryReceipt`]s it returned) is acknowledged by the
//!   Kafka-side broker. A crash in between loses nothing: the MQTT broker
//!   delivers the message again (and it is written again).
//! - Many messages are in flight at once (the handler is called for the next
//!   one as soon as the previous one's sends are queued); acknowledgements go
//!   out in the order the messages arrived, as MQTT requires.
//! - Input the handler rejects (it returns an error) goes to a dead-letter
//!   topic, with the `strom.*` headers of [`crate::dlq`] (the MQTT topic as
//!   `strom.source.topic`, `-1` as partition and offset, the client id as
//!   `strom.agent`), keyed by the MQTT topic; so do payloads over
//!   [`max_payload`](MqttSource::max_payload). The message is acknowledged
//!   once its dead letter is. Errors that are not the input's fault (a send the
//!   broker refused, the worker shutting down: [`Error::Send`],
//!   [`Error::Transport`], [`Error::ShuttingDown`], [`Error::Topic`],
//!   [`Error::Io`]) end the run unacknowledged instead; the task is started again
//!   after a backoff and the MQTT broker redelivers.
//! - A lost connection is retried with a growing delay (0.1 s doubling to 5 s),
//!   and subscriptions are renewed on every connection.
//!
//! Metrics (label `source`, the client id): `strom_mqtt_messages_received_total`,
//! `strom_mqtt_dead_letters_total`, `strom_mqtt_reconnects_total`,
//! `strom_mqtt_in_flight` (received, not yet acknowledged) and
//! `strom_mqtt_connected` (1 while connected with the subscriptions in place).
//!
//! ```
//! use stream_core::connect::mqtt::{MqttMessage, MqttSource};
//! use stream_core::prelude::*;
//!
//! # fn main() -> Result<(), stream_core::Error> {
//! let app = App::builder("collection").broker("memory://").build()?;
//! let raw = app.topic::<String, serde_json::Value>("sensors.raw");
//! let rejected = app.topic::<String, bytes::Bytes>("sensors.raw.dlq");
//!
//! MqttSource::new(&app, "mqtt://127.0.0.1:1883", "collection-1")?
//!     .subscribe("sensors/+/temperature")
//!     .subscribe("/+/temp")
//!     .shared("collection")              // replicas in one group split the messages
//!     .dead_letters(&rejected)           // default: "mqtt.dlq"
//!     .task(&app, "mqtt", move |msg: MqttMessage| {
//!         let raw = raw.clone();
//!         async move {
//!             // A payload that is not JSON is an error: it is dead-lettered.
//!             let value: serde_json::Value = serde_json::from_slice(&msg.payload)?;
//!             let receipt = raw.send(&msg.topic, &value).await?;
//!             Ok(vec![receipt]) // acknowledged to MQTT once these resolve
//!         }
//!     });
//! # Ok(()) }
//! ```

/// The MQTT client the source is made of, for services that publish (a
/// simulator, say) and for tests.
pub use rumqttc;

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio::sync::mpsc;

use crate::app::{App, AppCore};
use crate::dlq;
use crate::error::{BoxError, Error, Result};
use crate::metrics::Metrics;
use crate::timer::Shutdown;
use crate::topic::{Topic, produce};
use crate::tracking::DeliveryReceipt;
use crate::transport::{RawMessage, TopicSpec};

/// The MQTT URL used when `MQTT_URL` is not set.
pub const DEFAULT_URL: &str = "mqtt://127.0.0.1:1883";
/// The dead-letter topic used unless [`MqttSource::dead_letters`] names one
/// (with the app's topic prefix).
pub const DEFAULT_DEAD_LETTERS: &str = "mqtt.dlq";

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often acknowledgements the client's request queue had no room for are tried again.
const ACK_RETRY: Duration = Duration::from_millis(5);
/// How long the end of a run waits for its acknowledgements and the disconnect to go out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// One MQTT message, as the handler gets it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MqttMessage {
    /// The MQTT topic it was published to.
    pub topic: String,
    /// The payload, as published.
    pub payload: Bytes,
    /// When the source received it, epoch milliseconds.
    pub received_ms: i64,
    /// Whether it is a retained message (sent on subscribing).
    pub retained: bool,
    /// Whether the broker marked it as a redelivery.
    pub redelivered: bool,
}

/// A reusable MQTT source; see the [module docs](self).
///
/// Built with [`new`](Self::new) or [`from_env`](Self::from_env) and the
/// builder methods; run by [`task`](Self::task) (as a task of the app's
/// worker) or by [`run`](Self::run) inside a task of your own. Cheap to clone.
#[derive(Clone)]
pub struct MqttSource {
    core: Arc<AppCore>,
    url: String,
    host: String,
    port: u16,
    client_id: String,
    filters: Vec<String>,
    share: Option<String>,
    dead_letters: Option<Arc<str>>,
    max_payload: usize,
    max_packet: usize,
    max_in_flight: usize,
    keep_alive: Duration,
    drain_timeout: Duration,
    metrics: SourceMetrics,
}

impl std::fmt::Debug for MqttSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSource")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("filters", &self.filters)
            .field("share", &self.share)
            .finish_non_exhaustive()
    }
}

impl MqttSource {
    /// A source connecting to `url` (`mqtt://host[:port]`, port 1883 by
    /// default) as `client_id`. The client id names the persistent session: a
    /// replica must keep its own from one run to the next, and no two
    /// replicas may share one.
    pub fn new(app: &App, url: &str, client_id: &str) -> Result<MqttSource> {
        let (host, port) = parse_url(url)?;
        if client_id.is_empty() {
            return Err(Error::Config("MQTT client id: must not be empty (it names the persistent session)".into()));
        }
        Ok(MqttSource {
            core: app.core.clone(),
            url: url.to_owned(),
            host,
            port,
            client_id: client_id.to_owned(),
            filters: Vec::new(),
            share: None,
            dead_letters: None,
            max_payload: 256 * 1024,
            max_packet: 16 * 1024 * 1024,
            max_in_flight: 1000,
            keep_alive: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(5),
            metrics: SourceMetrics::new(app.metrics(), client_id),
        })
    }

    /// A source connecting to `MQTT_URL` (default [`DEFAULT_URL`]).
    pub fn from_env(app: &App, client_id: &str) -> Result<MqttSource> {
        let url = std::env::var("MQTT_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        Self::new(app, &url, client_id)
    }

    /// Subscribes to a topic filter (`+` and `#` wildcards), with QoS 1.
    pub fn subscribe(mut self, filter: impl Into<String>) -> Self {
        self.filters.push(filter.into());
        self
    }

    /// Subscribes as a member of the shared subscription `group`
    /// (`$share/<group>/<filter>` for every filter): the broker hands each
    /// message to one member of the group, so replicas split the load.
    pub fn shared(mut self, group: impl Into<String>) -> Self {
        self.share = Some(group.into());
        self
    }

    /// Sends dead letters to `topic` (by default [`DEFAULT_DEAD_LETTERS`]).
    pub fn dead_letters<K, V>(mut self, topic: &Topic<K, V>) -> Self {
        self.dead_letters = Some(topic.name_arc().clone());
        self
    }

    /// Dead-letters payloads larger than `bytes` (default 256 KiB) without
    /// calling the handler; the dead letter keeps their first `bytes` bytes.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// The largest MQTT packet the connection reads (default 16 MiB); it
    /// must be above [`max_payload`](Self::max_payload). A larger packet cannot
    /// be read at all: the connection drops and the broker offers it again on
    /// every reconnect, so it is logged as an error. Limit message sizes at the
    /// broker below this (Mosquitto: `message_size_limit`).
    pub fn max_packet_size(mut self, bytes: usize) -> Self {
        self.max_packet = bytes;
        self
    }

    /// How many messages may wait for their writes at once (default 1000).
    /// The broker bounds this too: Mosquitto sends a client at most
    /// `max_inflight_messages` (default 20) unacknowledged QoS 1 messages.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// The MQTT keep-alive interval (default 30 s).
    pub fn keep_alive(mut self, every: Duration) -> Self {
        self.keep_alive = every;
        self
    }

    /// How long a stopping source waits for the writes of messages in flight
    /// before it disconnects (default 5 s); what is not written by then is
    /// left unacknowledged, for the broker to deliver again.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Runs the source as the app's task `name` ([`App::task`]): it starts
    /// with the worker, is started again after a failure, and stops with it.
    pub fn task<H, Fut>(self, app: &App, name: &str, handler: H)
    where
        H: Fn(MqttMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<DeliveryReceipt>, BoxError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        app.task(name, move |shutdown| {
            let (source, handler) = (self.clone(), handler.clone());
            async move { source.run(shutdown, move |msg| handler(msg)).await.map_err(BoxError::from) }
        });
    }

    /// Runs the source until `shutdown`: connects, subscribes, calls `handler`
    /// for each message, one at a time, in the order they arrive, and
    /// acknowledges each to the MQTT broker once the receipts `handler`
    /// returned have resolved. On shutdown it stops taking messages, waits
    /// (up to the [drain timeout](Self::drain_timeout)) for the writes in
    /// flight, acknowledges them and disconnects. Returns an error when a write
    /// failed or the handler failed for a reason other than its input (see the
    /// [module docs](self)).
    pub async fn run<H, Fut>(&self, mut shutdown: Shutdown, handler: H) -> Result<()>
    where
        H: Fn(MqttMessage) -> Fut,
        Fut: Future<Output = Result<Vec<DeliveryReceipt>, BoxError>>,
    {
        let filters = self.filters()?;
        let dead_letters = self.dead_letter_topic().await?;
        let mut options = MqttOptions::new(&self.client_id, &self.host, self.port);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(self.keep_alive)
            .set_max_packet_size(self.max_packet, self.max_packet);
        let (client, eventloop) = AsyncClient::new(options, self.max_in_flight + 16);
        let generation = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel(self.max_in_flight);
        let poller = Poller {
            client: client.clone(),
            filters,
            tx,
            generation: generation.clone(),
            metrics: self.metrics.clone(),
            source: self.client_id.clone(),
            max_packet: self.max_packet,
        };
        let mut poll_task = AbortOnDrop(tokio::spawn(poller.run(eventloop)));
        tracing::info!(source = %self.client_id, url = %self.url, filters = ?self.filters, share = ?self.share,
            "MQTT source starting");
        let mut session = Session {
            source: self,
            handling: Handling { source: self, dead_letters },
            client,
            generation,
            pending: FuturesOrdered::new(),
            acks: VecDeque::new(),
        };
        let outcome = session.pump(&mut shutdown, rx, &handler).await;
        session.finish(&mut poll_task).await;
        outcome
    }

    /// The filters to subscribe to, with the shared-subscription prefix.
    fn filters(&self) -> Result<Vec<String>> {
        if self.filters.is_empty() {
            return Err(Error::Config(format!("MQTT source {}: no topic filter to subscribe to", self.client_id)));
        }
        if let Some(group) = &self.share
            && (group.is_empty() || group.contains(['/', '+', '#']))
        {
            return Err(Error::Config(format!("MQTT shared subscription group {group:?}: no '/', '+' or '#'")));
        }
        self.filters
            .iter()
            .map(|f| {
                if f.is_empty() || !rumqttc::valid_filter(f) {
                    return Err(Error::Config(format!("MQTT topic filter {f:?} is not valid")));
                }
                Ok(match &self.share {
                    Some(group) => format!("$share/{group}/{f}"),
                    None => f.clone(),
                })
            })
            .collect()
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

/// A message the poller received, and on which connection.
struct Incoming {
    publish: Publish,
    generation: u64,
    received_ms: i64,
}

/// What a message in flight resolves to: it, its connection, and whether its writes succeeded.
type InFlight = BoxFuture<'static, (Publish, u64, Result<()>)>;

/// One run's processing side.
struct Session<'a> {
    source: &'a MqttSource,
    handling: Handling<'a>,
    client: AsyncClient,
    /// The current connection's number: acknowledgements are only valid on it.
    generation: Arc<AtomicU64>,
    /// Messages waiting for their writes, in arrival order.
    pending: FuturesOrdered<InFlight>,
    /// Acknowledgements the client's request queue had no room for yet, in order.
    acks: VecDeque<(Publish, u64)>,
}

impl Session<'_> {
    async fn pump<H, Fut>(
        &mut self,
        shutdown: &mut Shutdown,
        mut rx: mpsc::Receiver<Incoming>,
        handler: &H,
    ) -> Result<()>
    where
        H: Fn(MqttMessage) -> Fut,
        Fut: Future<Output = Result<Vec<DeliveryReceipt>, BoxError>>,
    {
        loop {
            tokio::select! {
                biased;
                () = shutdown.wait() => return Ok(()),
                Some((publish, generation, written)) = self.pending.next(), if !self.pending.is_empty() => {
                    written?;
                    self.ack(publish, generation);
                }
                () = tokio::time::sleep(ACK_RETRY), if !self.acks.is_empty() => self.flush_acks(),
                incoming = rx.recv(), if self.pending.len() < self.source.max_in_flight => {
                    let Some(Incoming { publish, generation, received_ms }) = incoming else {
                        return Err(Error::Transport { transport: "mqtt", reason: "the MQTT event loop ended".into() });
                    };
                    self.source.metrics.received.inc();
                    let written = tokio::select! {
                        biased;
                        // A message being handled at shutdown stays unacknowledged.
                        () = shutdown.wait() => return Ok(()),
                        written = self.handling.handle(&publish, received_ms, handler) => written?,
                    };
                    self.pending.push_back(Box::pin(async move { (publish, generation, written.await) }));
                }
            }
        }
    }
}

/// What handling a message needs (kept apart from the session's queues, which are not `Sync`).
struct Handling<'a> {
    source: &'a MqttSource,
    dead_letters: Arc<str>,
}

impl Handling<'_> {
    /// Calls the handler (or dead-letters), returning what resolves once the
    /// message's writes are acknowledged.
    async fn handle<H, Fut>(
        &self,
        publish: &Publish,
        received_ms: i64,
        handler: &H,
    ) -> Result<BoxFuture<'static, Result<()>>>
    where
        H: Fn(MqttMessage) -> Fut,
        Fut: Future<Output = Result<Vec<DeliveryReceipt>, BoxError>>,
    {
        let message = MqttMessage {
            topic: publish.topic.clone(),
            payload: publish.payload.clone(),
            received_ms,
            retained: publish.retain,
            redelivered: publish.dup,
        };
        let size = publish.payload.len();
        if size > self.source.max_payload {
            let max = self.source.max_payload;
            let reason = format!(
                "payload of {size} bytes is over the limit of {max} bytes; the dead letter keeps the first {max} bytes"
            );
            let kept = publish.payload.slice(..max);
            return self.dead_letter(&message, dlq::Kind::Validation, &reason, kept).await;
        }
        match handler(message.clone()).await {
            Ok(receipts) => Ok(Box::pin(async move {
                for receipt in receipts {
                    receipt.await?;
                }
                Ok(())
            })),
            Err(e) => {
                let (kind, reason) = classify(e)?;
                self.dead_letter(&message, kind, &reason, message.payload.clone()).await
            }
        }
    }

    async fn dead_letter(
        &self,
        message: &MqttMessage,
        kind: dlq::Kind,
        reason: &str,
        value: Bytes,
    ) -> Result<BoxFuture<'static, Result<()>>> {
        tracing::warn!(source = %self.source.client_id, mqtt_topic = %message.topic, kind = kind.as_str(), %reason,
            dead_letters = %self.dead_letters, "MQTT message dead-lettered");
        let raw = RawMessage {
            topic: Arc::from(message.topic.as_str()),
            partition: -1,
            offset: -1,
            key: Some(Bytes::copy_from_slice(message.topic.as_bytes())),
            value: Some(value),
            headers: Vec::new(),
            timestamp_ms: Some(message.received_ms),
        };
        let mut letter = dlq::letter(&raw, kind, reason, &self.source.client_id);
        letter.topic = self.dead_letters.clone();
        letter.partition = None;
        let receipt = produce(&self.source.core, letter).await?;
        self.source.metrics.dead_letters.inc();
        Ok(Box::pin(receipt.into_future()))
    }
}

impl Session<'_> {
    /// The message's writes are acknowledged: acknowledge it to the MQTT broker.
    fn ack(&mut self, publish: Publish, generation: u64) {
        self.source.metrics.in_flight.dec();
        self.acks.push_back((publish, generation));
        self.flush_acks();
    }

    /// Hands the waiting acknowledgements to the client, in order, as far as
    /// its request queue has room (never waiting: the event loop may be
    /// waiting for us to take the next message).
    fn flush_acks(&mut self) {
        while let Some((publish, generation)) = self.acks.front() {
            // A packet id of a connection that has since been lost means nothing on
            // the new one, and the broker delivers the message again anyway.
            if *generation == self.generation.load(Ordering::Acquire) && self.client.try_ack(publish).is_err() {
                return;
            }
            self.acks.pop_front();
        }
    }

    /// Ends a run: waits (bounded) for the writes in flight and acknowledges
    /// them, then disconnects, keeping the session.
    async fn finish(mut self, poll_task: &mut AbortOnDrop) {
        let drain = tokio::time::timeout(self.source.drain_timeout, async {
            while let Some((publish, generation, written)) = self.pending.next().await {
                if let Err(e) = written {
                    // Nothing after it may be acknowledged before it.
                    tracing::warn!(source = %self.source.client_id, error = %e,
                        "a write failed; it and what followed it stay unacknowledged");
                    return;
                }
                self.ack(publish, generation);
            }
        })
        .await;
        if drain.is_err() {
            tracing::warn!(source = %self.source.client_id, messages = self.pending.len(),
                timeout_ms = self.source.drain_timeout.as_millis() as u64,
                "writes still unacknowledged at shutdown; the MQTT broker will deliver those messages again");
        }
        let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
        self.flush_acks();
        while !self.acks.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(ACK_RETRY).await;
            self.flush_acks();
        }
        // The disconnect goes out after the acknowledgements queued before it.
        let disconnected = tokio::time::timeout_at(deadline, async {
            if self.client.disconnect().await.is_ok() {
                let _ = (&mut poll_task.0).await;
            }
        })
        .await;
        if disconnected.is_err() {
            tracing::warn!(source = %self.source.client_id, "MQTT disconnect did not complete in time");
        }
        self.source.metrics.in_flight.set(0);
        self.source.metrics.connected.set(0);
        tracing::info!(source = %self.source.client_id, "MQTT source stopped");
    }
}

/// Whether a handler's error is the input's fault (dead-letter it, with this
/// kind and reason) or not (end the run, leaving the message unacknowledged).
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
            } else {
                dlq::Kind::Handler
            };
            Ok((kind, e.to_string()))
        }
    }
}

/// Polls the MQTT event loop (which must never be cancelled mid-poll, so it
/// has a task of its own) and forwards messages to the session.
struct Poller {
    client: AsyncClient,
    filters: Vec<String>,
    tx: mpsc::Sender<Incoming>,
    generation: Arc<AtomicU64>,
    metrics: SourceMetrics,
    source: String,
    max_packet: usize,
}

impl Poller {
    async fn run(self, mut eventloop: EventLoop) {
        let mut backoff = MIN_BACKOFF;
        // Set once the session stopped taking messages: later ones stay unacknowledged.
        let mut discarding = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    backoff = MIN_BACKOFF;
                    tracing::info!(source = %self.source, session_present = ack.session_present, "connected to the MQTT broker");
                    // Renewed on every connection: a broker that lost the session lost them too.
                    let filters =
                        self.filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                    if let Err(e) = self.client.try_subscribe_many(filters) {
                        tracing::error!(source = %self.source, error = %e, "cannot subscribe");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                        tracing::error!(source = %self.source, filters = ?self.filters, codes = ?ack.return_codes,
                            "the MQTT broker refused a subscription");
                    } else {
                        tracing::info!(source = %self.source, filters = ?self.filters, "subscribed");
                        self.metrics.connected.set(1);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if discarding {
                        continue;
                    }
                    let incoming = Incoming {
                        publish,
                        generation: self.generation.load(Ordering::Acquire),
                        received_ms: now_ms(),
                    };
                    self.metrics.in_flight.inc();
                    if self.tx.send(incoming).await.is_err() {
                        self.metrics.in_flight.dec();
                        discarding = true;
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    self.metrics.connected.set(0);
                    self.metrics.reconnects.inc();
                    let retry_in_ms = backoff.as_millis() as u64;
                    if let ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                        rumqttc::Error::PayloadSizeLimitExceeded(size),
                    )) = e
                    {
                        tracing::error!(source = %self.source, size, limit = self.max_packet, retry_in_ms,
                            "refused an MQTT packet over max_packet_size; the connection dropped and the broker \
                             will offer it again on every reconnect: limit message sizes at the broker \
                             (Mosquitto: message_size_limit) or raise max_packet_size");
                    } else {
                        tracing::warn!(source = %self.source, error = %e, retry_in_ms, "MQTT connection lost; reconnecting");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Aborts the task when dropped, so an abandoned run closes its connection.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

/// One source's metrics, in families shared by the app's sources.
#[derive(Clone)]
struct SourceMetrics {
    received: Counter,
    dead_letters: Counter,
    reconnects: Counter,
    in_flight: Gauge,
    connected: Gauge,
}

impl SourceMetrics {
    fn new(metrics: &Metrics, source: &str) -> Self {
        let label = SourceLabel { source: source.to_owned() };
        let counter = |name: &str, help: &str| {
            metrics.register_once(name, help, Family::<SourceLabel, Counter>::default).get_or_create(&label).clone()
        };
        let gauge = |name: &str, help: &str| {
            metrics.register_once(name, help, Family::<SourceLabel, Gauge>::default).get_or_create(&label).clone()
        };
        SourceMetrics {
            received: counter("mqtt_messages_received", "MQTT messages received"),
            dead_letters: counter("mqtt_dead_letters", "MQTT messages sent to the dead-letter topic"),
            reconnects: counter("mqtt_reconnects", "MQTT connections lost or refused, each followed by a new attempt"),
            in_flight: gauge("mqtt_in_flight", "MQTT messages received and not yet acknowledged"),
            connected: gauge("mqtt_connected", "1 while connected to the MQTT broker with the subscriptions in place"),
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The options of an MQTT client (a publisher: a simulator, a test) for
/// `url` (`mqtt://host[:port]`, as [`MqttSource::new`] takes it) and
/// `client_id`, with rumqttc's defaults otherwise.
///
/// ```
/// let options = stream_core::connect::mqtt::client_options("mqtt://127.0.0.1:1883", "simulator")?;
/// assert_eq!(options.broker_address(), ("127.0.0.1".to_owned(), 1883));
/// # Ok::<(), stream_core::Error>(())
/// ```
pub fn client_options(url: &str, client_id: &str) -> Result<MqttOptions> {
    let (host, port) = parse_url(url)?;
    Ok(MqttOptions::new(client_id, host, port))
}

/// `mqtt://host[:port]` (or `tcp://`) into host and port.
fn parse_url(url: &str) -> Result<(String, u16)> {
    let bad = |why: &str| Error::Config(format!("MQTT URL {url:?}: {why} (expected mqtt://host[:port])"));
    let rest =
        url.strip_prefix("mqtt://").or_else(|| url.strip_prefix("tcp://")).ok_or_else(|| bad("unknown scheme"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '@', '?']) {
        return Err(bad("no path, credentials or query"));
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            (host, after.strip_prefix(':'))
        }
        None => match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        None => 1883,
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("mqtt://127.0.0.1:1883").unwrap(), ("127.0.0.1".into(), 1883));
        assert_eq!(parse_url("mqtt://mosquitto").unwrap(), ("mosquitto".into(), 1883));
        assert_eq!(parse_url("tcp://broker:1884/").unwrap(), ("broker".into(), 1884));
        assert_eq!(parse_url("mqtt://[::1]:1885").unwrap(), ("::1".into(), 1885));
        for bad in ["http://x", "mqtt://", "mqtt://h:port", "mqtt://u:p@h", "mqtt://h/path"] {
            assert!(matches!(parse_url(bad), Err(Error::Config(_))), "{bad}");
        }
    }

    #[test]
    fn filters_are_checked_and_shared() {
        let app = App::builder("t").broker("memory://").build().unwrap();
        let source = MqttSource::new(&app, DEFAULT_URL, "c").unwrap();
        assert!(source.filters().is_err(), "no filter");
        let source = source.subscribe("a/+/b").subscribe("/+/temp");
        assert_eq!(source.filters().unwrap(), ["a/+/b", "/+/temp"]);
        assert_eq!(source.clone().shared("g").filters().unwrap(), ["$share/g/a/+/b", "$share/g//+/temp"]);
        assert!(source.clone().shared("g/h").filters().is_err());
        assert!(source.subscribe("a/#/b").filters().is_err());
        assert!(MqttSource::new(&app, DEFAULT_URL, "").is_err());
    }

    #[test]
    fn errors_the_input_is_not_to_blame_for_are_not_dead_lettered() {
        let not_json = serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err();
        assert_eq!(classify(Box::new(not_json)).unwrap().0, dlq::Kind::Decode);
        assert_eq!(classify("nope".into()).unwrap().0, dlq::Kind::Handler);
        assert!(classify(Box::new(Error::ShuttingDown)).is_err());
        let refused = Error::Send { topic: "t".into(), reason: "full".into() };
        assert!(classify(Box::new(refused)).is_err());
    }
}
