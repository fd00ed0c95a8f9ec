//! Agents: declared handlers over a topic's stream, their error policy, and the
//! supervisor that runs each instance.
//!
//! An agent runs `concurrency` instances. Events are routed to instances by a
//! hash of their key (by partition when there is no key), so events of one key
//! are always handled by the same instance, in order.
//!
//! When a handler returns an error (or panics), the events it had not finished
//! (held, or dropped since it last asked for the next one) are the failed ones.
//! The supervisor restarts the handler and hands them over again, with backoff,
//! up to the policy's retries; then they go to the dead-letter topic (or the
//! agent stops, and with it the worker, without committing past them). A
//! [`Rejected`](crate::Rejected) error skips the retries.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::app::AppCore;
use crate::dlq;
use crate::error::{BoxError, Error};
use crate::event::Delivery;
use crate::record::Payload;
use crate::stream::{EventStream, Inbox, StreamState};
use crate::topic::{Topic, produce};
use crate::tracking::lock;

/// What an agent does when its handler fails.
///
/// ```
/// use std::time::Duration;
/// use stream_core::ErrorPolicy;
///
/// // Three retries 100 ms, 200 ms, 400 ms apart, then the dead-letter topic (the default):
/// let default = ErrorPolicy::default();
/// // Stop the worker instead (nothing past the failed event is committed):
/// let strict = ErrorPolicy::retry(5).backoff(Duration::from_millis(50), Duration::from_secs(2)).then_stop();
/// # let _ = (default, strict);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPolicy {
    /// How many times the failed events are handed over again.
    pub retries: u32,
    /// The wait before the first retry; it doubles each time.
    pub initial_backoff: Duration,
    /// The longest wait between retries.
    pub max_backoff: Duration,
    /// What happens when the retries are used up.
    pub then: OnExhausted,
}

/// What happens to events whose handler failed beyond its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExhausted {
    /// Send them to `<topic>.dlq` with the error, and go on.
    DeadLetter,
    /// Stop the agent and the worker; the events stay uncommitted.
    Stop,
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        ErrorPolicy {
            retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            then: OnExhausted::DeadLetter,
        }
    }
}

impl ErrorPolicy {
    /// Retries `n` times, then dead-letters.
    pub fn retry(n: u32) -> Self {
        ErrorPolicy { retries: n, ..Self::default() }
    }

    /// Dead-letters at once, without retrying.
    pub fn dead_letter() -> Self {
        Self::retry(0)
    }

    /// Sets the backoff between retries.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Stops the agent when the retries are used up.
    pub fn then_stop(mut self) -> Self {
        self.then = OnExhausted::Stop;
        self
    }

    /// Dead-letters when the retries are used up.
    pub fn then_dead_letter(mut self) -> Self {
        self.then = OnExhausted::DeadLetter;
        self
    }

    fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

type StartFn = Arc<dyn Fn(InstanceCtx) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// A declared agent.
pub(crate) struct AgentDef {
    pub(crate) name: String,
    pub(crate) topic: Arc<str>,
    pub(crate) concurrency: usize,
    pub(crate) policy: ErrorPolicy,
    pub(crate) start: StartFn,
}

impl AgentDef {
    pub(crate) fn new<K, V, F, Fut>(name: &str, topic: &Topic<K, V>, handler: F) -> Self
    where
        K: Payload,
        V: Payload,
        F: Fn(EventStream<K, V>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let source = topic.clone();
        let handler = Arc::new(handler);
        let start: StartFn = Arc::new(move |ctx: InstanceCtx| {
            let stream = EventStream::open(source.clone(), ctx);
            Box::pin(handler(stream))
        });
        AgentDef {
            name: name.to_owned(),
            topic: topic.name_arc().clone(),
            concurrency: 1,
            policy: ErrorPolicy::default(),
            start,
        }
    }
}

/// A declared agent; configure it before the worker starts.
#[derive(Clone)]
pub struct Agent {
    pub(crate) def: Arc<Mutex<AgentDef>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("name", &self.name()).finish_non_exhaustive()
    }
}

impl Agent {
    /// The agent's name.
    pub fn name(&self) -> String {
        lock(&self.def).name.clone()
    }

    /// The source topic.
    pub fn topic(&self) -> String {
        lock(&self.def).topic.to_string()
    }

    /// Runs `n` instances of the handler. Events of one key always go to the
    /// same instance, so they are never reordered.
    pub fn concurrency(self, n: usize) -> Self {
        lock(&self.def).concurrency = n.max(1);
        self
    }

    /// Sets the error policy.
    pub fn on_error(self, policy: ErrorPolicy) -> Self {
        lock(&self.def).policy = policy;
        self
    }
}

/// Counters of one agent.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Events read from the agent's topics.
    pub received: AtomicU64,
    /// Events the handler finished.
    pub processed: AtomicU64,
    /// Handler errors and panics.
    pub failed: AtomicU64,
    /// Retries of failed events.
    pub retried: AtomicU64,
    /// Messages sent to a dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Time from an event reaching the agent to the handler being done with it.
    pub latency: crate::metrics::Latency,
}

