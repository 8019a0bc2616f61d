//! Memory stays bounded whatever peers do: 50 identities each open 16 tensor streams of the
//! largest frame a run of the dev chain's shapes allows (a `[4, 64, 128]` activation in f32,
//! 131 KB), send all of it but the last byte, and stall. The receiver is a real process
//! (`sliver-p2p-node`); its resident memory is read from `/proc` before and while the streams
//! stall, and an honest peer's frames must keep flowing meanwhile.
//!
//! Without the bounds every stalled stream would hold its frame: 800 x 131 KB = 105 MB of
//! buffers, plus what the multiplexer parks unread. With them each identity reads at most
//! `max_inbound_per_peer` (4) frames at once within its per-peer budget (two frames), and the
//! rest are refused as busy.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::AsyncWriteExt;
use libp2p::identity::Keypair;
use sliver_p2p::network::TENSOR_PROTOCOL;
use sliver_p2p::{start, Direction, FrameHeader, NetworkConfig, NodeStatus, PeerId};
use sliver_wire::WireCodec;
use tokio::sync::watch;

const IDENTITIES: usize = 50;
const STREAMS: usize = 16;
const SHAPE: [usize; 3] = [4, 64, 128];

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

fn frame(mb: u64, fill: f32) -> (FrameHeader, Vec<u8>) {
    let n: usize = SHAPE.iter().product();
    let payload = sliver_wire::encode(WireCodec::F32, &SHAPE, &vec![fill; n]);
    let h = FrameHeader::for_payload(1, 1, 0, mb, 0, 0, Direction::Activation, &payload).unwrap();
    (h, payload)
}

struct Outcome {
    before: u64,
    rise: u64,
    opened: usize,
    calm: Duration,
    under_attack: Duration,
}

/// Runs the attack against a receiver started with `limits`.
async fn attack(limits: &[&str]) -> Outcome {
    let (_, sample) = frame(0, 0.0);
    let max_frame = sample.len() as u64;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sliver-p2p-node"))
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--max-frame-bytes", &max_frame.to_string()])
        .args(["--max-connections-per-ip", "128"])
        .args(limits)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sliver-p2p-node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let mut parts = line.split_whitespace().skip(1);
    let peer: PeerId = parts.next().unwrap().parse().unwrap();
    let addr: libp2p::Multiaddr = parts.next().unwrap().parse().unwrap();
    let pid = child.id();

    // An honest peer, warmed up: its frames are echoed back as gradients.
    let (_s, rx) = watch::channel(NodeStatus::default());
    let (honest, mut honest_in) =
        start(Keypair::generate_ed25519(), NetworkConfig::default(), rx).unwrap();
    honest.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    honest.dial(peer, addr.clone()).await.unwrap();
    let send_honest = |count: u64, base: u64| {
        let honest = honest.clone();
        async move {
            let t = Instant::now();
            for mb in 0..count {
                let (h, p) = frame(base + mb, 0.5);
                honest.send_frame(peer, &h, &p).await.unwrap();
            }
            t.elapsed()
        }
    };
    let calm = send_honest(20, 0).await;
    for _ in 0..20 {
        honest_in.frames.recv().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes(pid);

    let mut attackers = Vec::new();
    let mut held = Vec::new();
    let mut opened = 0usize;
    for i in 0..IDENTITIES {
        let (s, rx) = watch::channel(NodeStatus::default());
        let (c, inbound) =
            start(Keypair::generate_ed25519(), NetworkConfig::default(), rx).unwrap();
        c.dial(peer, addr.clone()).await.unwrap();
        for k in 0..STREAMS {
            let (h, p) = frame((i * STREAMS + k) as u64, 1.0);
            let head = h.encode();
            let Ok(mut st) = c.stream_control().open_stream(peer, TENSOR_PROTOCOL).await else {
                continue;
            };
            let wrote = async {
                st.write_all(&(head.len() as u16).to_le_bytes()).await?;
                st.write_all(&head).await?;
                st.write_all(&p[..p.len() - 1]).await?;
                st.flush().await
            };
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(300), wrote).await {
                opened += 1;
            }
            held.push(st);
        }
        attackers.push((c, inbound, s));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = rss_bytes(pid);
    // Honest frames keep flowing while every identity stalls its streams.
    let under_attack = tokio::time::timeout(Duration::from_secs(20), send_honest(20, 100))
        .await
        .expect("honest frames still flow");
    let rise = rss_bytes(pid).max(during).saturating_sub(before);
    drop(held);
    drop(attackers);
    drop(child.stdin.take());
    let _ = child.wait();
    Outcome { before, rise, opened, calm, under_attack }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identities_with_stalled_streams_cannot_exhaust_the_receiver() {
    let (_, sample) = frame(0, 0.0);
    // The same attack on a receiver with the per-peer bounds lifted, for comparison.
    let lifted = attack(&[
        "--max-inbound-per-peer",
        "16",
        "--max-peer-buffered-bytes",
        "4000000000",
        "--max-buffered-bytes",
        "8000000000",
    ])
    .await;
    let bounded = attack(&[]).await;
    for (name, o) in [("per-peer bounds lifted", &lifted), ("default bounds", &bounded)] {
        println!(
            "{name}: receiver RSS {:.1} MB before, +{:.1} MB with {IDENTITIES} identities x {STREAMS} stalled {}-byte streams ({} written but the last byte); 20 honest frames {:?} before, {:?} under attack",
            o.before as f64 / 1e6,
            o.rise as f64 / 1e6,
            sample.len(),
            o.opened,
            o.calm,
            o.under_attack,
        );
    }
    assert!(bounded.before > 0, "RSS readable from /proc");
    assert!(bounded.rise < 100 << 20, "RSS rose by {} bytes", bounded.rise);
    assert!(bounded.rise < lifted.rise, "the bounds are what keeps it down");
}
