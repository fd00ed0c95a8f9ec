//! Windows on tables: state per key *and* per window of event time.
//!
//! - [`WindowedTable`]: tumbling or hopping windows of event time, each an
//!   aggregate the agent updates. A partition's *watermark* is the latest
//!   event time it has seen; a window closes once the watermark passes its end
//!   plus the grace period, or once the partition has been idle (no event) for
//!   the configured time, so a quiet stream still emits its last window.
//!   Closing removes the window from the table and hands its final value to
//!   `on_window_close`. An event whose windows all closed already is *late*:
//!   it is counted and given to the `on_late` callback (dropped without one).
//! - [`CountWindows`]: the last `n` values of each key.
//! - [`SlidingWindows`]: the values of each key within `size` before the
//!   latest event of the key.
//!
//! Event time is the record's `#[record(timestamp)]` field, falling back to
//! the broker timestamp ([`Event::event_time_ms`]).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Table, TableCore, TablePart};
use crate::error::{BoxError, Result};
use crate::event::Event;
use crate::record::Payload;
use crate::tracking::lock;

/// A window of event time: `[start, end)` in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    /// The first millisecond in the window.
    pub start: i64,
    /// The first millisecond after it.
    pub end: i64,
}

/// How a [`WindowedTable`] cuts event time into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    size_ms: i64,
    step_ms: i64,
}

impl Windows {
    /// Back-to-back windows of `size`: every event falls in exactly one.
    pub fn tumbling(size: Duration) -> Windows {
        let size_ms = (size.as_millis() as i64).max(1);
        Windows { size_ms, step_ms: size_ms }
    }

    /// Windows of `size` starting every `step`: with a step shorter than the
    /// size, an event falls in `size / step` windows.
    pub fn hopping(size: Duration, step: Duration) -> Windows {
        let size_ms = (size.as_millis() as i64).max(1);
        Windows { size_ms, step_ms: (step.as_millis() as i64).clamp(1, size_ms) }
    }

    /// The windows an event time falls in, oldest first.
    pub fn of(&self, time_ms: i64) -> Vec<Window> {
        let mut start = time_ms - time_ms.rem_euclid(self.step_ms);
        let mut out = Vec::new();
        while start > time_ms - self.size_ms {
            out.push(Window { start, end: start + self.size_ms });
            start -= self.step_ms;
        }
        out.reverse();
        out
    }
}

/// A window's stored key: its start (ordered as signed), then the key bytes.
fn window_key(start: i64, key: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + key.len());
    b.put_u64((start as u64) ^ (1 << 63));
    b.put_slice(key);
    b.freeze()
}

fn split_window_key(stored: &Bytes) -> Option<(i64, Bytes)> {
    let head: [u8; 8] = stored.get(..8)?.try_into().ok()?;
    Some(((u64::from_be_bytes(head) ^ (1 << 63)) as i64, stored.slice(8..)))
}

/// The windows of one partition: its watermark and the windows still open.
pub(crate) struct WindowState {
    watermark: i64,
    /// Open windows by end, with their stored keys.
    open: BTreeSet<(i64, Bytes)>,
    last_event: Instant,
}

type CloseFn<K, V> = Arc<dyn Fn(K, Window, V) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;
type LateFn<K> = Arc<dyn Fn(&K, i64) + Send + Sync>;

struct WindowConfig<K, V> {
    windows: Windows,
    grace_ms: i64,
    idle: Option<Duration>,
    on_close: Option<CloseFn<K, V>>,
    on_late: Option<LateFn<K>>,
}

/// A table of tumbling or hopping windows; see the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use stream_core::prelude::*;
/// use stream_core::table::window::Windows;
///
/// # let dir = tempfile::tempdir()?;
/// let app = App::builder("doc").broker("memory://").state_dir(dir.path()).build()?;
/// let clicks = app.topic::<String, u32>("clicks");
/// let per_minute = app
///     .windowed_table::<String, u64>("clicks-per-minute", &clicks, Windows::tumbling(Duration::from_secs(60)))
///     .grace(Duration::from_secs(10))
///     .idle_close(Duration::from_secs(30))
///     .on_window_close(|page, window, n| async move {
///         println!("{page}: {n} clicks in [{}, {})", window.start, window.end);
///         Ok(())
///     });
/// let table = per_minute.clone();
/// app.agent("count-clicks", &clicks, move |mut clicks| {
///     let per_minute = table.clone();
///     async move {
///         while let Some(click) = clicks.next().await {
///             let Some(page) = click.key() else { continue };
///             per_minute.at(&click)?.update(page, |n| n.unwrap_or(0) + 1).await?;
///         }
///         Ok(())
///     }
/// });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct WindowedTable<K, V> {
    table: Table<K, V>,
    config: Arc<RwLock<WindowConfig<K, V>>>,
}