/// A command from agents to the dispatcher.
pub(crate) enum Command {
    /// Route a topic to an agent's instances (a `through`/`group_by` stage).
    AddRoute { agent: usize, topic: Arc<str>, senders: Vec<mpsc::Sender<Vec<Delivery>>> },
}

/// How many batches an instance's inbox holds before the dispatcher waits.
pub(crate) const INBOX_BATCHES: usize = 8;

/// A running agent.
pub(crate) struct AgentRuntime {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) core: Arc<AppCore>,
    pub(crate) policy: ErrorPolicy,
    pub(crate) stats: Arc<AgentStats>,
    pub(crate) instances: Vec<Arc<InstanceState>>,
    start: StartFn,
    stages: Mutex<HashSet<Arc<str>>>,
    commands: mpsc::UnboundedSender<Command>,
}

/// The state of one instance that outlives handler restarts.
#[derive(Default)]
pub(crate) struct InstanceState {
    /// Inboxes by topic, while no stream holds them.
    pub(crate) inboxes: Mutex<HashMap<Arc<str>, Inbox>>,
    /// Deliveries to hand over again, by topic (after a failure).
    pub(crate) replay: Mutex<HashMap<Arc<str>, VecDeque<Delivery>>>,
    /// The streams opened by the current handler run.
    pub(crate) streams: Mutex<Vec<Arc<StreamState>>>,
    /// An error raised outside the handler (a forwarding stage), ending its run.
    pub(crate) failure: Mutex<Option<BoxError>>,
    /// Whether `failure` holds an error (read on every poll, without the lock).
    pub(crate) failed: AtomicBool,
}

/// What a stream needs to know about the instance it belongs to.
#[derive(Clone)]
pub(crate) struct InstanceCtx {
    pub(crate) agent: Arc<AgentRuntime>,
    pub(crate) index: usize,
}

impl InstanceCtx {
    pub(crate) fn state(&self) -> &Arc<InstanceState> {
        &self.agent.instances[self.index]
    }

    /// Registers a stage topic for the agent (once, for all instances).
    pub(crate) fn ensure_stage(&self, topic: &Arc<str>) {
        let mut stages = lock(&self.agent.stages);
        if !stages.insert(topic.clone()) {
            return;
        }
        let mut senders = Vec::new();
        for instance in &self.agent.instances {
            let (tx, rx) = mpsc::channel(INBOX_BATCHES);
            lock(&instance.inboxes).insert(topic.clone(), Inbox::new(rx));
            senders.push(tx);
        }
        // The stage's dead-letter topic is created here, off the dispatcher,
        // which must never wait on the network; then the route is added.
        let (core, commands, agent, topic) =
            (self.agent.core.clone(), self.agent.commands.clone(), self.agent.index, topic.clone());
        tokio::spawn(async move {
            if let Ok(Some(partitions)) = core.transport.partitions(&topic).await {
                let spec = crate::transport::TopicSpec {
                    name: crate::dlq::dlq_topic(&topic),
                    partitions,
                    replication: core.config.replication,
                    config: std::collections::BTreeMap::new(),
                };
                if let Err(e) = core.transport.ensure_topics(&[spec]).await {
                    tracing::warn!(error = %e, "cannot create the dead-letter topic of stage {topic}");
                }
            }
            let _ = commands.send(Command::AddRoute { agent, topic, senders });
        });
    }

    /// Records a failure that must end the handler's run.
    pub(crate) fn fail(&self, error: BoxError) {
        let mut slot = lock(&self.state().failure);
        if slot.is_none() {
            *slot = Some(error);
            self.state().failed.store(true, Ordering::Release);
        }
    }
}

impl AgentRuntime {
    pub(crate) fn new(
        index: usize,
        def: &AgentDef,
        core: Arc<AppCore>,
        commands: mpsc::UnboundedSender<Command>,
    ) -> (Arc<Self>, Vec<mpsc::Sender<Vec<Delivery>>>) {
        let mut senders = Vec::new();
        let mut instances = Vec::new();
        for _ in 0..def.concurrency {
            let (tx, rx) = mpsc::channel(INBOX_BATCHES);
            let state = InstanceState::default();
            lock(&state.inboxes).insert(def.topic.clone(), Inbox::new(rx));
            instances.push(Arc::new(state));
            senders.push(tx);
        }
        let runtime = Arc::new(AgentRuntime {
            index,
            name: def.name.clone(),
            core,
            policy: def.policy.clone(),
            stats: Arc::default(),
            instances,
            start: def.start.clone(),
            stages: Mutex::default(),
            commands,
        });
        (runtime, senders)
    }

