//! SIGTERM and Ctrl-C as a flag the long-running loops watch, so that a service manager's stop
//! leaves the pipeline as cleanly as the operator's pause file does.

use tokio::sync::watch;

/// A flag that turns true when the process receives SIGTERM or SIGINT (a second signal of the
/// same kind does nothing more: the program decides how fast it stops).
pub fn stop_requested() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                tracing::warn!("cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
                let _ = tx.send(true);
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: leaving the network cleanly"),
                _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: leaving the network cleanly"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        let _ = tx.send(true);
    });
    rx
}
