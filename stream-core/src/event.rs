//! Events: a decoded message with its key, headers, timestamp and origin.

use std::sync::Arc;

use bytes::Bytes;

use crate::record::Payload;
use crate::stream::StreamState;
use crate::tracking::PartitionTracker;
use crate::transport::{Headers, RawMessage};

/// A message handed to an agent, tied to the tracker that commits its offset.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) raw: RawMessage,
    pub(crate) tracker: Arc<PartitionTracker>,
    pub(crate) seq: u64,
}

/// Marks the event's delivery released when the event is dropped.
///
/// The delivery is boxed so that an event stays small: it is moved several
/// times on its way to the handler and back.
#[derive(Debug)]
pub(crate) struct AckGuard {
    pub(crate) delivery: Option<Box<Delivery>>,
    pub(crate) stream: Arc<StreamState>,
}

impl Drop for AckGuard {
    fn drop(&mut self) {
        if let Some(d) = self.delivery.take() {
            self.stream.release(d);
        }
    }
}

impl AckGuard {
    /// Confirms now: the event is done as soon as what was sent so far is
    /// acknowledged (used where Strom itself forwards an event).
    pub(crate) fn confirm_now(mut self) {
        if let Some(d) = self.delivery.take() {
            d.tracker.confirm(d.seq, self.stream.sends.issued());
        }
    }
}

#[derive(Debug)]
enum Source {
    Delivered(AckGuard),
    /// One delivery split into several events (`flat_map`): released when
    /// the last of them is dropped.
    Shared(Arc<AckGuard>),
    Detached {
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        headers: Headers,
    },
}

impl Source {
    /// A source for one more event of a split delivery.
    fn share(&self) -> Option<Source> {
        match self {
            Source::Delivered(_) => None,
            Source::Shared(guard) => Some(Source::Shared(guard.clone())),
            Source::Detached { topic, partition, offset, timestamp_ms, headers } => Some(Source::Detached {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
                timestamp_ms: *timestamp_ms,
                headers: headers.clone(),
            }),
        }
    }
}

/// An event: a message of a topic, decoded, with where it came from.
///
/// The event counts as handled when it is dropped and the agent asks its
/// stream for the next one; its offset is committed once everything sent while
/// it was handled is acknowledged. Keep it alive while working on it.
#[derive(Debug)]
pub struct Event<K, V> {
    key: Option<K>,
    value: V,
    source: Source,
}

impl<K, V> Event<K, V> {
    pub(crate) fn delivered(key: Option<K>, value: V, guard: AckGuard) -> Self {
        Event { key, value, source: Source::Delivered(guard) }
    }

    /// An event that was not read from a broker (for tests and tools).
    pub fn new(key: Option<K>, value: V) -> Self {
        Event {
            key,
            value,
            source: Source::Detached {
                topic: Arc::from(""),
                partition: 0,
                offset: -1,
                timestamp_ms: None,
                headers: Vec::new(),
            },
        }
    }

    fn raw(&self) -> Option<&RawMessage> {
        match &self.source {
            Source::Delivered(guard) => guard.delivery.as_deref().map(|d| &d.raw),
            Source::Shared(guard) => guard.delivery.as_deref().map(|d| &d.raw),
            Source::Detached { .. } => None,
        }
    }

    /// The key, if the message had one.
    pub fn key(&self) -> Option<&K> {
        self.key.as_ref()
    }

    /// The value.
    pub fn value(&self) -> &V {
        &self.value
    }

    /// The value, mutably.
    pub fn value_mut(&mut self) -> &mut V {
        &mut self.value
    }

    /// Takes the value out. The event counts as handled from here on, so call
    /// this only when nothing more is sent on its behalf.
    pub fn into_value(self) -> V {
        self.value
    }

    /// The topic it was read from.
    pub fn topic(&self) -> &str {
        match &self.source {
            Source::Detached { topic, .. } => topic,
            Source::Delivered(_) | Source::Shared(_) => self.raw().map_or("", |r| &r.topic),
        }
    }

    /// The partition it was read from.
    pub fn partition(&self) -> i32 {
        match &self.source {
            Source::Detached { partition, .. } => *partition,
            Source::Delivered(_) | Source::Shared(_) => self.raw().map_or(0, |r| r.partition),
        }
    }

    /// Its offset in the partition.
    pub fn offset(&self) -> i64 {
        match &self.source {
            Source::Detached { offset, .. } => *offset,
            Source::Delivered(_) | Source::Shared(_) => self.raw().map_or(-1, |r| r.offset),
        }
    }

    /// The broker timestamp, epoch milliseconds.
    pub fn timestamp_ms(&self) -> Option<i64> {
        match &self.source {
            Source::Detached { timestamp_ms, .. } => *timestamp_ms,
            Source::Delivered(_) | Source::Shared(_) => self.raw().and_then(|r| r.timestamp_ms),
        }
    }

    /// The headers.
    pub fn headers(&self) -> &[(String, Bytes)] {
        match &self.source {
            Source::Detached { headers, .. } => headers,
            Source::Delivered(_) | Source::Shared(_) => self.raw().map_or(&[], |r| r.headers.as_slice()),
        }
    }

    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().iter().find(|(n, _)| n == name).map(|(_, v)| v.as_ref())
    }

    /// The same event with another value (metadata and commit tracking kept).
    pub fn map<U>(self, f: impl FnOnce(V) -> U) -> Event<K, U> {
        Event { key: self.key, value: f(self.value), source: self.source }
    }

    /// The same event with another key.
    pub fn with_key<K2>(self, key: Option<K2>) -> Event<K2, V> {
        Event { key, value: self.value, source: self.source }
    }

    /// Marks a delivered event done now (internal forwarding).
    pub(crate) fn confirm_now(self) {
        match self.source {
            Source::Delivered(guard) => guard.confirm_now(),
            // The last event of a split delivery confirms it.
            Source::Shared(guard) => {
                if let Ok(guard) = Arc::try_unwrap(guard) {
                    guard.confirm_now();
                }
            }
            Source::Detached { .. } => {}
        }
    }

    /// Splits the event into one event per value, with its key and origin.
    /// The delivery is done when all of them are; with no values, at once.
    pub(crate) fn split<U>(self, values: impl IntoIterator<Item = U>) -> Vec<Event<K, U>>
    where
        K: Clone,
    {
        let source = match self.source {
            Source::Delivered(guard) => Source::Shared(Arc::new(guard)),
            other => other,
        };
        let mut out: Vec<Event<K, U>> = Vec::new();
        for value in values {
            if let Some(source) = source.share() {
                out.push(Event { key: self.key.clone(), value, source });
            }
        }
        out
    }

    /// Sets where a detached event claims to come from (for tests).
    pub fn with_origin(mut self, topic: &str, partition: i32, offset: i64) -> Self {
        if let Source::Detached { topic: t, partition: p, offset: o, .. } = &mut self.source {
            *t = Arc::from(topic);
            *p = partition;
            *o = offset;
        }
        self
    }
}

impl<K, V: Payload> Event<K, V> {
    /// The event time: the record's `#[record(timestamp)]` field, else the
    /// broker timestamp.
    pub fn event_time_ms(&self) -> Option<i64> {
        self.value.event_time_ms().or_else(|| self.timestamp_ms())
    }
}