impl<K, V> Clone for WindowedTable<K, V> {
    fn clone(&self) -> Self {
        WindowedTable { table: self.table.clone(), config: self.config.clone() }
    }
}

impl<K, V> std::fmt::Debug for WindowedTable<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowedTable").field("name", &self.table.inner.name).finish_non_exhaustive()
    }
}

impl<K: Payload, V: Payload> WindowedTable<K, V> {
    pub(crate) fn new(table: Table<K, V>, windows: Windows) -> Self {
        let config =
            Arc::new(RwLock::new(WindowConfig { windows, grace_ms: 0, idle: None, on_close: None, on_late: None }));
        WindowedTable { table, config }
    }

    fn config(&self) -> std::sync::RwLockReadGuard<'_, WindowConfig<K, V>> {
        self.config.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn configure(self, f: impl FnOnce(&mut WindowConfig<K, V>)) -> Self {
        f(&mut self.config.write().unwrap_or_else(std::sync::PoisonError::into_inner));
        self
    }

    /// Accepts events up to `grace` behind the watermark: a window closes
    /// only once the watermark passed its end by `grace`.
    pub fn grace(self, grace: Duration) -> Self {
        self.configure(|c| c.grace_ms = grace.as_millis() as i64)
    }

    /// Closes every open window of a partition that saw no event for `idle`.
    pub fn idle_close(self, idle: Duration) -> Self {
        let table = self.clone();
        *lock(&self.table.inner.idle) = Some((idle, idle_closer(&table)));
        self.configure(|c| c.idle = Some(idle))
    }

