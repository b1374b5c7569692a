//! The one async runtime of the process.
//!
//! cpr's pipeline is synchronous (tar, zstd, files), while etcd-client and reqwest are async. A small
//! multi-threaded runtime lets synchronous code wait on a future (`block_on`) and lets a synchronous writer
//! feed a request body that a runtime worker is sending at the same time.

use std::future::Future;
use std::sync::OnceLock;
use tokio::runtime::Runtime;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

pub fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cpr-io")
            .enable_all()
            .build()
            .unwrap_or_else(|e| {
                // Without a runtime no network step can run; there is nothing to fall back to.
                eprintln!("cpr: cannot start the I/O runtime: {e}");
                std::process::exit(70)
            })
    })
}

/// Runs a future to completion from synchronous code. Must not be called from a runtime worker.
pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}
