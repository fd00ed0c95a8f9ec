//! The worker: consumes the agents' topics, hands events to agent instances,
//! commits what is done, and shuts down cleanly.
//!
//! One consumer per worker, in the consumer group named by the app id. A single
//! dispatcher task reads its events: assignments create a commit tracker per
//! (agent, partition); messages are registered with their trackers and routed
//! to the instance chosen by the key's hash; revocations drain and commit the
//! partitions before the consumer lets them go. A committer commits positions on
//! an interval.
//!
//! The dispatcher never waits for a slow agent: a batch an instance's full
//! inbox cannot take is parked, and the partitions it came from are paused at
//! the consumer until the instance takes it. Other agents go on.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::agent::{AgentRuntime, Command, supervise};
use crate::app::{App, AppCore};
use crate::error::{Error, Result};
use crate::event::Delivery;
use crate::metrics::WorkerProbe;
use crate::table::changelog::Tables;
use crate::tracking::{PartitionTracker, lock};
use crate::transport::{ConsumerControl, ConsumerEvent, RawMessage, TopicPartition, partition_for_key};

/// Routes of one topic to one agent's instances.
struct Route {
    agent: usize,
    senders: Vec<mpsc::Sender<Vec<Delivery>>>,
    trackers: HashMap<i32, Arc<PartitionTracker>>,
    /// Per instance, what its full inbox could not take yet.
    parked: Vec<Parked>,
}

impl Route {
    fn new(agent: usize, senders: Vec<mpsc::Sender<Vec<Delivery>>>) -> Route {
        let parked = senders.iter().map(|_| Parked::default()).collect();
        Route { agent, senders, trackers: HashMap::new(), parked }
    }
}

/// Batches an instance's full inbox could not take yet, in order.
#[derive(Default)]
struct Parked {
    batches: VecDeque<Vec<Delivery>>,
    /// The key and value bytes of `batches`.
    bytes: usize,
}

impl Parked {
    fn push(&mut self, batch: Vec<Delivery>) {
        self.bytes += batch_bytes(&batch);
        self.batches.push_back(batch);
    }

    fn pop(&mut self) -> Option<Vec<Delivery>> {
        let batch = self.batches.pop_front()?;
        self.bytes -= batch_bytes(&batch);
        Some(batch)
    }

    fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }
}

/// Parked batches (or bytes) of one instance at which its partitions are paused.
const PAUSE_AT: usize = 32;
const PAUSE_AT_BYTES: usize = 16 << 20;
/// Parked batches (and bytes) of a paused instance at which its partitions are resumed.
const RESUME_AT: usize = 8;
const RESUME_AT_BYTES: usize = 4 << 20;

/// The key and value bytes of a batch.
fn batch_bytes(batch: &[Delivery]) -> usize {
    batch.iter().map(|d| d.raw.key.as_ref().map_or(0, |k| k.len()) + d.raw.value.as_ref().map_or(0, |v| v.len())).sum()
}

/// An instance of a route: (topic, route index, instance index).
type Slot = (Arc<str>, usize, usize);

/// An instance's inbox has room again.
type Permit = (Slot, Option<mpsc::OwnedPermit<Vec<Delivery>>>);

/// Trackers by partition, and what was last committed: shared by the
/// dispatcher, the committer and shutdown.
#[derive(Default)]
struct Commits {
    trackers: BTreeMap<TopicPartition, Vec<Arc<PartitionTracker>>>,
    committed: HashMap<TopicPartition, i64>,
}

impl Commits {
    /// The position to commit for a partition: the least position of its
    /// trackers, if every tracker with work has done some.
    fn position(trackers: &[Arc<PartitionTracker>]) -> Option<i64> {
        let mut least: Option<i64> = None;
        for t in trackers {
            match t.position() {
                Some(p) => least = Some(least.map_or(p, |l| l.min(p))),
                None if t.in_flight() > 0 => return None,
                None => {}
            }
        }
        least
    }

    /// What changed since the last commit, for these partitions (all if `None`).
    fn due(&self, only: Option<&[TopicPartition]>) -> Vec<(TopicPartition, i64)> {
        let mut out = Vec::new();
        for (tp, trackers) in &self.trackers {
            if only.is_some_and(|o| !o.contains(tp)) {
                continue;
            }
            if let Some(p) = Self::position(trackers)
                && self.committed.get(tp) != Some(&p)
            {
                out.push((tp.clone(), p));
            }
        }
        out
    }
}