    /// Dead-letters a message, waiting for producer room.
    pub(crate) async fn dead_letter(&self, d: &Delivery, error: &str, kind: dlq::Kind) -> Result<(), Error> {
        let letter = dlq::letter(&d.raw, kind, error, &self.name);
        produce(&self.core, letter).await?;
        self.dead_lettered(d, kind, &error);
        Ok(())
    }

    /// Counts and logs a message that was sent to its dead-letter topic.
    pub(crate) fn dead_lettered(&self, d: &Delivery, kind: dlq::Kind, error: &dyn std::fmt::Display) {
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(agent = %self.name, topic = %d.raw.topic, partition = d.raw.partition, offset = d.raw.offset,
            kind = kind.as_str(), %error, "dead-lettered");
    }
}

/// Runs one instance until its streams end; restarts the handler after
/// failures according to the policy. Returns an error only when the agent
/// must stop.
pub(crate) async fn supervise(agent: Arc<AgentRuntime>, index: usize) -> Result<(), Error> {
    let ctx = InstanceCtx { agent: agent.clone(), index };
    let state = ctx.state().clone();
    let mut attempt = 0u32;
    let mut last_failed: Option<(Arc<str>, i32, i64)> = None;
    loop {
        let run = (agent.start)(ctx.clone());
        let outcome = AssertUnwindSafe(run).catch_unwind().await;
        let failure = lock(&state.failure).take();
        state.failed.store(false, Ordering::Release);
        let streams: Vec<Arc<StreamState>> = std::mem::take(&mut *lock(&state.streams));
        let error: Option<BoxError> = match outcome {
            Ok(Ok(())) => failure,
            Ok(Err(e)) => Some(e),
            Err(panic) => Some(panic_message(&*panic).into()),
        };
        let Some(error) = error else {
            // A clean end: whatever the handler dropped is done.
            for s in &streams {
                s.confirm_released();
            }
            if streams.iter().all(|s| s.ended()) || lock(&state.inboxes).values().all(Inbox::is_closed) {
                return Ok(());
            }
            tracing::warn!(agent = %agent.name, instance = index, "handler returned before its stream ended; restarting it");
            continue;
        };
        agent.stats.failed.fetch_add(1, Ordering::Relaxed);
        let failed: Vec<Delivery> = streams.iter().flat_map(|s| s.take_released()).collect();
        let Some(first) = failed.first() else {
            tracing::error!(agent = %agent.name, instance = index, %error, "handler failed outside any event; restarting it");
            tokio::time::sleep(agent.policy.delay(1)).await;
            continue;
        };
        let id = (first.raw.topic.clone(), first.raw.partition, first.raw.offset);
        attempt = if last_failed.as_ref() == Some(&id) { attempt + 1 } else { 1 };
        last_failed = Some(id);
        // Refused input would be refused again: no retries.
        let rejected = crate::Rejected::is(&*error);
        if !rejected && attempt <= agent.policy.retries {
            let delay = agent.policy.delay(attempt);
            tracing::warn!(agent = %agent.name, instance = index, %error, events = failed.len(), attempt,
                retry_in_ms = delay.as_millis() as u64, "handler failed; retrying its events");
            agent.stats.retried.fetch_add(failed.len() as u64, Ordering::Relaxed);
            requeue(&state, failed);
            tokio::time::sleep(delay).await;
            continue;
        }
        match agent.policy.then {
            OnExhausted::DeadLetter => {
                let reason = error.to_string();
                let kind = if rejected { dlq::Kind::Rejected } else { dlq::Kind::Handler };
                for d in failed {
                    agent.dead_letter(&d, &reason, kind).await.map_err(|e| Error::AgentStopped {
                        agent: agent.name.clone(),
                        source: format!("cannot dead-letter a failed event: {e}").into(),
                    })?;
                    d.tracker.confirm(d.seq, agent.core.sends.issued());
                }
                attempt = 0;
                last_failed = None;
            }
            OnExhausted::Stop => {
                let why = if rejected { "handler rejected an event" } else { "handler failed beyond its retries" };
                tracing::error!(agent = %agent.name, instance = index, %error, "{why}; stopping");
                return Err(Error::AgentStopped { agent: agent.name.clone(), source: error });
            }
        }
    }
}

/// Puts failed deliveries back in front of their topics' queues, in order.
fn requeue(state: &InstanceState, failed: Vec<Delivery>) {
    let mut replay = lock(&state.replay);
    let mut by_topic: HashMap<Arc<str>, Vec<Delivery>> = HashMap::new();
    for d in failed {
        by_topic.entry(d.raw.topic.clone()).or_default().push(d);
    }
    for (topic, mut list) in by_topic {
        list.sort_by_key(|d| (d.raw.partition, d.raw.offset));
        let queue = replay.entry(topic).or_default();
        for d in list.into_iter().rev() {
            queue.push_front(d);
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    format!("handler panicked: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = ErrorPolicy::retry(5).backoff(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (1..=4).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
    }
}
