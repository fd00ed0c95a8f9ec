//! Event streams: what an agent's handler consumes, and its operators.
//!
//! An [`EventStream`] yields [`Event`]s of one agent instance, in order per
//! partition. It is a [`futures::Stream`], so `StreamExt::next` drives it; its
//! own operators keep Strom's commit tracking intact:
//!
//! - [`filter`](EventStream::filter), [`map`](EventStream::map) keep each event's
//!   origin, so an event is done only when the handler is done with what it became;
//! - [`take`](EventStream::take) batches by count or time, whichever comes first;
//! - [`through`](EventStream::through) and [`group_by`](EventStream::group_by)
//!   pass events through another topic (re-keyed, for `group_by`), so the rest of
//!   the handler sees them partitioned by their new key;
//! - [`sink`](EventStream::sink) forwards everything to a topic;
//! - `enumerate`, and everything else of `StreamExt`, works as usual.
//!
//! An event is done when it was dropped *and* the handler then asked for the
//! next one: a handler that fails on an event drops it while returning its
//! error, and it must not count as done. Events in a `take` batch are done
//! together, when the handler asks for the next batch.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::agent::InstanceCtx;
use crate::dlq;
use crate::error::{BoxError, Error, Result};
use crate::event::{AckGuard, Delivery, Event};
use crate::record::Payload;
use crate::topic::Topic;
use crate::tracking::{SendTracker, lock};
use crate::transport::TrySendError;

/// The deliveries of one topic for one agent instance.
#[derive(Debug)]
pub(crate) struct Inbox {
    rx: mpsc::Receiver<Vec<Delivery>>,
    /// Deliveries handed back (replays after a failure, a dead letter not
    /// sent yet): older than the batch, so they come first.
    front: VecDeque<Delivery>,
    /// The rest of the batch being read (read in place, not copied).
    batch: std::vec::IntoIter<Delivery>,
}

impl Inbox {
    pub(crate) fn new(rx: mpsc::Receiver<Vec<Delivery>>) -> Self {
        Inbox { rx, front: VecDeque::new(), batch: Vec::new().into_iter() }
    }

    /// No sender is left and nothing is buffered.
    pub(crate) fn is_closed(&self) -> bool {
        self.front.is_empty() && self.batch.len() == 0 && self.rx.is_closed() && self.rx.is_empty()
    }

    fn pop(&mut self) -> Option<Delivery> {
        self.front.pop_front().or_else(|| self.batch.next())
    }

    fn push_front(&mut self, d: Delivery) {
        self.front.push_front(d);
    }
}

/// Deliveries released by one stream, waiting for the handler to move on.
#[derive(Debug)]
pub(crate) struct StreamState {
    released: Mutex<Vec<(Box<Delivery>, u64)>>,
    pub(crate) sends: Arc<SendTracker>,
    ended: std::sync::atomic::AtomicBool,
    stats: Arc<crate::agent::AgentStats>,
    /// When the batch being read arrived ([`clock_ns`]), for the latency metric.
    arrived_ns: std::sync::atomic::AtomicU64,
}

/// Nanoseconds on a process-wide monotonic clock.
fn clock_ns() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
}

impl StreamState {
    /// An event was dropped: remember how many sends were issued by then.
    pub(crate) fn release(&self, d: Box<Delivery>) {
        let issued = self.sends.issued();
        lock(&self.released).push((d, issued));
    }

    /// The handler moved on: everything released is done (once acknowledged).
    pub(crate) fn confirm_released(&self) {
        let mut released = lock(&self.released);
        if released.is_empty() {
            return;
        }
        let n = released.len() as u64;
        self.stats.processed.fetch_add(n, Ordering::Relaxed);
        let waited = clock_ns().saturating_sub(self.arrived_ns.load(Ordering::Relaxed));
        self.stats.latency.observe_ns(waited, n);
        for (d, issued) in released.drain(..) {
            d.tracker.confirm(d.seq, issued);
        }
    }

    /// The handler failed: these are the events it had not finished.
    pub(crate) fn take_released(&self) -> Vec<Delivery> {
        lock(&self.released).drain(..).map(|(d, _)| *d).collect()
    }

