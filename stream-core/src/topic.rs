//! Typed topics: a name, a key codec and a value codec, and the settings the
//! topic is created with.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::app::AppCore;
use crate::codec::Codec;
use crate::error::{Error, Origin, Result};
use crate::record::{Payload, Record};
use crate::tracking::{DeliveryReceipt, lock};
use crate::transport::{Headers, OutMessage, RawMessage, TopicSpec, TrySendError};

/// Checks that bytes decode (and validate) as a topic's value type.
pub(crate) type ValueCheck = Arc<dyn Fn(&[u8]) -> std::result::Result<(), String> + Send + Sync>;

/// What the app knows of a declared topic, whatever its types.
#[derive(Clone)]
pub(crate) struct TopicInfo {
    pub(crate) spec: TopicSpec,
    pub(crate) key_codec: &'static str,
    pub(crate) value_codec: &'static str,
    pub(crate) value_type: &'static str,
    /// Consumed by an agent stage (`through`/`group_by`), so it gets a dead-letter topic.
    pub(crate) consumed: bool,
    pub(crate) check: ValueCheck,
}

/// A topic with keys of type `K` and values of type `V`.
///
/// Made by [`App::topic`](crate::App::topic); cheap to clone. The settings
/// methods (`partitions`, `retention`, ...) apply to how the topic is created
/// when the worker starts.
///
/// ```
/// # use std::time::Duration;
/// let app = stream_core::App::builder("doc").broker("memory://").build()?;
/// let words = app
///     .topic::<String, u64>("word-counts")
///     .partitions(4)
///     .compacted();
/// assert_eq!(words.partition_count(), 4);
/// # Ok::<(), stream_core::Error>(())
/// ```
pub struct Topic<K, V> {
    name: Arc<str>,
    key_codec: Arc<dyn Codec<K>>,
    value_codec: Arc<dyn Codec<V>>,
    pub(crate) core: Arc<AppCore>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Topic<K, V> {
    fn clone(&self) -> Self {
        Topic {
            name: self.name.clone(),
            key_codec: self.key_codec.clone(),
            value_codec: self.value_codec.clone(),
            core: self.core.clone(),
            _types: PhantomData,
        }
    }
}

impl<K, V> std::fmt::Debug for Topic<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic").field("name", &self.name).finish_non_exhaustive()
    }
}

fn value_check<V: Payload>(codec: Arc<dyn Codec<V>>) -> ValueCheck {
    Arc::new(move |bytes: &[u8]| {
        let value = codec.decode(bytes).map_err(|e| e.to_string())?;
        value.validate().map_err(|e| e.to_string())
    })
}

impl<K, V> Topic<K, V> {
    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn name_arc(&self) -> &Arc<str> {
        &self.name
    }
}

impl<K: Payload, V: Payload> Topic<K, V> {
    pub(crate) fn declare(core: Arc<AppCore>, name: &str) -> Self {
        let key_codec: Arc<dyn Codec<K>> = Arc::new(K::Codec::default());
        let value_codec: Arc<dyn Codec<V>> = Arc::new(V::Codec::default());
        {
            let mut topics = lock(&core.topics);
            topics.entry(name.to_owned()).or_insert_with(|| TopicInfo {
                spec: TopicSpec {
                    name: name.to_owned(),
                    partitions: core.config.default_partitions,
                    replication: core.config.replication,
                    config: BTreeMap::new(),
                },
                key_codec: key_codec.name(),
                value_codec: value_codec.name(),
                value_type: std::any::type_name::<V>(),
                consumed: false,
                check: value_check(value_codec.clone()),
            });
        }
        Topic { name: Arc::from(name), key_codec, value_codec, core, _types: PhantomData }
    }

    fn update(self, f: impl FnOnce(&mut TopicInfo)) -> Self {
        if let Some(info) = lock(&self.core.topics).get_mut(&*self.name) {
            f(info);
        }
        self
    }

    /// The partition count it is created with.
    pub fn partition_count(&self) -> i32 {
        lock(&self.core.topics).get(&*self.name).map_or(self.core.config.default_partitions, |t| t.spec.partitions)
    }

    /// Creates the topic with `n` partitions.
    pub fn partitions(self, n: i32) -> Self {
        self.update(|t| t.spec.partitions = n)
    }

    /// Sets the replication factor (Kafka).
    pub fn replication(self, factor: i16) -> Self {
        self.update(|t| t.spec.replication = factor)
    }

    /// Deletes messages older than `keep` (`retention.ms`).
    pub fn retention(self, keep: Duration) -> Self {
        self.config("retention.ms", keep.as_millis().to_string())
    }

    /// Keeps only the latest value of each key (`cleanup.policy=compact`), as
    /// for changelogs.
    pub fn compacted(self) -> Self {
        self.config("cleanup.policy", "compact")
    }

    /// Sets any topic config by its Kafka name.
    pub fn config(self, name: &str, value: impl Into<String>) -> Self {
        let value = value.into();
        self.update(|t| {
            t.spec.config.insert(name.to_owned(), value);
        })
    }

    /// Uses another codec for keys.
    pub fn with_key_codec(mut self, codec: impl Codec<K>) -> Self {
        let name = codec.name();
        self.key_codec = Arc::new(codec);
        self.update(|t| t.key_codec = name)
    }

    /// Uses another codec for values.
    pub fn with_value_codec(mut self, codec: impl Codec<V>) -> Self {
        let name = codec.name();
        self.value_codec = Arc::new(codec);
        let check = value_check(self.value_codec.clone());
        self.update(|t| {
            t.value_codec = name;
            t.check = check;
        })
    }

