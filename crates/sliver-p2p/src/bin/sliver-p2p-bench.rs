//! Throughput and latency of tensor frames between two nodes on this machine, against raw TCP
//! on the same loopback link (same message sizes, a 1-byte acknowledgement per message).
//!
//! `sliver-p2p-bench [--count N]` prints a table (recorded in docs/p2p.md).

use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use sliver_p2p::{start, Direction, FrameHeader, NetworkConfig, NodeStatus};
use sliver_wire::WireCodec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let count: usize = std::env::args()
        .skip_while(|a| a != "--count")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    println!("| frame | transport | latency, one at a time (ms, median) | throughput, 8 in flight (MB/s) | vs raw TCP |");
    println!("|---|---|---|---|---|");
    for (name, values) in [("32 KiB", 8 * 1024usize), ("1 MiB", 256 * 1024)] {
        let payload = sliver_wire::encode(WireCodec::F32, &[1, 1, values], &vec![0.5f32; values]);
        let (tcp_lat, tcp_tput) = raw_tcp(payload.len(), count).await;
        for quic in [false, true] {
            let (lat, tput) = p2p(&payload, count, quic).await;
            let t = if quic { "sliver-p2p, QUIC" } else { "sliver-p2p, TCP+noise+yamux" };
            println!("| {name} | {t} | {:.3} | {:.0} | {:.2}x |", ms(lat), tput, tput / tcp_tput);
        }
        println!("| {name} | raw TCP | {:.3} | {tcp_tput:.0} | 1.00x |", ms(tcp_lat));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn p2p(payload: &[u8], count: usize, quic: bool) -> (Duration, f64) {
    let mk = || {
        let (_tx, rx) = watch::channel(NodeStatus::default());
        std::mem::forget(_tx);
        start(Keypair::generate_ed25519(), NetworkConfig::default(), rx).expect("start")
    };
    let (a, _) = mk();
    let (b, mut inbound) = mk();
    tokio::spawn(async move { while inbound.frames.recv().await.is_some() {} });
    let listen = if quic { "/ip4/127.0.0.1/udp/0/quic-v1" } else { "/ip4/127.0.0.1/tcp/0" };
    let addr = b.listen(listen.parse().expect("addr")).await.expect("listen");
    a.dial(b.peer_id(), addr).await.expect("dial");
    let header =
        FrameHeader::for_payload(0, 0, 0, 0, 0, 0, Direction::Activation, payload).expect("header");
    let peer = b.peer_id();
    for _ in 0..5 {
        a.send_frame(peer, &header, payload).await.expect("warm-up");
    }
    let mut lat = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        a.send_frame(peer, &header, payload).await.expect("send");
        lat.push(t.elapsed());
    }
    let t = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (a, h, p) = (a.clone(), header.clone(), payload.to_vec());
            tokio::spawn(async move {
                for _ in 0..count / 8 {
                    a.send_frame(peer, &h, &p).await.expect("send");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let bytes = (count / 8 * 8 * payload.len()) as f64;
    a.shutdown().await;
    b.shutdown().await;
    (median(lat), bytes / t.elapsed().as_secs_f64() / 1e6)
}

async fn raw_tcp(len: usize, count: usize) -> (Duration, f64) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; len];
                while s.read_exact(&mut buf).await.is_ok() {
                    if s.write_all(&[1]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let msg = vec![7u8; len];
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut ack = [0u8; 1];
    let mut lat = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        s.write_all(&msg).await.expect("write");
        s.read_exact(&mut ack).await.expect("ack");
        lat.push(t.elapsed());
    }
    let t = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let msg = msg.clone();
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                s.set_nodelay(true).expect("nodelay");
                let mut ack = [0u8; 1];
                for _ in 0..count / 8 {
                    s.write_all(&msg).await.expect("write");
                    s.read_exact(&mut ack).await.expect("ack");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let bytes = (count / 8 * 8 * len) as f64;
    (median(lat), bytes / t.elapsed().as_secs_f64() / 1e6)
}