    /// Called with each window's final value when it closes.
    pub fn on_window_close<F, Fut>(self, f: F) -> Self
    where
        F: Fn(K, Window, V) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let f: CloseFn<K, V> = Arc::new(move |k, w, v| Box::pin(f(k, w, v)));
        self.configure(|c| c.on_close = Some(f))
    }

    /// Called with the key and event time of each event that came too late
    /// for any open window (instead of dropping it silently).
    pub fn on_late(self, f: impl Fn(&K, i64) + Send + Sync + 'static) -> Self {
        self.configure(|c| c.on_late = Some(Arc::new(f)))
    }

    /// The underlying table (its name, changelog and counters).
    pub fn table(&self) -> &Table<K, V> {
        &self.table
    }

    /// The windows of the event's partition, at the event's time.
    pub fn at<EK, EV: Payload>(&self, event: &Event<EK, EV>) -> Result<WindowedPartition<'_, K, V>> {
        let part = self.table.at(event)?.part;
        let time = event.event_time_ms().unwrap_or_else(now_ms);
        Ok(WindowedPartition { table: self, part, time })
    }

    /// The windows of a partition this worker serves, at wall-clock now.
    pub fn partition(&self, partition: i32) -> Result<WindowedPartition<'_, K, V>> {
        let part = self.table.partition(partition)?.part;
        Ok(WindowedPartition { table: self, part, time: now_ms() })
    }

    /// The open windows of the partitions this worker serves: key, window, value.
    pub fn open_windows(&self) -> Result<Vec<(K, Window, V)>> {
        let size = self.config().windows.size_ms;
        let mut out = Vec::new();
        for part in self.table.inner.served() {
            for (stored, v) in part.entries()? {
                let Some((start, key)) = split_window_key(&stored) else { continue };
                out.push((
                    self.table.decode_key(&key)?,
                    Window { start, end: start + size },
                    self.table.decode_value(&v)?,
                ));
            }
        }
        Ok(out)
    }

    /// Closes the windows of `part` the watermark passed, or all of them
    /// (`all`, for an idle partition), and hands them to `on_window_close`.
    async fn close(&self, part: &Arc<TablePart>, all: bool) -> Result<()> {
        let (grace, size, on_close) = {
            let c = self.config();
            (c.grace_ms, c.windows.size_ms, c.on_close.clone())
        };
        let closed = {
            let _one = part.writing.lock().await;
            let due: Vec<(i64, Bytes)> = {
                let mut slot = lock(&part.windows);
                let Some(state) = slot.as_mut() else { return Ok(()) };
                let mut due = Vec::new();
                while let Some(first) = state.open.first() {
                    if !all && first.0 + grace > state.watermark {
                        break;
                    }
                    due.extend(state.open.pop_first());
                }
                if all && let Some(last) = due.last() {
                    // Events for what just closed are late from now on.
                    state.watermark = state.watermark.max(last.0 + grace);
                }
                due
            };
            let mut closed = Vec::new();
            for (end, stored) in due {
                let Some(value) = part.read(&stored)? else { continue };
                part.write(&self.table.inner, stored.clone(), None).await?;
                if let Some((start, key)) = split_window_key(&stored) {
                    closed.push((key, Window { start, end: start + size }, value));
                }
                debug_assert!(closed.last().is_none_or(|c| c.1.end == end));
            }
            closed
        };
        self.table.inner.stats.windows_closed.fetch_add(closed.len() as u64, Ordering::Relaxed);
        if let Some(on_close) = on_close {
            for (key, window, value) in closed {
                let (key, value) = (self.table.decode_key(&key)?, self.table.decode_value(&value)?);
                on_close(key, window, value)
                    .await
                    .map_err(|e| self.table.inner.error(format!("on_window_close of window {window:?}: {e}")))?;
            }
        }
        Ok(())
    }

    /// The partition's window state, built from its store on first use.
    fn state_of(&self, part: &TablePart) -> Result<()> {
        let mut slot = lock(&part.windows);
        if slot.is_some() {
            return Ok(());
        }
        let size = self.config().windows.size_ms;
        let mut state = WindowState { watermark: i64::MIN, open: BTreeSet::new(), last_event: Instant::now() };
        for (stored, _) in part.entries()? {
            if let Some((start, _)) = split_window_key(&stored) {
                state.open.insert((start + size, stored));
                // An event of the window was seen: the watermark was at least its start.
                state.watermark = state.watermark.max(start);
            }
        }
        *slot = Some(state);
        Ok(())
    }
}

/// The windows of one partition at one event time; see [`WindowedTable::at`].
pub struct WindowedPartition<'t, K, V> {
    table: &'t WindowedTable<K, V>,
    part: Arc<TablePart>,
    time: i64,
}

impl<K, V> std::fmt::Debug for WindowedPartition<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowedPartition").field("partition", &self.part.partition).field("time", &self.time).finish()
    }
}