    pub(crate) fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

/// The stream of one topic's deliveries for an instance, decoded.
struct BaseStream<K, V> {
    topic: Topic<K, V>,
    ctx: InstanceCtx,
    state: Arc<StreamState>,
    inbox: Option<Inbox>,
    /// A dead letter waiting for producer room, and the wait.
    pending: Option<(Delivery, Error, Pin<Box<tokio::time::Sleep>>)>,
}

impl<K: Payload, V: Payload> BaseStream<K, V> {
    fn open(topic: Topic<K, V>, ctx: InstanceCtx) -> Self {
        let instance = ctx.state();
        let mut inbox = lock(&instance.inboxes).remove(topic.name_arc());
        if let (Some(inbox), Some(replay)) = (inbox.as_mut(), lock(&instance.replay).remove(topic.name_arc())) {
            for d in replay.into_iter().rev() {
                inbox.push_front(d);
            }
        }
        let state = Arc::new(StreamState {
            released: Mutex::default(),
            sends: topic.core.sends.clone(),
            ended: Default::default(),
            stats: ctx.agent.stats.clone(),
            arrived_ns: std::sync::atomic::AtomicU64::new(clock_ns()),
        });
        lock(&instance.streams).push(state.clone());
        if inbox.is_none() {
            ctx.fail(format!("topic {} is already being consumed by this agent instance", topic.name()).into());
        }
        BaseStream { topic, ctx, state, inbox, pending: None }
    }

    /// Sends a message that cannot be decoded to the dead-letter topic.
    /// `Ok(false)` means the producer is full: try again later.
    fn try_dead_letter(&self, d: &Delivery, error: &Error) -> std::result::Result<bool, Error> {
        let kind = dlq::Kind::of(error);
        let letter = dlq::letter(&d.raw, kind, &error.to_string(), &self.ctx.agent.name);
        let core = &self.topic.core;
        let seq = core.sends.issue();
        match core.producer.try_send(letter, seq) {
            Ok(()) => {
                self.ctx.agent.dead_lettered(d, kind, error);
                d.tracker.confirm(d.seq, core.sends.issued());
                Ok(true)
            }
            Err(TrySendError::QueueFull(_)) => {
                core.sends.ack(seq);
                Ok(false)
            }
            Err(TrySendError::Fatal(e)) => {
                core.sends.ack(seq);
                Err(e)
            }
        }
    }
}

impl<K: Payload, V: Payload> Stream for BaseStream<K, V> {
    type Item = Event<K, V>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.state.confirm_released();
        if this.ctx.state().failed.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        loop {
            if let Some((d, error, mut wait)) = this.pending.take() {
                if wait.as_mut().poll(cx).is_pending() {
                    this.pending = Some((d, error, wait));
                    return Poll::Pending;
                }
                match this.try_dead_letter(&d, &error) {
                    Ok(true) => {}
                    Ok(false) => {
                        let wait = Box::pin(tokio::time::sleep(Duration::from_millis(1)));
                        this.pending = Some((d, error, wait));
                        continue;
                    }
                    Err(e) => {
                        this.ctx.fail(format!("cannot dead-letter {}: {e}", Origin(&d)).into());
                        return Poll::Ready(None);
                    }
                }
            }
            let Some(inbox) = this.inbox.as_mut() else { return Poll::Ready(None) };
            let Some(d) = inbox.pop() else {
                match inbox.rx.poll_recv(cx) {
                    Poll::Ready(Some(batch)) => {
                        this.state.arrived_ns.store(clock_ns(), Ordering::Relaxed);
                        inbox.batch = batch.into_iter();
                        continue;
                    }
                    Poll::Ready(None) => {
                        this.state.ended.store(true, Ordering::Release);
                        return Poll::Ready(None);
                    }
                    Poll::Pending => return Poll::Pending,
                }
            };
            this.ctx.agent.stats.received.fetch_add(1, Ordering::Relaxed);
            match this.topic.decode(&d.raw) {
                Ok((key, value)) => {
                    let guard = AckGuard { delivery: Some(Box::new(d)), stream: this.state.clone() };
                    return Poll::Ready(Some(Event::delivered(key, value, guard)));
                }
                Err(error) => {
                    let wait = Box::pin(tokio::time::sleep(Duration::ZERO));
                    this.pending = Some((d, error, wait));
                }
            }
        }
    }
}

impl<K, V> Drop for BaseStream<K, V> {
    fn drop(&mut self) {
        let instance = self.ctx.state();
        if let Some((d, _, _)) = self.pending.take() {
            // Not dead-lettered yet: hand it over again next time.
            if let Some(inbox) = self.inbox.as_mut() {
                inbox.push_front(d);
            }
        }
        if let Some(inbox) = self.inbox.take() {
            lock(&instance.inboxes).insert(self.topic.name_arc().clone(), inbox);
        }
    }
}

struct Origin<'a>(&'a Delivery);

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]@{}", self.0.raw.topic, self.0.raw.partition, self.0.raw.offset)
    }
}