struct Shared {
    core: Arc<AppCore>,
    control: Arc<dyn ConsumerControl>,
    commits: Mutex<Commits>,
    /// One commit at a time, so a late commit never moves a position back.
    committing: tokio::sync::Mutex<()>,
    /// Each agent's name, source topic and counters, for the metrics.
    agent_stats: Vec<(String, String, Arc<crate::agent::AgentStats>)>,
    ready: AtomicBool,
    /// Partitions paused because an agent is behind.
    paused: std::sync::atomic::AtomicUsize,
    failure: Mutex<Option<Error>>,
    stop: watch::Sender<bool>,
    /// The app's tables and their store.
    tables: Tables,
}

impl Shared {
    /// Commits what is done on these partitions (all if `None`) and waits for
    /// the broker's answer. Returns whether everything due was committed.
    async fn commit(&self, only: Option<&[TopicPartition]>) -> bool {
        let _one = self.committing.lock().await;
        let due = lock(&self.commits).due(only);
        if due.is_empty() {
            return true;
        }
        let control = self.control.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || control.commit(&due).map(|()| due)).await;
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                Err(Error::Transport { transport: self.core.transport.kind(), reason: format!("commit task: {e}") })
            }
        };
        self.core.metrics.commit_done(started.elapsed(), result.is_ok());
        match result {
            Ok(due) => {
                let mut commits = lock(&self.commits);
                for (tp, p) in due {
                    if commits.trackers.contains_key(&tp) {
                        commits.committed.insert(tp, p);
                    }
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "commit failed; will retry");
                false
            }
        }
    }

    fn fail(&self, error: Error) {
        let mut slot = lock(&self.failure);
        if slot.is_none() {
            tracing::error!(%error, "worker failing");
            *slot = Some(error);
        }
        self.stop.send_replace(true);
    }
}

impl WorkerProbe for Shared {
    fn agents(&self) -> Vec<(String, String, Arc<crate::agent::AgentStats>)> {
        self.agent_stats.clone()
    }

    fn lag(&self) -> Vec<(String, i32, Option<i64>)> {
        let commits = lock(&self.commits);
        commits
            .trackers
            .keys()
            .map(|tp| {
                let end = self.control.end_offset(tp);
                let lag = end.zip(commits.committed.get(tp)).map(|(end, pos)| end - pos);
                (tp.topic.to_string(), tp.partition, lag)
            })
            .collect()
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn paused(&self) -> usize {
        self.paused.load(Ordering::Relaxed)
    }
}

#[cfg(feature = "web")]
impl crate::web::Status for Shared {
    fn healthy(&self) -> bool {
        lock(&self.failure).is_none()
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !*self.stop.borrow()
    }
}

/// A running worker. [`stop`](Self::stop) it to shut down cleanly.
pub struct Worker {
    shared: Arc<Shared>,
    agents: Vec<Arc<AgentRuntime>>,
    dispatcher: Option<tokio::task::JoinHandle<Option<mpsc::Receiver<ConsumerEvent>>>>,
    instances: JoinSet<()>,
    /// Tasks ([`App::task`]): stopped first, so what they send is flushed.
    tasks: JoinSet<()>,
    background: JoinSet<()>,
    stop_rx: watch::Receiver<bool>,
    web_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("app", &self.shared.core.config.id).finish_non_exhaustive()
    }
}

