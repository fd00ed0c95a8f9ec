//! Events per second of a map agent on the memory transport, on one core (a
//! current-thread runtime). See docs/BENCHMARKS.md.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_main};
use strom_benches::{Workload, run_map};

const EVENTS: usize = 200_000;

fn map_agent(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("memory_map_agent");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for (name, workload) in [("json_record_map", Workload::JsonMap), ("raw_passthrough", Workload::RawPassthrough)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| runtime.block_on(run_map(EVENTS, 4, workload))).sum::<Duration>());
        });
    }
    group.finish();
}

mod group {
    #![allow(missing_docs)]
    criterion::criterion_group!(benches, super::map_agent);
}

criterion_main!(group::benches);