impl<K: Payload, V: Payload> WindowedPartition<'_, K, V> {
    /// The event time these windows are read and updated at.
    pub fn time_ms(&self) -> i64 {
        self.time
    }

    /// Updates `key` in every open window the event time falls in, and returns
    /// the windows and their new values. Then closes the windows the
    /// watermark passed. A late event (all its windows closed) changes
    /// nothing: it is counted and given to `on_late`.
    pub async fn update(&self, key: &K, mut f: impl FnMut(Option<V>) -> V) -> Result<Vec<(Window, V)>> {
        let table = &self.table.table;
        let k = table.encode_key(key)?;
        self.table.state_of(&self.part)?;
        let (grace, windows, on_late) = {
            let c = self.table.config();
            (c.grace_ms, c.windows, c.on_late.clone())
        };
        let mut updated = Vec::new();
        {
            let _one = self.part.writing.lock().await;
            let open: Vec<Window> = {
                let mut slot = lock(&self.part.windows);
                let Some(state) = slot.as_mut() else { return Ok(updated) };
                state.last_event = Instant::now();
                windows.of(self.time).into_iter().filter(|w| w.end + grace > state.watermark).collect()
            };
            if open.is_empty() {
                table.inner.stats.late_events.fetch_add(1, Ordering::Relaxed);
                if let Some(on_late) = on_late {
                    on_late(key, self.time);
                }
                return Ok(updated);
            }
            for w in open {
                let stored = window_key(w.start, &k);
                let old = self.part.read(&stored)?.map(|v| table.decode_value(&v)).transpose()?;
                let new = f(old);
                self.part.write(&table.inner, stored.clone(), Some(table.encode_value(&new)?)).await?;
                if let Some(state) = lock(&self.part.windows).as_mut() {
                    state.open.insert((w.end, stored));
                }
                updated.push((w, new));
            }
            if let Some(state) = lock(&self.part.windows).as_mut() {
                state.watermark = state.watermark.max(self.time);
            }
        }
        self.table.close(&self.part, false).await?;
        Ok(updated)
    }

    /// The value of `key` in `window`.
    pub fn get(&self, key: &K, window: Window) -> Result<Option<V>> {
        let table = &self.table.table;
        let stored = window_key(window.start, &table.encode_key(key)?);
        self.part.read(&stored)?.map(|v| table.decode_value(&v)).transpose()
    }

    /// The value of `key` in the latest window the event time falls in.
    pub fn current(&self, key: &K) -> Result<Option<V>> {
        self.at_time(key, self.time)
    }

    /// The value of `key` in the latest window wall-clock now falls in.
    pub fn now(&self, key: &K) -> Result<Option<V>> {
        self.at_time(key, now_ms())
    }

    /// The value of `key` in the latest window `time_ms` falls in (an earlier
    /// window, say), while it is open.
    pub fn at_time(&self, key: &K, time_ms: i64) -> Result<Option<V>> {
        match self.table.config().windows.of(time_ms).last() {
            Some(w) => self.get(key, *w),
            None => Ok(None),
        }
    }

    /// The value of `key` in the window `ago` before the event's.
    pub fn delta(&self, key: &K, ago: Duration) -> Result<Option<V>> {
        self.at_time(key, self.time - ago.as_millis() as i64)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// What a windowed table registers so the worker can close idle partitions.
pub(crate) type IdleCloser = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

fn idle_closer<K: Payload, V: Payload>(table: &WindowedTable<K, V>) -> IdleCloser {
    // Weak, so the table's own registration does not keep it alive.
    let core: Weak<TableCore> = Arc::downgrade(&table.table.inner);
    let (key_codec, value_codec, config) =
        (table.table.key_codec.clone(), table.table.value_codec.clone(), Arc::downgrade(&table.config));
    Arc::new(move || {
        let (core, config) = (core.upgrade(), config.upgrade());
        let (key_codec, value_codec) = (key_codec.clone(), value_codec.clone());
        Box::pin(async move {
            let (Some(inner), Some(config)) = (core, config) else { return };
            let table = WindowedTable {
                table: Table { inner, key_codec, value_codec, _types: std::marker::PhantomData },
                config,
            };
            let Some(idle) = table.config().idle else { return };
            for part in table.table.inner.served() {
                let quiet =
                    lock(&part.windows).as_ref().is_some_and(|s| !s.open.is_empty() && s.last_event.elapsed() >= idle);
                if quiet && let Err(e) = table.close(&part, true).await {
                    tracing::warn!(table = %table.table.inner.name, partition = part.partition, error = %e,
                        "closing the windows of an idle partition failed");
                }
            }
        })
    })
}

/// The last values of a key, oldest first: the value of a [`CountWindows`]
/// or [`SlidingWindows`] table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Recent<T>(pub Vec<T>);

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Payload for Recent<T> {
    type Codec = crate::codec::Json;
}

/// The last `n` values of each key (a count window).
///
/// ```
/// # use stream_core::prelude::*;
/// # async fn doc(app: App) -> Result<(), stream_core::Error> {
/// let readings = app.topic::<String, f64>("readings");
/// let last10 = app.count_windows::<String, f64>("last-10", &readings, 10);
/// # let reading: Event<String, f64> = Event::new(Some("s1".into()), 21.5);
/// // in an agent, for each reading:
/// let values = last10.push(&reading, &"s1".to_string(), *reading.value()).await?;
/// let average = values.iter().sum::<f64>() / values.len() as f64;
/// # let _ = average; Ok(()) }
/// ```
pub struct CountWindows<K, T> {
    table: Table<K, Recent<T>>,
    size: usize,
}

impl<K, T> Clone for CountWindows<K, T> {
    fn clone(&self) -> Self {
        CountWindows { table: self.table.clone(), size: self.size }
    }
}

impl<K, T> std::fmt::Debug for CountWindows<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountWindows").field("name", &self.table.inner.name).field("size", &self.size).finish()
    }
}