/// The stream of events an agent's handler consumes. See the [module docs](self).
pub struct EventStream<K, V> {
    inner: Pin<Box<dyn Stream<Item = Event<K, V>> + Send>>,
    ctx: InstanceCtx,
}

impl<K, V> std::fmt::Debug for EventStream<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").field("agent", &self.ctx.agent.name).field("instance", &self.ctx.index).finish()
    }
}

impl<K, V> Stream for EventStream<K, V> {
    type Item = Event<K, V>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl<K: Payload, V: Payload> EventStream<K, V> {
    pub(crate) fn open(topic: Topic<K, V>, ctx: InstanceCtx) -> Self {
        EventStream { inner: Box::pin(BaseStream::open(topic, ctx.clone())), ctx }
    }

    /// Passes every event through `topic` and continues with the events read
    /// back from it (repartitioned by their key there).
    pub fn through(self, topic: &Topic<K, V>) -> EventStream<K, V> {
        let out = topic.clone();
        self.forward_into(topic, move |event: &Event<K, V>| match event.key() {
            Some(key) => out.encode_key(key).map(Some),
            None => Ok(None),
        })
    }

    /// Re-keys every event by `key` through the repartition topic `topic`, and
    /// continues with the events read back from it: all events with the same
    /// new key then reach the same partition, instance and table partition.
    ///
    /// ```
    /// # use stream_core::prelude::*;
    /// # let app = App::builder("doc").broker("memory://").build()?;
    /// let lines = app.topic::<(), String>("lines");
    /// let by_word = app.topic::<String, String>("lines-by-word").partitions(4);
    /// app.agent("count", &lines, move |lines| {
    ///     let by_word = by_word.clone();
    ///     async move {
    ///         let mut words = lines.group_by(|line| line.value().clone(), &by_word);
    ///         while let Some(word) = words.next().await {
    ///             // every event of one word arrives here, in order
    ///             let _ = word.key();
    ///         }
    ///         Ok(())
    ///     }
    /// });
    /// # Ok::<(), stream_core::Error>(())
    /// ```
    pub fn group_by<K2: Payload>(
        self,
        key: impl Fn(&Event<K, V>) -> K2 + Send + Sync + 'static,
        topic: &Topic<K2, V>,
    ) -> EventStream<K2, V> {
        let out = topic.clone();
        self.forward_into(topic, move |event: &Event<K, V>| out.encode_key(&key(event)).map(Some))
    }

    fn forward_into<K2: Payload>(
        self,
        topic: &Topic<K2, V>,
        key: impl Fn(&Event<K, V>) -> Result<Option<bytes::Bytes>> + Send + Sync + 'static,
    ) -> EventStream<K2, V> {
        let ctx = self.ctx.clone();
        topic.mark_consumed();
        ctx.ensure_stage(topic.name_arc());
        let out = topic.clone();
        let forward_ctx = ctx.clone();
        let mut source = self;
        let forwarder = tokio::spawn(async move {
            while let Some(event) = source.next().await {
                let sent = async {
                    let key = key(&event)?;
                    let value = out.encode_value(event.value())?;
                    let headers = event.headers().to_vec();
                    out.send_bytes(key, Some(value), headers, None, event.timestamp_ms()).await
                }
                .await;
                match sent {
                    Ok(_) => event.confirm_now(),
                    Err(e) => {
                        // The event is released unconfirmed, so the handler's
                        // restart hands it over again.
                        forward_ctx.fail(Box::new(e));
                        return;
                    }
                }
            }
        });
        let stage = BaseStream::open(topic.clone(), ctx.clone());
        EventStream { inner: Box::pin(Staged { stage, _forwarder: AbortOnDrop(forwarder) }), ctx }
    }

    /// Forwards every event to `topic`, keeping keys, until the stream ends.
    pub async fn sink(mut self, topic: &Topic<K, V>) -> Result<(), BoxError> {
        while let Some(event) = self.next().await {
            let key = event.key().map(|k| topic.encode_key(k)).transpose()?;
            let value = topic.encode_value(event.value())?;
            topic.send_bytes(key, Some(value), event.headers().to_vec(), None, event.timestamp_ms()).await?;
        }
        Ok(())
    }
}

impl<K: Send + 'static, V: Send + 'static> EventStream<K, V> {
    /// Keeps the events for which `keep` is true; the others are done at once.
    pub fn filter(self, mut keep: impl FnMut(&Event<K, V>) -> bool + Send + 'static) -> EventStream<K, V> {
        let ctx = self.ctx.clone();
        let inner = self.filter_map(move |e| futures::future::ready(if keep(&e) { Some(e) } else { None }));
        EventStream { inner: Box::pin(inner), ctx }
    }

