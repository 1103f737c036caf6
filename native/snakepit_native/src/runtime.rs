//! The one tokio runtime every asynchronous task of the native core runs on.

use once_cell::sync::Lazy;
use tokio::runtime::Runtime;

/// Worker threads: `SNAKEPIT_NATIVE_THREADS` (1 to 64) when set, else one
/// per four cores, at least one. Every call to a worker hops between the
/// BEAM's schedulers, these threads and the worker; on a small machine each
/// extra thread mostly adds wake-ups (on 2 cores one thread used 15-20% less
/// CPU per call than two, bench/pool_throughput.exs), while big machines
/// with many workers need more than one.
fn threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::env::var("SNAKEPIT_NATIVE_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| (1..=64).contains(n))
        .unwrap_or((cores / 4).max(1))
}

static RUNTIME: Lazy<Runtime> = Lazy::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads())
        .thread_name("snakepit-io")
        .enable_all()
        .build()
        .expect("snakepit: cannot start the tokio runtime")
});

pub fn get() -> &'static Runtime {
    &RUNTIME
}
