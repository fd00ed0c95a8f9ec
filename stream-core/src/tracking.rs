//! Knowing when an event is done, and so which offsets may be committed.
//!
//! Two pieces:
//! - [`SendTracker`], one per app: every produced message gets a sequence number
//!   when it is queued; the transport acknowledges it when the broker did. The
//!   tracker knows the *ack watermark*: every message numbered below it was
//!   acknowledged.
//! - [`PartitionTracker`], one per agent and source partition: the offsets handed
//!   to the agent, in order. An offset is *confirmed* when the handler is done
//!   with its event; it records how many messages had been queued by then. It is
//!   *done* when confirmed and the ack watermark passed that number, so
//!   everything produced while handling it is safely on the broker. The position
//!   to commit is one past the last contiguous done offset.
//!
//! This counts conservatively (a message queued by another event before this one
//! finished also holds it back), which costs nothing in practice and needs no
//! bookkeeping of which send belongs to which event.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::transport::TopicPartition;

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the
/// state guarded here is always left consistent between statements).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Tracks acknowledgements of produced messages.
///
/// The watermark moves without a lock when acknowledgements arrive in order
/// (the common case); those that arrive early wait in a set until it reaches them.
#[derive(Debug, Default)]
pub struct SendTracker {
    next: AtomicU64,
    /// Every seq below this is acknowledged. Moved by a compare-and-swap from
    /// `seq` to `seq + 1` by the acknowledgement of `seq` itself, or, for seqs
    /// acknowledged early, under the `window` lock.
    acked_below: AtomicU64,
    /// Whether `window.early` may hold seqs (read without the lock).
    early_pending: AtomicBool,
    window: Mutex<Window>,
    notify: Notify,
    waiters: AtomicUsize,
}

#[derive(Debug, Default)]
struct Window {
    /// Seqs at or above the watermark that were acknowledged out of order.
    early: BTreeSet<u64>,
    /// Sends the broker refused, with the reason.
    failed: BTreeMap<u64, String>,
}

impl SendTracker {
    /// A new tracker.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Numbers a message about to be queued.
    pub fn issue(&self) -> u64 {
        self.next.fetch_add(1, Ordering::AcqRel)
    }

