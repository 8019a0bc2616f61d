//! A standalone node for tests and experiments across hosts or network namespaces: listens,
//! prints `READY <peer id> <address>`, and answers every tensor frame it accepts by sending the
//! same payload back to its sender as a gradient frame (an echo of the pipeline's round trip).
//!
//! `sliver-p2p-node --listen /ip4/0.0.0.0/tcp/0 [--max-frame-bytes N] [--max-connections-per-ip N]
//! [--max-inbound-per-peer N] [--max-peer-buffered-bytes N] [--max-buffered-bytes N]`;
//! stops when its standard input closes. The limits are the transport's (`NetworkConfig`); the
//! memory test runs it as the receiver that hostile peers try to exhaust.

use libp2p::identity::Keypair;
use sliver_p2p::{start, Direction, FrameHeader, NetworkConfig, NodeStatus};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

fn flag(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn number(name: &str) -> Option<u64> {
    let v = flag(name)?;
    match v.parse() {
        Ok(n) => Some(n),
        Err(_) => {
            eprintln!("error: {name} takes a number, not {v:?}");
            std::process::exit(2);
        }
    }
}

#[tokio::main]
async fn main() {
    let listen = flag("--listen").unwrap_or_else(|| "/ip4/127.0.0.1/tcp/0".into());
    let mut config = NetworkConfig::default();
    if let Some(n) = number("--max-frame-bytes") {
        config = config.with_max_frame(n);
    }
    if let Some(n) = number("--max-connections-per-ip") {
        config.max_connections_per_ip = n as u32;
    }
    if let Some(n) = number("--max-inbound-per-peer") {
        config.max_inbound_per_peer = n as usize;
    }
    if let Some(n) = number("--max-peer-buffered-bytes") {
        config.max_peer_buffered_bytes = n;
    }
    if let Some(n) = number("--max-buffered-bytes") {
        config.max_buffered_bytes = n;
    }
    let addr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: bad --listen address {listen:?}: {e}");
            std::process::exit(2);
        }
    };
    let (_status, rx) = watch::channel(NodeStatus::default());
    let (client, mut inbound) = match start(Keypair::generate_ed25519(), config, rx) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let bound = match client.listen(addr).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    println!("READY {} {bound}", client.peer_id());
    let echo = client.clone();
    tokio::spawn(async move {
        while let Some(f) = inbound.frames.recv().await {
            let h = &f.header;
            let back = FrameHeader::for_payload(
                h.run,
                h.epoch,
                h.step,
                h.micro_batch,
                h.route,
                h.sliver.saturating_add(1),
                Direction::Gradient,
                &f.payload,
            );
            let client = echo.clone();
            tokio::spawn(async move {
                if let Ok(back) = back {
                    if let Err(e) = client.send_frame(f.peer, &back, &f.payload).await {
                        eprintln!("echo to {} failed: {e}", f.peer);
                    }
                }
            });
        }
    });
    // Run until the parent closes our standard input.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    client.shutdown().await;
}