impl Worker {
    pub(crate) async fn start(app: App) -> Result<Worker> {
        let core = app.core.clone();
        let defs: Vec<_> = lock(&app.agents).clone();
        let mut names = HashSet::new();
        for def in &defs {
            let def = lock(def);
            if !names.insert(def.name.clone()) {
                return Err(Error::Usage(format!("two agents are named {:?}", def.name)));
            }
        }
        Tables::check(&core)?;
        let specs = app.topic_specs();
        core.transport.ensure_topics(&specs).await?;
        let tables = Tables::open(&core).await?;

        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let mut agents = Vec::new();
        let mut agent_stats = Vec::new();
        let mut routes: HashMap<Arc<str>, Vec<Route>> = HashMap::new();
        for (index, def) in defs.iter().enumerate() {
            let def = lock(def);
            let (runtime, senders) = AgentRuntime::new(index, &def, core.clone(), commands_tx.clone());
            routes.entry(def.topic.clone()).or_default().push(Route::new(index, senders));
            agent_stats.push((def.name.clone(), def.topic.to_string(), runtime.stats.clone()));
            agents.push(runtime);
        }
        drop(commands_tx);
        let mut topics: Vec<String> = routes.keys().map(|t| t.to_string()).collect();
        topics.sort();

        let consumer = core.transport.consumer(&core.config.group_id(), &topics)?;
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            core: core.clone(),
            control: consumer.control.clone(),
            commits: Mutex::default(),
            committing: tokio::sync::Mutex::new(()),
            agent_stats,
            // With nothing to consume there is no assignment to wait for.
            ready: AtomicBool::new(topics.is_empty()),
            paused: Default::default(),
            failure: Mutex::default(),
            stop,
            tables,
        });
        core.metrics.attach(shared.clone());

        let mut instances = JoinSet::new();
        for agent in &agents {
            for index in 0..agent.instances.len() {
                let agent = agent.clone();
                let shared = shared.clone();
                instances.spawn(async move {
                    if let Err(e) = supervise(agent, index).await {
                        shared.fail(e);
                    }
                });
            }
        }

        let dispatcher = Dispatcher {
            shared: shared.clone(),
            agents: agents.clone(),
            routes,
            assigned: HashSet::new(),
            waiting: FuturesUnordered::new(),
            held: HashMap::new(),
            resubscribe: false,
        };
        let dispatcher = tokio::spawn(dispatcher.run(consumer.events, commands_rx, stop_rx.clone()));

        let mut background = JoinSet::new();
        background.spawn(commit_loop(shared.clone(), stop_rx.clone()));
        if shared.tables.close_idle() {
            background.spawn(idle_window_loop(shared.clone(), stop_rx.clone()));
        }
        if shared.tables.need_following() {
            background.spawn(follow_loop(shared.clone(), stop_rx.clone()));
        }
        for timer in lock(&app.timers).iter().cloned() {
            background.spawn(timer.run(stop_rx.clone()));
        }
        let mut tasks = JoinSet::new();
        for task in lock(&app.tasks).iter().cloned() {
            tasks.spawn(task.run(stop_rx.clone()));
        }
        let web_addr = match core.config.web_port {
            #[cfg(feature = "web")]
            Some(port) => {
                let routes = lock(&app.routes).clone();
                let (addr, task) = crate::web::serve(
                    core.config.web_host,
                    port,
                    core.metrics.clone(),
                    shared.clone(),
                    routes,
                    stop_rx.clone(),
                )
                .await?;
                tracing::info!("metrics at http://{addr}/metrics");
                background.spawn(async move {
                    let _ = task.await;
                });
                Some(addr)
            }
            _ => None,
        };
        tracing::info!(app = %core.config.id, broker = %core.config.broker, agents = agents.len(), "worker started");
        Ok(Worker { shared, agents, dispatcher: Some(dispatcher), instances, tasks, background, stop_rx, web_addr })
    }

    /// The address of the HTTP endpoint (`/metrics`, `/health`, `/ready`), if it serves one.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_addr
    }

    /// Whether the worker has received its first assignment.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    /// Whether the worker was asked to stop, or is stopping on its own.
    pub fn is_stopping(&self) -> bool {
        *self.stop_rx.borrow()
    }

    /// The counters of an agent.
    pub fn agent_stats(&self, name: &str) -> Option<Arc<crate::agent::AgentStats>> {
        self.agents.iter().find(|a| a.name == name).map(|a| a.stats.clone())
    }

    /// How many partitions are paused because an agent is behind.
    pub fn paused_partitions(&self) -> usize {
        self.shared.paused.load(Ordering::Relaxed)
    }

    /// Commits what is done now, without waiting for the interval, and
    /// returns whether the broker took it; then checkpoints the tables.
    pub async fn commit_now(&self) -> bool {
        let committed = self.shared.commit(None).await;
        self.shared.tables.checkpoint().await;
        committed
    }

    /// Resolves when the worker must stop on its own (an agent stopped, a send
    /// was refused). Used by [`run_until_signal`](Self::run_until_signal).
    pub async fn stopped(&mut self) {
        stopped(&mut self.stop_rx).await;
    }

    /// Waits for SIGINT or SIGTERM (or a failure), then stops gracefully.
    pub async fn run_until_signal(mut self) -> Result<()> {
        tokio::select! {
            signal = shutdown_signal() => {
                signal?;
                tracing::info!("shutdown requested");
            }
            () = self.stopped() => {}
        }
        self.stop().await
    }

    /// Stops gracefully: stops consuming, lets the agents finish the events
    /// they were given, flushes the producer, commits, and leaves the group.
    /// Returns the error that stopped the worker, if one did.
    pub async fn stop(mut self) -> Result<()> {
        let timeout = self.shared.core.config.shutdown_timeout;
        self.shared.stop.send_replace(true);
        let tasks = tokio::time::timeout(timeout, async { while self.tasks.join_next().await.is_some() {} }).await;
        if tasks.is_err() {
            tracing::warn!("tasks did not stop in time; aborting them");
            self.tasks.abort_all();
        }
        let mut events = None;
        if let Some(dispatcher) = self.dispatcher.take() {
            match tokio::time::timeout(timeout, dispatcher).await {
                Ok(Ok(rx)) => events = rx,
                Ok(Err(e)) => tracing::warn!(error = %e, "dispatcher ended abnormally"),
                Err(_) => tracing::warn!("dispatcher did not stop in time"),
            }
        }
        let drained =
            tokio::time::timeout(timeout, async { while self.instances.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "agents did not finish in time; abandoning their in-flight events (they will be read again)"
            );
            self.instances.abort_all();
        }
        if let Err(e) = self.shared.core.producer.flush(timeout).await {
            tracing::warn!(error = %e, "flush at shutdown failed");
        }
        self.shared.commit(None).await;
        self.shared.tables.close().await;
        // Leave the group, answering any revocation it brings at once.
        self.shared.control.close();
        if let Some(mut events) = events {
            let left = tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(event) = events.recv().await {
                    if let ConsumerEvent::Revoked(_, done) = event {
                        let _ = done.send(());
                    }
                }
            });
            if left.await.is_err() {
                tracing::warn!("the consumer did not leave the group in time");
            }
        }
        self.shared.core.metrics.detach();
        self.background.abort_all();
        while self.background.join_next().await.is_some() {}
        tracing::info!(app = %self.shared.core.config.id, "worker stopped");
        match lock(&self.shared.failure).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Worker {
    /// A worker dropped without [`stop`](Worker::stop) stops abruptly: it
    /// leaves the group and its tasks end; nothing more is committed.
    fn drop(&mut self) {
        if let Some(dispatcher) = self.dispatcher.take() {
            self.shared.stop.send_replace(true);
            self.shared.control.close();
            self.shared.core.metrics.detach();
            self.shared.tables.abandon();
            dispatcher.abort();
        }
    }
}