impl<K: Payload, T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> CountWindows<K, T> {
    pub(crate) fn new(table: Table<K, Recent<T>>, size: usize) -> Self {
        CountWindows { table, size: size.max(1) }
    }

    /// Adds a value to `key`'s window and returns the window: the last `n`
    /// values, oldest first.
    pub async fn push<EK, EV>(&self, event: &Event<EK, EV>, key: &K, value: T) -> Result<Vec<T>> {
        let size = self.size;
        let recent = self
            .table
            .at(event)?
            .update(key, move |old| {
                let mut values = old.map(|r| r.0).unwrap_or_default();
                values.push(value);
                let excess = values.len().saturating_sub(size);
                values.drain(..excess);
                Recent(values)
            })
            .await?;
        Ok(recent.0)
    }

    /// `key`'s window in the event's partition.
    pub fn get<EK, EV>(&self, event: &Event<EK, EV>, key: &K) -> Result<Vec<T>> {
        Ok(self.table.at(event)?.get(key)?.map(|r| r.0).unwrap_or_default())
    }

    /// The underlying table.
    pub fn table(&self) -> &Table<K, Recent<T>> {
        &self.table
    }
}

/// The values of each key within `size` of event time before its latest
/// value (a sliding window).
pub struct SlidingWindows<K, T> {
    table: Table<K, Recent<(i64, T)>>,
    size_ms: i64,
    grace_ms: i64,
}

impl<K, T> Clone for SlidingWindows<K, T> {
    fn clone(&self) -> Self {
        SlidingWindows { table: self.table.clone(), size_ms: self.size_ms, grace_ms: self.grace_ms }
    }
}

impl<K, T> std::fmt::Debug for SlidingWindows<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlidingWindows").field("name", &self.table.inner.name).field("size_ms", &self.size_ms).finish()
    }
}

impl<K: Payload, T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> SlidingWindows<K, T> {
    pub(crate) fn new(table: Table<K, Recent<(i64, T)>>, size: Duration) -> Self {
        SlidingWindows { table, size_ms: (size.as_millis() as i64).max(1), grace_ms: 0 }
    }

    /// Keeps values up to `grace` older than a key's window, for events that
    /// arrive out of order.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace_ms = grace.as_millis() as i64;
        self
    }

    /// Adds the event's value to `key` at the event's time, and returns the
    /// window ending there: the values with times in `[t - size, t]`, oldest
    /// first. An event older than the key's latest time minus size and grace
    /// is late: it is counted and changes nothing (`Ok(None)`).
    pub async fn push<EK, EV: Payload>(&self, event: &Event<EK, EV>, key: &K, value: T) -> Result<Option<Vec<T>>> {
        let time = event.event_time_ms().unwrap_or_else(now_ms);
        let (size, grace) = (self.size_ms, self.grace_ms);
        let part = self.table.at(event)?;
        let current = part.get(key)?.map(|r| r.0).unwrap_or_default();
        let latest = current.iter().map(|(t, _)| *t).max().unwrap_or(i64::MIN);
        if time < latest.saturating_sub(size + grace) {
            self.table.inner.stats.late_events.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let kept = part
            .update(key, move |old| {
                let mut values = old.map(|r| r.0).unwrap_or_default();
                let at = values.partition_point(|(t, _)| *t <= time);
                values.insert(at, (time, value));
                let newest = values.last().map_or(time, |(t, _)| *t);
                // Enough to answer any event that is not late: its window
                // starts at most `size` before `newest - size - grace`.
                values.retain(|(t, _)| *t >= newest - 2 * size - grace);
                Recent(values)
            })
            .await?;
        Ok(Some(kept.0.into_iter().filter(|(t, _)| *t >= time - size && *t <= time).map(|(_, v)| v).collect()))
    }

    /// The underlying table.
    pub fn table(&self) -> &Table<K, Recent<(i64, T)>> {
        &self.table
    }
}
