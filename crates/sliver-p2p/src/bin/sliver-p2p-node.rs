//! A standalone node for tests and experiments across hosts or network namespaces: listens,
//! prints `READY <peer id> <address>`, and answers every tensor frame it accepts by sending the
//! same payload back to its sender as a gradient frame (an echo of the pipeline's round trip).
//!
//! `sliver-p2p-node --listen /ip4/0.0.0.0/tcp/0` ; stops when its standard input closes.

use libp2p::identity::Keypair;
use sliver_p2p::{start, Direction, FrameHeader, NetworkConfig, NodeStatus};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

#[tokio::main]
async fn main() {
    let listen = std::env::args()
        .skip_while(|a| a != "--listen")
        .nth(1)
        .unwrap_or_else(|| "/ip4/127.0.0.1/tcp/0".into());
    let addr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: bad --listen address {listen:?}: {e}");
            std::process::exit(2);
        }
    };
    let (_status, rx) = watch::channel(NodeStatus::default());
    let (client, mut inbound) =
        match start(Keypair::generate_ed25519(), NetworkConfig::default(), rx) {
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