    pub(crate) fn mark_consumed(&self) {
        if let Some(info) = lock(&self.core.topics).get_mut(&*self.name) {
            info.consumed = true;
        }
    }

    /// Encodes a key.
    pub fn encode_key(&self, key: &K) -> Result<Bytes> {
        self.key_codec.encode_bytes(key).map_err(|source| Error::Encode {
            topic: self.name.to_string(),
            part: "key",
            source,
        })
    }

    /// Encodes a value.
    pub fn encode_value(&self, value: &V) -> Result<Bytes> {
        self.value_codec.encode_bytes(value).map_err(|source| Error::Encode {
            topic: self.name.to_string(),
            part: "value",
            source,
        })
    }

    /// Decodes and validates a message read from this topic.
    pub(crate) fn decode(&self, raw: &RawMessage) -> Result<(Option<K>, V)> {
        let origin = || Origin { topic: raw.topic.to_string(), partition: raw.partition, offset: raw.offset };
        let key = match &raw.key {
            Some(bytes) => Some(self.key_codec.decode_bytes(bytes).map_err(|source| Error::Decode {
                origin: origin(),
                part: "key",
                source,
            })?),
            None => None,
        };
        let Some(bytes) = &raw.value else {
            return Err(Error::Decode {
                origin: origin(),
                part: "value",
                source: crate::codec::CodecError { codec: self.value_codec.name(), message: "null value".into() },
            });
        };
        let value = self.value_codec.decode_bytes(bytes).map_err(|source| Error::Decode {
            origin: origin(),
            part: "value",
            source,
        })?;
        value.validate().map_err(|source| Error::Invalid { origin: origin(), source })?;
        Ok((key, value))
    }

    /// Sends a value with an optional key. Resolves when the message is queued
    /// (the backpressure point); await the returned receipt to wait for the
    /// broker's acknowledgement. Inside an agent there is no need to: the event
    /// being handled is not committed before everything it sent is acknowledged.
    ///
    /// ```
    /// # async fn doc(app: stream_core::App) -> Result<(), stream_core::Error> {
    /// let greetings = app.topic::<String, String>("greetings");
    /// let receipt = greetings.send(&"ada".to_string(), &"Hello, Ada!".to_string()).await?;
    /// receipt.await?; // only when the caller must know the broker has it
    /// greetings.send(None, &"Hello, anyone!".to_string()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send<'k>(&self, key: impl Into<Option<&'k K>>, value: &V) -> Result<DeliveryReceipt>
    where
        K: 'k,
    {
        let key = key.into().map(|k| self.encode_key(k)).transpose()?;
        let value = self.encode_value(value)?;
        self.send_bytes(key, Some(value), Vec::new(), None, None).await
    }

    /// Sends a record keyed by its `#[record(key)]` field.
    pub async fn send_record(&self, record: &V) -> Result<DeliveryReceipt>
    where
        V: Record<Key = K>,
    {
        let key = record.key();
        self.send(key.as_ref(), record).await
    }

    /// Starts a message with headers, an explicit partition or timestamp.
    pub fn message<'a>(&'a self, value: &'a V) -> MessageBuilder<'a, K, V> {
        MessageBuilder { topic: self, key: None, value, headers: Vec::new(), partition: None, timestamp_ms: None }
    }

    /// Sends already encoded bytes.
    pub(crate) async fn send_bytes(
        &self,
        key: Option<Bytes>,
        value: Option<Bytes>,
        headers: Headers,
        partition: Option<i32>,
        timestamp_ms: Option<i64>,
    ) -> Result<DeliveryReceipt> {
        let msg = OutMessage { topic: self.name.clone(), partition, key, value, headers, timestamp_ms };
        produce(&self.core, msg).await
    }
}

/// Queues a message, waiting while the producer queue is full.
pub(crate) async fn produce(core: &AppCore, msg: OutMessage) -> Result<DeliveryReceipt> {
    let topic = msg.topic.clone();
    let seq = core.sends.issue();
    let mut msg = msg;
    loop {
        match core.producer.try_send(msg, seq) {
            Ok(()) => return Ok(DeliveryReceipt { seq, tracker: core.sends.clone(), topic }),
            Err(TrySendError::QueueFull(back)) => {
                msg = *back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(TrySendError::Fatal(e)) => {
                // Nothing was queued: retire the number so the watermark moves on.
                core.sends.ack(seq);
                return Err(e);
            }
        }
    }
}

/// A message being built; see [`Topic::message`].
#[derive(Debug)]
#[must_use = "a message is sent only by .send().await"]
pub struct MessageBuilder<'a, K, V> {
    topic: &'a Topic<K, V>,
    key: Option<&'a K>,
    value: &'a V,
    headers: Headers,
    partition: Option<i32>,
    timestamp_ms: Option<i64>,
}

impl<'a, K: Payload, V: Payload> MessageBuilder<'a, K, V> {
    /// Sets the key.
    pub fn key(mut self, key: &'a K) -> Self {
        self.key = Some(key);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sends to this partition instead of the key's.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the message timestamp (epoch milliseconds).
    pub fn timestamp_ms(mut self, ts: i64) -> Self {
        self.timestamp_ms = Some(ts);
        self
    }

    /// Sends it; see [`Topic::send`].
    pub async fn send(self) -> Result<DeliveryReceipt> {
        let key = self.key.map(|k| self.topic.encode_key(k)).transpose()?;
        let value = self.topic.encode_value(self.value)?;
        self.topic.send_bytes(key, Some(value), self.headers, self.partition, self.timestamp_ms).await
    }
}
