//! Timers, crontabs and tasks: work alongside the agents, on a schedule or for
//! as long as the worker runs (sources that read from outside, say).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::error::{BoxError, Error, Result};

/// When a timer fires.
#[derive(Debug, Clone)]
pub(crate) enum Schedule {
    /// Every period, the first one period after start.
    Every(Duration),
    /// On a cron pattern, in UTC.
    Cron(Box<Cron>),
}

impl Schedule {
    pub(crate) fn cron(expr: &str) -> Result<Self> {
        let parser = CronParser::builder().seconds(Seconds::Optional).build();
        let cron = parser.parse(expr).map_err(|e| Error::Config(format!("crontab {expr:?}: {e}")))?;
        Ok(Schedule::Cron(Box::new(cron)))
    }

    /// How long from `now` until the next firing.
    pub(crate) fn wait_from(&self, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
        match self {
            Schedule::Every(period) => Some(*period),
            Schedule::Cron(cron) => {
                let next = cron.find_next_occurrence(&now, false).ok()?;
                (next - now).to_std().ok()
            }
        }
    }
}

type TimerFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// A declared timer.
#[derive(Clone)]
pub(crate) struct TimerDef {
    pub(crate) name: String,
    pub(crate) schedule: Schedule,
    f: TimerFn,
}

impl TimerDef {
    pub(crate) fn new<F, Fut>(name: &str, schedule: Schedule, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        TimerDef { name: name.to_owned(), schedule, f: Arc::new(move || Box::pin(f())) }
    }

    /// Runs the timer until `stop` turns true. A failing run is logged; the
    /// schedule goes on. A run is never cut short by shutdown.
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut next = tokio::time::Instant::now();
        loop {
            let Some(wait) = self.schedule.wait_from(chrono::Utc::now()) else {
                tracing::warn!(timer = %self.name, "schedule has no next firing; timer ends");
                return;
            };
            // Periods are measured from the previous firing, so a slow run does not drift the schedule.
            next = match self.schedule {
                Schedule::Every(period) => (next + period).max(tokio::time::Instant::now()),
                Schedule::Cron(_) => tokio::time::Instant::now() + wait,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = (self.f)().await {
                tracing::error!(timer = %self.name, error = %e, "timer run failed");
            }
        }
    }
}

/// Tells a task started by [`App::task`](crate::App::task) that the worker
/// is stopping.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Resolves once the worker is stopping.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }

    /// Whether the worker is stopping.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }
}

type TaskFn = Arc<dyn Fn(Shutdown) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// A declared task.
#[derive(Clone)]
pub(crate) struct TaskDef {
    pub(crate) name: String,
    f: TaskFn,
}

/// The longest wait before a failed task is started again.
const TASK_MAX_BACKOFF: Duration = Duration::from_secs(30);

impl TaskDef {
    pub(crate) fn new<F, Fut>(name: &str, f: F) -> Self
    where
        F: Fn(Shutdown) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        TaskDef { name: name.to_owned(), f: Arc::new(move |s| Box::pin(f(s))) }
    }

    /// Runs the task until it returns once the worker is stopping (or on its
    /// own). A failed run is logged and started again after a backoff (1 s,
    /// doubling up to 30 s; reset by a run that lasted a minute).
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let started = tokio::time::Instant::now();
            match (self.f)(Shutdown(stop.clone())).await {
                Ok(()) => {
                    if !*stop.borrow() {
                        tracing::info!(task = %self.name, "task finished");
                    }
                    return;
                }
                Err(e) => {
                    if *stop.borrow() {
                        tracing::warn!(task = %self.name, error = %e, "task failed while stopping");
                        return;
                    }
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff = Duration::from_secs(1);
                    }
                    tracing::error!(task = %self.name, error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "task failed; starting it again");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(TASK_MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn cron_next_firing() {
        let s = Schedule::cron("*/5 * * * *").unwrap();
        let now = chrono::Utc.with_ymd_and_hms(2026, 11, 23, 12, 3, 30).unwrap();
        assert_eq!(s.wait_from(now), Some(Duration::from_secs(90)));
        let s = Schedule::cron("*/10 * * * * *").unwrap();
        assert_eq!(s.wait_from(now), Some(Duration::from_secs(10)));
    }

    #[test]
    fn bad_cron_is_a_config_error() {
        let e = Schedule::cron("every tuesday").unwrap_err();
        assert!(e.to_string().starts_with("configuration: crontab \"every tuesday\""), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn timers_fire_on_schedule_and_stop() {
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        let def = TimerDef::new("t", Schedule::Every(Duration::from_secs(1)), move || {
            let c = c.clone();
            async move {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        });
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(def.run(rx));
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
        tx.send_replace(true);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_restart_after_failures_and_end_on_shutdown() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r = runs.clone();
        let def = TaskDef::new("source", move |mut shutdown| {
            let r = r.clone();
            async move {
                if r.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                    return Err("connection refused".into());
                }
                shutdown.wait().await;
                Ok(())
            }
        });
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(def.run(rx));
        // Fails at 0 s and 1 s (backoff 1 s, then 2 s), runs from 3 s on.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(!task.is_finished());
        tx.send_replace(true);
        task.await.unwrap();
    }
}