    /// How many messages were numbered so far.
    pub fn issued(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// Every message numbered below this was acknowledged.
    pub fn acked_below(&self) -> u64 {
        self.acked_below.load(Ordering::Acquire)
    }

    /// Records the broker's acknowledgement of `seq` (also used to retire a
    /// number whose message was never queued).
    pub fn ack(&self, seq: u64) {
        // SeqCst throughout: this thread moves the watermark then reads
        // `early_pending`, while an early acknowledgement sets `early_pending`
        // then reads the watermark; one of the two must see the other.
        if self.acked_below.compare_exchange(seq, seq + 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            if self.early_pending.load(Ordering::SeqCst) {
                self.advance(&mut lock(&self.window));
            }
        } else {
            let mut w = lock(&self.window);
            if seq < self.acked_below.load(Ordering::SeqCst) {
                return;
            }
            w.early.insert(seq);
            self.early_pending.store(true, Ordering::SeqCst);
            self.advance(&mut w);
        }
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Moves the watermark over the seqs acknowledged early (under the lock).
    fn advance(&self, w: &mut Window) {
        loop {
            let below = self.acked_below.load(Ordering::SeqCst);
            // `below` is in `early` only if it was acknowledged already, so no
            // lock-free acknowledgement can move the watermark from there.
            if !w.early.remove(&below) {
                break;
            }
            let _ = self.acked_below.compare_exchange(below, below + 1, Ordering::SeqCst, Ordering::SeqCst);
        }
        if w.early.is_empty() {
            self.early_pending.store(false, Ordering::SeqCst);
        }
    }

    /// Records that the broker refused `seq`. The watermark stops there: no
    /// offset after it will be committed, and the worker stops with the reason.
    pub fn fail(&self, seq: u64, reason: String) {
        lock(&self.window).failed.insert(seq, reason);
        if self.waiters.load(Ordering::Acquire) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// The first refused send, if any.
    pub fn first_failure(&self) -> Option<(u64, String)> {
        lock(&self.window).failed.iter().next().map(|(s, r)| (*s, r.clone()))
    }

    /// Waits until `seq` is acknowledged, or fails if it was refused.
    pub async fn wait_for(&self, seq: u64) -> Result<()> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiters.fetch_add(1, Ordering::SeqCst);
            let state = self.state_of(seq);
            let outcome = match state {
                Some(result) => Some(result),
                None => {
                    // Re-check periodically as a guard against a missed wake-up.
                    let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
                    None
                }
            };
            self.waiters.fetch_sub(1, Ordering::AcqRel);
            if let Some(result) = outcome {
                return result;
            }
        }
    }

    /// Waits until everything issued so far was acknowledged.
    pub async fn wait_all(&self) -> Result<()> {
        let upto = self.issued();
        if upto == 0 {
            return Ok(());
        }
        self.wait_for(upto - 1).await
    }

    fn state_of(&self, seq: u64) -> Option<Result<()>> {
        if let Some(reason) = lock(&self.window).failed.get(&seq) {
            return Some(Err(Error::Send { topic: String::new(), reason: reason.clone() }));
        }
        (self.acked_below.load(Ordering::SeqCst) > seq).then_some(Ok(()))
    }
}

/// A handle on one sent message: await it to know the broker has it.
///
/// Dropping it is fine: the runtime tracks the acknowledgement anyway and holds
/// back the commit of the event being handled until it arrives.
#[derive(Debug, Clone)]
pub struct DeliveryReceipt {
    pub(crate) seq: u64,
    pub(crate) tracker: Arc<SendTracker>,
    pub(crate) topic: Arc<str>,
}

impl IntoFuture for DeliveryReceipt {
    type Output = Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            self.tracker.wait_for(self.seq).await.map_err(|e| match e {
                Error::Send { reason, .. } => Error::Send { topic: self.topic.to_string(), reason },
                other => other,
            })
        })
    }
}

/// The offsets of one source partition handed to one agent, in order.
#[derive(Debug)]
pub(crate) struct PartitionTracker {
    pub(crate) tp: TopicPartition,
    state: Mutex<TrackerState>,
    sends: Arc<SendTracker>,
}

#[derive(Debug, Default)]
struct TrackerState {
    /// The sequence number of `slots[0]`.
    base_seq: u64,
    slots: VecDeque<Slot>,
    /// One past the last contiguous done offset.
    position: Option<i64>,
}

#[derive(Debug)]
struct Slot {
    offset: i64,
    /// When confirmed: the number of sends issued by then.
    confirmed: Option<u64>,
}

impl PartitionTracker {
    pub(crate) fn new(tp: TopicPartition, sends: Arc<SendTracker>) -> Arc<Self> {
        Arc::new(PartitionTracker { tp, state: Mutex::default(), sends })
    }

    /// Registers offsets handed to the agent, returning the first one's sequence number.
    pub(crate) fn push(&self, offsets: impl IntoIterator<Item = i64>) -> u64 {
        let mut st = lock(&self.state);
        let first = st.base_seq + st.slots.len() as u64;
        st.slots.extend(offsets.into_iter().map(|offset| Slot { offset, confirmed: None }));
        first
    }

    /// The handler is done with the event `seq`; `sends_issued` is
    /// [`SendTracker::issued`] at that moment.
    pub(crate) fn confirm(&self, seq: u64, sends_issued: u64) {
        let mut st = lock(&self.state);
        if let Some(idx) = seq.checked_sub(st.base_seq)
            && let Some(slot) = st.slots.get_mut(idx as usize)
        {
            slot.confirmed = Some(sends_issued);
        }
        Self::advance(&mut st, self.sends.acked_below());
    }

    fn advance(st: &mut TrackerState, acked_below: u64) {
        while let Some(Slot { offset, confirmed: Some(needed) }) = st.slots.front() {
            if *needed > acked_below {
                break;
            }
            st.position = Some(offset + 1);
            st.slots.pop_front();
            st.base_seq += 1;
        }
    }