/// Resolves at SIGINT (Ctrl-C) or SIGTERM: what [`Worker::run_until_signal`]
/// waits for, for programs that run several workers.
pub async fn shutdown_signal() -> Result<()> {
    let io = |source| Error::Io { context: "installing the signal handler".into(), source };
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(io)?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map_err(io),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map_err(io)
    }
}

/// Resolves once the worker is asked to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn commit_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shared.core.config.commit_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Some((seq, reason)) = shared.core.sends.first_failure() {
            shared.fail(Error::Send { topic: String::new(), reason: format!("message #{seq} was refused: {reason}") });
            return;
        }
        shared.commit(None).await;
        shared.tables.checkpoint().await;
    }
}

/// Closes the windows of idle partitions (windowed tables with an idle timeout).
async fn idle_window_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let next = shared.tables.close_idle_windows().await;
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// How often standby partitions catch up with their changelogs.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// Keeps global tables and standby partitions current. Global tables are
/// followed closely (`AppConfig::global_table_follow`): their changes are
/// what a live view (a map replica's event stream) shows. A round that
/// applied something is followed by another at once.
async fn follow_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let every = if shared.tables.has_global() { shared.core.config.global_table_follow } else { FOLLOW_EVERY };
    loop {
        let pause = match shared.tables.follow().await {
            Ok(applied) if applied > 0 => Duration::ZERO,
            Ok(_) => every,
            Err(e) => {
                tracing::warn!(error = %e, "following table changelogs failed; retrying");
                FOLLOW_EVERY
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

struct Dispatcher {
    shared: Arc<Shared>,
    agents: Vec<Arc<AgentRuntime>>,
    routes: HashMap<Arc<str>, Vec<Route>>,
    assigned: HashSet<TopicPartition>,
    /// Room in the inboxes of instances with parked batches.
    waiting: FuturesUnordered<Pin<Box<dyn Future<Output = Permit> + Send>>>,
    /// The partitions paused for each instance with parked batches.
    held: HashMap<Slot, HashSet<TopicPartition>>,
    /// Stage routes were added since the subscription was last set.
    resubscribe: bool,
}

impl Dispatcher {
    /// Runs until the worker stops or the consumer closes; returns the event
    /// channel (when still open) so shutdown can see the consumer leave.
    async fn run(
        mut self,
        mut events: mpsc::Receiver<ConsumerEvent>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut stop: watch::Receiver<bool>,
    ) -> Option<mpsc::Receiver<ConsumerEvent>> {
        let mut commands_open = true;
        loop {
            tokio::select! {
                biased;
                () = stopped(&mut stop) => return Some(events),
                command = commands.recv(), if commands_open => match command {
                    Some(command) => self.command(command),
                    None => commands_open = false,
                },
                Some(permit) = self.waiting.next(), if !self.waiting.is_empty() => self.unpark(permit),
                event = events.recv() => match event {
                    Some(event) => self.event(event).await,
                    None => return None,
                },
            }
        }
        // Dropping the routes closes the instances' inboxes: they finish what
        // they hold and end. Parked batches are dropped uncommitted.
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::AddRoute { agent, topic, senders } => {
                let mut route = Route::new(agent, senders);
                let tps: Vec<TopicPartition> = self.assigned.iter().filter(|tp| tp.topic == topic).cloned().collect();
                for tp in tps {
                    self.add_tracker(&mut route, tp);
                }
                self.routes.entry(topic).or_default().push(route);
                // Not while the first join is under way: a subscription that
                // changes then can leave the group with a phantom member that
                // holds partitions until its session expires (seen on Tansu).
                self.resubscribe = true;
                if self.shared.ready.load(Ordering::Acquire) {
                    self.subscribe();
                }
            }
        }
    }

    /// Subscribes to every routed topic.
    fn subscribe(&mut self) {
        self.resubscribe = false;
        let mut topics: Vec<String> = self.routes.keys().map(|t| t.to_string()).collect();
        topics.sort();
        if let Err(e) = self.shared.control.subscribe(&topics) {
            self.shared.fail(e);
        }
    }

    fn add_tracker(&self, route: &mut Route, tp: TopicPartition) {
        let tracker = PartitionTracker::new(tp.clone(), self.shared.core.sends.clone());
        route.trackers.insert(tp.partition, tracker.clone());
        lock(&self.shared.commits).trackers.entry(tp).or_default().push(tracker);
    }

    async fn event(&mut self, event: ConsumerEvent) {
        match event {
            ConsumerEvent::Assigned(tps) => {
                tracing::info!(partitions = %list(&tps), "assigned");
                self.shared.core.metrics.rebalance("assigned");
                // Table partitions recover before the first message of their
                // topic partition is dispatched.
                if let Err(e) = self.shared.tables.assigned(&tps).await {
                    self.shared.fail(e);
                }
                for tp in tps {
                    let mut routes = self.routes.remove(&tp.topic).unwrap_or_default();
                    for route in &mut routes {
                        self.add_tracker(route, tp.clone());
                    }
                    self.routes.insert(tp.topic.clone(), routes);
                    self.assigned.insert(tp);
                }
                self.shared.ready.store(true, Ordering::Release);
                if self.resubscribe {
                    self.subscribe();
                }
            }
            ConsumerEvent::Revoked(tps, done) => {
                tracing::info!(partitions = %list(&tps), "revoked: draining");
                self.shared.core.metrics.rebalance("revoked");
                let timeout = self.shared.core.config.shutdown_timeout;
                let deadline = tokio::time::Instant::now() + timeout;
                // What was fetched is handed over and finished, then committed.
                while !self.waiting.is_empty() {
                    match tokio::time::timeout_at(deadline, self.waiting.next()).await {
                        Ok(Some(permit)) => self.unpark(permit),
                        Ok(None) => break,
                        Err(_) => {
                            tracing::warn!("agents did not take the parked events of revoked partitions in time");
                            break;
                        }
                    }
                }
                let trackers: Vec<Arc<PartitionTracker>> = {
                    let commits = lock(&self.shared.commits);
                    tps.iter().filter_map(|tp| commits.trackers.get(tp)).flatten().cloned().collect()
                };
                for t in &trackers {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if !t.drain(left).await {
                        tracing::warn!(partition = %t.tp, "revoked partition did not drain in time");
                    }
                }
                if let Err(e) = self.shared.core.producer.flush(timeout).await {
                    tracing::warn!(error = %e, "flush on revoke failed");
                }
                self.shared.commit(Some(&tps)).await;
                self.shared.tables.revoked(&tps).await;
                let mut commits = lock(&self.shared.commits);
                for tp in &tps {
                    commits.trackers.remove(tp);
                    commits.committed.remove(tp);
                    self.assigned.remove(tp);
                    if let Some(routes) = self.routes.get_mut(&tp.topic) {
                        for route in routes {
                            route.trackers.remove(&tp.partition);
                        }
                    }
                    for held in self.held.values_mut() {
                        held.remove(tp);
                    }
                }
                drop(commits);
                self.held.retain(|_, held| !held.is_empty());
                self.count_paused();
                let _ = done.send(());
            }
            ConsumerEvent::Messages(batch) => self.dispatch(batch),
            ConsumerEvent::Failed(e) => self.shared.fail(e),
        }
    }

    fn dispatch(&mut self, batch: Vec<RawMessage>) {
        // The deliveries per destination (topic, route, instance), in order. A
        // batch has few destinations: they are found by a short scan per run of
        // one partition, not by hashing every message. Messages move from the
        // batch straight into their destination's vector (cloned only for the
        // other routes of a topic read by several agents).
        let mut outgoing: Vec<(Arc<str>, usize, Vec<Vec<Delivery>>)> = Vec::new();
        let mut rest = batch.into_iter();
        while let Some(first) = rest.as_slice().first() {
            let (topic, partition) = (first.topic.clone(), first.partition);
            let len = rest
                .as_slice()
                .iter()
                .take_while(|m| Arc::ptr_eq(&m.topic, &topic) && m.partition == partition)
                .count();
            let mut taken = false;
            if let Some(routes) = self.routes.get(&topic) {
                let last = routes.len().saturating_sub(1);
                for (r, route) in routes.iter().enumerate() {
                    let Some(tracker) = route.trackers.get(&partition) else {
                        // Fetched before a revocation: the new owner reads it again.
                        tracing::debug!(topic = %topic, partition, "message for an unassigned partition; skipped");
                        continue;
                    };
                    let first_seq = tracker.push(rest.as_slice()[..len].iter().map(|m| m.offset));
                    let n = route.senders.len();
                    let slot = match outgoing.iter().position(|(t, rr, _)| *rr == r && Arc::ptr_eq(t, &topic)) {
                        Some(i) => i,
                        None => {
                            // Most batches are of one topic: room for the rest of
                            // the batch, so later runs do not grow the vectors.
                            let expected = if n == 1 { rest.len() } else { rest.len() / n + 1 };
                            outgoing.push((topic.clone(), r, (0..n).map(|_| Vec::with_capacity(expected)).collect()));
                            outgoing.len() - 1
                        }
                    };
                    let per_instance = &mut outgoing[slot].2;
                    let mut deliver = |i: usize, raw: RawMessage| {
                        let instance = if n == 1 { 0 } else { instance_for(&raw, n) };
                        per_instance[instance].push(Delivery {
                            raw,
                            tracker: tracker.clone(),
                            seq: first_seq + i as u64,
                        });
                    };
                    if r == last {
                        rest.by_ref().take(len).enumerate().for_each(|(i, raw)| deliver(i, raw));
                        taken = true;
                    } else {
                        rest.as_slice()[..len].iter().enumerate().for_each(|(i, raw)| deliver(i, raw.clone()));
                    }
                }
            }
            if !taken {
                rest.by_ref().take(len).for_each(drop);
            }
        }
        for (topic, r, per_instance) in outgoing {
            for (instance, deliveries) in per_instance.into_iter().enumerate() {
                if !deliveries.is_empty() {
                    self.deliver(&(topic.clone(), r, instance), deliveries);
                }
            }
        }
    }

    /// Hands a batch to an instance, or parks it (and pauses its partitions)
    /// when the instance's inbox is full.
    fn deliver(&mut self, slot: &Slot, deliveries: Vec<Delivery>) {
        let Some(route) = self.routes.get_mut(&slot.0).and_then(|routes| routes.get_mut(slot.1)) else { return };
        let parked = &mut route.parked[slot.2];
        let deliveries = if parked.batches.is_empty() {
            match route.senders[slot.2].try_send(deliveries) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    let agent = self.agents.get(route.agent).map(|a| a.name.clone());
                    tracing::debug!(agent = ?agent, "instance inbox closed; deliveries dropped (they stay uncommitted)");
                    return;
                }
                Err(mpsc::error::TrySendError::Full(deliveries)) => {
                    Self::wait_for_room(&self.waiting, slot, &route.senders[slot.2]);
                    deliveries
                }
            }
        } else {
            deliveries
        };
        parked.push(deliveries);
        // Pause only once a backlog has built up, and then every partition in
        // it (also those that arrive later): librdkafka drops what it had
        // prefetched for a paused partition and fetches it again on resume, so
        // pausing at the first full inbox would cost a refetch for every
        // hiccup of the agent.
        let paused = self.held.contains_key(slot);
        if !paused && parked.batches.len() < PAUSE_AT && parked.bytes < PAUSE_AT_BYTES {
            return;
        }
        let held = self.held.entry(slot.clone()).or_default();
        // Once paused, only the batch just parked can bring new partitions.
        let newly = if paused { parked.batches.len() - 1 } else { 0 };
        let mut fresh: Vec<TopicPartition> = Vec::new();
        for d in parked.batches.iter().skip(newly).flatten() {
            let tp = TopicPartition { topic: d.raw.topic.clone(), partition: d.raw.partition };
            if held.insert(tp.clone()) {
                fresh.push(tp);
            }
        }
        if !fresh.is_empty() {
            tracing::debug!(partitions = %list(&fresh), "an agent is behind: pausing");
            self.shared.control.pause(&fresh);
            self.count_paused();
        }
    }

    /// Lets the dispatcher know when the instance's inbox has room.
    fn wait_for_room(
        waiting: &FuturesUnordered<Pin<Box<dyn Future<Output = Permit> + Send>>>,
        slot: &Slot,
        sender: &mpsc::Sender<Vec<Delivery>>,
    ) {
        let (slot, sender) = (slot.clone(), sender.clone());
        waiting.push(Box::pin(async move { (slot, sender.reserve_owned().await.ok()) }));
    }

    fn count_paused(&self) {
        let paused: HashSet<&TopicPartition> = self.held.values().flatten().collect();
        self.shared.paused.store(paused.len(), Ordering::Relaxed);
    }

    /// An instance has room: hands it its oldest parked batch. Once the
    /// backlog is down to [`RESUME_AT`] batches, resumes the partitions no
    /// other instance holds paused, early enough that the refetch overlaps
    /// with the rest of the backlog.
    fn unpark(&mut self, (slot, permit): Permit) {
        let Some(route) = self.routes.get_mut(&slot.0).and_then(|routes| routes.get_mut(slot.1)) else { return };
        let parked = &mut route.parked[slot.2];
        match permit {
            Some(permit) => {
                if let Some(batch) = parked.pop() {
                    permit.send(batch);
                }
            }
            None => parked.clear(),
        }
        if !parked.batches.is_empty() {
            Self::wait_for_room(&self.waiting, &slot, &route.senders[slot.2]);
        }
        if parked.batches.len() > RESUME_AT || parked.bytes > RESUME_AT_BYTES {
            return;
        }
        let Some(released) = self.held.remove(&slot) else { return };
        let resume: Vec<TopicPartition> =
            released.into_iter().filter(|tp| self.held.values().all(|h| !h.contains(tp))).collect();
        if !resume.is_empty() {
            tracing::debug!(partitions = %list(&resume), "agent catching up: resuming");
            self.shared.control.resume(&resume);
        }
        self.count_paused();
    }
}

/// The instance of an agent that handles a message: by key, so one key is
/// always handled by one instance; by partition when there is no key.
fn instance_for(raw: &RawMessage, instances: usize) -> usize {
    match &raw.key {
        Some(key) => partition_for_key(key, instances as i32) as usize,
        None => raw.partition as usize % instances,
    }
}

fn list(tps: &[TopicPartition]) -> String {
    tps.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_follow_keys() {
        let raw = |key: Option<&str>, partition| RawMessage {
            topic: "t".into(),
            partition,
            offset: 0,
            key: key.map(|k| bytes::Bytes::copy_from_slice(k.as_bytes())),
            value: None,
            headers: Vec::new(),
            timestamp_ms: None,
        };
        assert_eq!(instance_for(&raw(Some("a"), 0), 4), instance_for(&raw(Some("a"), 3), 4));
        assert_eq!(instance_for(&raw(None, 5), 4), 1);
    }
}
