//! `concord-node`: one ConcordKV server process.

use std::process::ExitCode;

// Allocation-heavy paths (request parsing, log entries, gRPC frames) run measurably faster on
// mimalloc than on glibc malloc (see docs/testing.md, Benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc commits its arenas eagerly on Linux and keeps their pages resident: an idle member
/// held 27 MB more for it (measured with `MIMALLOC_ARENA_EAGER_COMMIT=0`). The option must be
/// set before the first allocation reserves an arena, so it is set by a static initializer,
/// which runs before the Rust runtime allocates anything.
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = {
    extern "C" fn tune_allocator() {
        // `mi_option_arena_eager_commit` in mimalloc v3's `mi_option_e`.
        const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
        // SAFETY: sets one process-wide option; it allocates nothing.
        unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
    }
    tune_allocator
};

use clap::Parser;
use concord_node::config::{normalize_args, Config, Flags};
use concord_node::raft::startup::Node;

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can still be stopped by SIGKILL; run until then.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags = Flags::parse_from(normalize_args(std::env::args()));
    let config = match Config::resolve(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("concord-node: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = concord_node::telemetry::init(config.log_format, &config.name);
    let mut node = match Node::start(config).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("cannot start: {e:#}");
            eprintln!("concord-node: cannot start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = wait_for_signal() => {}
        reason = node.listener_failure() => {
            tracing::error!(%reason, "a listener stopped; exiting so the node is restarted");
            eprintln!("concord-node: {reason}");
            node.shutdown().await;
            return ExitCode::FAILURE;
        }
    }
    node.shutdown().await;
    ExitCode::SUCCESS
}