    /// The position to commit (one past the last contiguous done offset), if
    /// anything was done.
    pub(crate) fn position(&self) -> Option<i64> {
        let mut st = lock(&self.state);
        Self::advance(&mut st, self.sends.acked_below());
        st.position
    }

    /// How many offsets are handed out and not yet done.
    pub(crate) fn in_flight(&self) -> usize {
        let mut st = lock(&self.state);
        Self::advance(&mut st, self.sends.acked_below());
        st.slots.len()
    }

    /// Waits until nothing is in flight, or the timeout passes. Returns whether
    /// it drained.
    pub(crate) async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        TopicPartition { topic: "t".into(), partition: 0 }
    }

    #[test]
    fn watermark_follows_out_of_order_acks() {
        let s = SendTracker::new();
        let (a, b, c) = (s.issue(), s.issue(), s.issue());
        s.ack(c);
        assert_eq!(s.acked_below(), 0);
        s.ack(a);
        assert_eq!(s.acked_below(), 1);
        s.ack(b);
        assert_eq!(s.acked_below(), 3);
    }

    #[test]
    fn watermark_is_exact_under_concurrent_acks() {
        for round in 0..20u64 {
            let s = SendTracker::new();
            let seqs: Vec<u64> = (0..4000).map(|_| s.issue()).collect();
            let threads: Vec<_> = (0..4u64)
                .map(|t| {
                    let s = s.clone();
                    // Each thread acknowledges its share, some in order, some backwards.
                    let mine: Vec<u64> = seqs.iter().copied().filter(|q| q % 4 == t).collect();
                    std::thread::spawn(move || {
                        if (t + round) % 2 == 0 {
                            mine.iter().for_each(|&q| s.ack(q));
                        } else {
                            mine.iter().rev().for_each(|&q| s.ack(q));
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(s.acked_below(), 4000);
            s.ack(3); // a late duplicate changes nothing
            assert_eq!(s.acked_below(), 4000);
        }
    }

    #[test]
    fn commit_position_is_last_contiguous_done() {
        let s = SendTracker::new();
        let t = PartitionTracker::new(tp(), s.clone());
        let first = t.push([10, 11, 12, 15]);
        t.confirm(first + 1, 0);
        assert_eq!(t.position(), None, "10 is not done yet");
        t.confirm(first, 0);
        assert_eq!(t.position(), Some(12));
        // 12 produced a message that is not acknowledged yet.
        let seq = s.issue();
        t.confirm(first + 2, s.issued());
        assert_eq!(t.position(), Some(12));
        s.ack(seq);
        assert_eq!(t.position(), Some(13));
        t.confirm(first + 3, s.issued());
        assert_eq!(t.position(), Some(16), "gaps in offsets are fine");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_failed_send_holds_back_commits() {
        let s = SendTracker::new();
        let t = PartitionTracker::new(tp(), s.clone());
        let first = t.push([0]);
        let seq = s.issue();
        s.fail(seq, "too large".into());
        t.confirm(first, s.issued());
        assert_eq!(t.position(), None);
        assert_eq!(s.first_failure().map(|f| f.0), Some(seq));
    }

    #[tokio::test]
    async fn receipts_resolve_on_ack_and_fail_on_refusal() {
        let s = SendTracker::new();
        let ok = DeliveryReceipt { seq: s.issue(), tracker: s.clone(), topic: "t".into() };
        let bad = DeliveryReceipt { seq: s.issue(), tracker: s.clone(), topic: "t".into() };
        let (ok_seq, bad_seq) = (ok.seq, bad.seq);
        let waiter = tokio::spawn(ok.into_future());
        tokio::task::yield_now().await;
        s.ack(ok_seq);
        waiter.await.unwrap().unwrap();
        s.fail(bad_seq, "refused".into());
        let err = bad.await.unwrap_err();
        assert!(err.to_string().contains("cannot send to topic t: refused"), "{err}");
    }
}
