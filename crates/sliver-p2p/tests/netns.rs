//! Two hosts in network namespaces joined by a veth pair with a shaped link, standing in for a
//! home connection. Needs root and iproute2; where namespaces cannot be created the test says
//! so on its output and skips. Latency needs the kernel's `netem` qdisc; where it is missing
//! (this project's CI kernel has no `sch_netem`) the link is only rate-limited and the test says
//! that too.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use sliver_p2p::{
    start, ControlRequest, Direction, FrameHeader, NetworkConfig, NodeStatus, PeerId,
};
use sliver_wire::WireCodec;
use tokio::sync::watch;

fn sh(args: &[&str]) -> Result<(), String> {
    let out =
        Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A namespace with a veth link to the test's own namespace; removed on drop.
struct Link {
    ns: String,
    host_if: String,
    netem: bool,
}

impl Link {
    fn create(tag: u32) -> Result<Link, String> {
        let ns = format!("sliver-t{tag}");
        let host_if = format!("svh{tag}");
        let ns_if = format!("svn{tag}");
        sh(&["ip", "netns", "add", &ns])?;
        let mut link = Link { ns, host_if, netem: false };
        let (ns, host_if) = (link.ns.clone(), link.host_if.clone());
        let net = format!("10.{}.{}", 100 + tag % 100, tag / 100 % 250);
        sh(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if])?;
        sh(&["ip", "link", "set", &ns_if, "netns", &ns])?;
        sh(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", &host_if])?;
        sh(&["ip", "link", "set", &host_if, "up"])?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{net}.2/24"),
            "dev",
            &ns_if,
        ])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", &ns_if, "up"])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        // 100 Mbit/s each way, plus 25 ms each way (50 ms round trip) where netem exists.
        let netem = sh(&[
            "tc", "qdisc", "add", "dev", &host_if, "root", "netem", "delay", "25ms", "rate",
            "100mbit",
        ])
        .and_then(|_| {
            sh(&[
                "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", &ns_if, "root", "netem",
                "delay", "25ms", "rate", "100mbit",
            ])
        });
        link.netem = netem.is_ok();
        if !link.netem {
            println!("NOTE: tc netem is not available here ({}); the link is rate-limited with tbf only, without added latency", netem.unwrap_err());
            sh(&[
                "tc", "qdisc", "add", "dev", &host_if, "root", "tbf", "rate", "100mbit", "burst",
                "64kb", "latency", "50ms",
            ])?;
            sh(&[
                "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", &ns_if, "root", "tbf",
                "rate", "100mbit", "burst", "64kb", "latency", "50ms",
            ])?;
        }
        Ok(link)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.ns]);
        let _ = sh(&["ip", "link", "del", &self.host_if]);
    }
}

struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cross_a_shaped_link_between_namespaces() {
    let tag = std::process::id() % 20_000;
    let link = match Link::create(tag) {
        Ok(l) => l,
        Err(e) => {
            println!(
                "SKIPPED: cannot build network namespaces here (needs root and iproute2): {e}"
            );
            return;
        }
    };
    let net = format!("10.{}.{}", 100 + tag % 100, tag / 100 % 250);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &link.ns, env!("CARGO_BIN_EXE_sliver-p2p-node"), "--listen"])
        .arg(format!("/ip4/{net}.2/tcp/0"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the node in the namespace");
    let stdout = child.stdout.take().unwrap();
    let helper = Helper(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let mut parts = line.split_whitespace();
    assert_eq!(parts.next(), Some("READY"), "{line}");
    let peer: PeerId = parts.next().unwrap().parse().unwrap();
    let addr: libp2p::Multiaddr = parts.next().unwrap().parse().unwrap();

    let (_status, rx) = watch::channel(NodeStatus::default());
    let (client, mut inbound) =
        start(Keypair::generate_ed25519(), NetworkConfig::default(), rx).unwrap();
    client.listen(format!("/ip4/{net}.1/tcp/0").parse().unwrap()).await.unwrap();
    client.dial(peer, addr).await.unwrap();

    let t = Instant::now();
    client.request(peer, ControlRequest::Ping { nonce: 1 }).await.unwrap();
    let rtt = t.elapsed();
    if link.netem {
        assert!(rtt >= Duration::from_millis(50), "netem adds 50 ms round trip, measured {rtt:?}");
    }

    // 8 frames of 1 MiB forward; each comes back as a gradient frame.
    let values = 256 * 1024;
    let payload = sliver_wire::encode(WireCodec::F32, &[1, 1, values], &vec![0.25f32; values]);
    let t = Instant::now();
    for mb in 0..8 {
        let h =
            FrameHeader::for_payload(1, 1, 1, mb, 0, 0, Direction::Activation, &payload).unwrap();
        let r = client.send_frame(peer, &h, &payload).await.unwrap();
        assert!(r.verify(&client.peer_id(), &peer));
    }
    let forward = t.elapsed();
    let mut back = Vec::new();
    for _ in 0..8 {
        let f = tokio::time::timeout(Duration::from_secs(30), inbound.frames.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(f.peer, peer);
        assert_eq!(f.header.direction, Direction::Gradient);
        assert_eq!(f.payload, payload);
        back.push(f.header.micro_batch);
    }
    back.sort();
    assert_eq!(back, (0..8).collect::<Vec<_>>());
    let mbps = 8.0 * payload.len() as f64 * 8.0 / forward.as_secs_f64() / 1e6;
    println!(
        "shaped link: ping {rtt:?}, 8 x 1 MiB forward in {forward:?} ({mbps:.0} Mbit/s), netem: {}",
        link.netem
    );
    // The 100 Mbit/s shaping is in force: 64 Mbit cannot cross it faster than ~0.6 s.
    assert!(mbps < 110.0, "the rate limit holds: {mbps:.0} Mbit/s");
    client.shutdown().await;
    drop(helper);
}
