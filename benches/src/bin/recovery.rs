//! Table recovery on the memory transport, where the broker costs next to
//! nothing: how fast Strom itself replays a changelog into an empty sled store
//! (cold), and how long a restart on a full store takes (warm).
//!
//! ```text
//! cargo run --release -p strom-benches --bin recovery -- [keys]
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stream_core::prelude::*;
use strom_benches::{FILL_BLOCK, Filler};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The filler app on a memory broker shared by the runs, with its state in `state`.
fn filler(state: &std::path::Path) -> Res<Filler> {
    let builder = App::builder("recovery").broker("memory://recovery-bench").state_dir(state).without_web();
    Ok(strom_benches::filler(builder)?)
}

async fn ready(worker: &stream_core::Worker) {
    while !worker.is_ready() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn main() -> Res<()> {
    let keys: u32 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let dir = std::env::temp_dir().join(format!("strom-recovery-bench-{}", std::process::id()));
    rt.block_on(async {
        let blocks = keys.div_ceil(FILL_BLOCK);
        let (app, fill, table) = filler(&dir.join("filled"))?;
        let worker = app.start().await?;
        ready(&worker).await;
        let started = Instant::now();
        for block in 0..blocks {
            fill.send(&block, &block).await?;
        }
        while table.stats().writes.load(Ordering::Relaxed) < u64::from(blocks * FILL_BLOCK) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        worker.stop().await?;
        println!("filled {} keys in {:.2} s", blocks * FILL_BLOCK, started.elapsed().as_secs_f64());
        drop((app, fill, table));

        for (what, state) in [("cold (empty state directory)", "cold"), ("warm (the filled store)", "filled")] {
            let (app, _fill, table) = filler(&dir.join(state))?;
            let started = Instant::now();
            let worker = app.start().await?;
            ready(&worker).await;
            let took = started.elapsed();
            let replayed = table.stats().replayed.load(Ordering::Relaxed);
            let recovery = Duration::from_nanos(table.stats().recovery_ns.load(Ordering::Relaxed));
            // Partitions recover side by side: the rate is over the wall time
            // from start to ready (on memory:// the assignment is immediate).
            println!(
                "{what}: start to ready {:.3} s, replaying {replayed} records ({:.0} records/s); \
                 partition recoveries {:.3} s in all",
                took.as_secs_f64(),
                replayed as f64 / took.as_secs_f64().max(1e-9),
                recovery.as_secs_f64(),
            );
            worker.stop().await?;
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
