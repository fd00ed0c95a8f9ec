//! Runs the memory map benchmark once, for profilers: `cargo run --release -p strom-benches --example profile_map -- json|raw [events] [runs]`.

use strom_benches::{Workload, run_map};

fn main() {
    let mut args = std::env::args().skip(1);
    let workload = match args.next().as_deref() {
        Some("raw") => Workload::RawPassthrough,
        _ => Workload::JsonMap,
    };
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(200_000);
    let runs: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for _ in 0..runs {
        let elapsed = runtime.block_on(run_map(n, 4, workload));
        println!("{n} events in {elapsed:?}: {:.0} events/s", n as f64 / elapsed.as_secs_f64());
    }
}