    /// Transforms each event's value, keeping its key and origin.
    pub fn map<U: Send + 'static>(self, mut f: impl FnMut(V) -> U + Send + 'static) -> EventStream<K, U> {
        let ctx = self.ctx.clone();
        let inner = StreamExt::map(self, move |e: Event<K, V>| e.map(&mut f));
        EventStream { inner: Box::pin(inner), ctx }
    }

    /// Turns each event into any number of events (one per value `f`
    /// returns), with the original's key and origin. The original is done
    /// when all of them are.
    ///
    /// ```
    /// # use stream_core::prelude::*;
    /// # let app = App::builder("doc").broker("memory://").build()?;
    /// let lines = app.topic::<(), String>("lines");
    /// app.agent("words", &lines, |lines| async move {
    ///     let mut words = lines.flat_map(|line| {
    ///         line.value().split_whitespace().map(str::to_owned).collect::<Vec<_>>()
    ///     });
    ///     while let Some(word) = words.next().await {
    ///         let _ = word.value();
    ///     }
    ///     Ok(())
    /// });
    /// # Ok::<(), stream_core::Error>(())
    /// ```
    pub fn flat_map<U, I>(self, mut f: impl FnMut(&Event<K, V>) -> I + Send + 'static) -> EventStream<K, U>
    where
        K: Clone,
        U: Send + 'static,
        I: IntoIterator<Item = U>,
    {
        let ctx = self.ctx.clone();
        let inner = StreamExt::flat_map(self, move |e: Event<K, V>| {
            let values = f(&e);
            futures::stream::iter(e.split(values))
        });
        EventStream { inner: Box::pin(inner), ctx }
    }

    /// Batches events: up to `n`, or what arrived within `within` of the
    /// batch's first event, whichever comes first. The stream's last batch
    /// may be shorter.
    pub fn take(self, n: usize, within: Duration) -> Batches<K, V> {
        Batches { inner: self, n: n.max(1), within: Some(within), buffer: Vec::new(), deadline: None, done: false }
    }

    /// Batches events without waiting for more: each batch is what has
    /// arrived by the time it is asked for, up to `n`, and at least one
    /// event. A sink that writes a batch at a time (a database, a file)
    /// gets one event at a time when the stream is slow, so nothing waits
    /// for a batch to fill, and larger batches as events arrive while it
    /// writes, so it keeps up under load.
    pub fn take_ready(self, n: usize) -> Batches<K, V> {
        Batches { inner: self, n: n.max(1), within: None, buffer: Vec::new(), deadline: None, done: false }
    }
}

/// A stage: events read back from a `through`/`group_by` topic, while the
/// forwarder feeds it.
struct Staged<K, V> {
    stage: BaseStream<K, V>,
    _forwarder: AbortOnDrop,
}

impl<K: Payload, V: Payload> Stream for Staged<K, V> {
    type Item = Event<K, V>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.stage).poll_next(cx)
    }
}

impl<K, V> Unpin for Staged<K, V> {}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Batches of events; see [`EventStream::take`] and [`EventStream::take_ready`].
pub struct Batches<K, V> {
    inner: EventStream<K, V>,
    n: usize,
    /// How long a batch waits for more after its first event; `None`: not at all.
    within: Option<Duration>,
    buffer: Vec<Event<K, V>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl<K, V> Unpin for Batches<K, V> {}

impl<K, V> std::fmt::Debug for Batches<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches").field("n", &self.n).field("within", &self.within).finish_non_exhaustive()
    }
}

impl<K, V> Stream for Batches<K, V> {
    type Item = Vec<Event<K, V>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            if this.buffer.len() >= this.n {
                this.deadline = None;
                return Poll::Ready(Some(std::mem::take(&mut this.buffer)));
            }
            match this.inner.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(event)) => {
                    if this.buffer.is_empty()
                        && let Some(within) = this.within
                    {
                        this.deadline = Some(Box::pin(tokio::time::sleep(within)));
                    }
                    this.buffer.push(event);
                }
                Poll::Ready(None) => {
                    this.done = true;
                    this.deadline = None;
                    if this.buffer.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(std::mem::take(&mut this.buffer)));
                }
                Poll::Pending => {
                    if this.within.is_none() && !this.buffer.is_empty() {
                        return Poll::Ready(Some(std::mem::take(&mut this.buffer)));
                    }
                    if let Some(deadline) = this.deadline.as_mut()
                        && deadline.as_mut().poll(cx).is_ready()
                    {
                        this.deadline = None;
                        return Poll::Ready(Some(std::mem::take(&mut this.buffer)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
