//! The one tokio runtime every asynchronous task of the native core runs on.

use once_cell::sync::Lazy;
use tokio::runtime::Runtime;

static RUNTIME: Lazy<Runtime> = Lazy::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        // The BEAM already occupies every core with schedulers; a small
        // I/O-bound pool is enough and keeps context switches down.
        .worker_threads(2)
        .thread_name("snakepit-io")
        .enable_all()
        .build()
        .expect("snakepit: cannot start the tokio runtime")
});

pub fn get() -> &'static Runtime {
    &RUNTIME
}
