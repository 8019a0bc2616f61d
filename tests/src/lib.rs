//! # sliver-e2e
//!
//! Helpers for end-to-end tests that start real processes on loopback: the `sliver-node`
//! binary ([`DevNode`]) and the workspace's own binaries such as `sliver-miner` ([`Proc`]).
//!
//! The node binary is found in this order: `$SLIVER_NODE_BIN`; `$CARGO_TARGET_DIR/debug/
//! sliver-node`; `node/target/debug/sliver-node`. Build it first with `cd node && cargo build`
//! (`.ci/run` does). Every process is killed when its handle is dropped, also when a test
//! fails or panics.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// Where the `sliver-node` binary is, or a message that says how to build it.
pub fn node_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SLIVER_NODE_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("SLIVER_NODE_BIN={} is not a file", p.display()))
        };
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut candidates = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("debug/sliver-node"));
    }
    candidates.push(repo.join("node/target/debug/sliver-node"));
    candidates.push(repo.join("target/debug/sliver-node"));
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        "sliver-node binary not found: build it with `cd node && cargo build` or set SLIVER_NODE_BIN"
            .to_string()
    })
}

/// Where a binary of the main workspace (`sliver-miner`, ...) is: `$CARGO_TARGET_DIR/debug/`
/// or `target/debug/`. `cargo test --workspace` builds them before running any test.
pub fn workspace_binary(name: &str) -> Result<PathBuf, String> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut candidates = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("debug").join(name));
    }
    candidates.push(repo.join("target/debug").join(name));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} binary not found: build it with `cargo build --bin {name}`"))
}

/// A child process whose standard output and error lines are collected; killed on drop.
pub struct Proc {
    child: Child,
    name: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `bin` with `args` and extra environment `env`.
    pub fn spawn(
        name: &str,
        bin: &std::path::Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let mut child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        for stream in [Box::new(out) as Box<dyn std::io::Read + Send>, Box::new(err)] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().map(|mut l| l.push(line)).ok();
                }
            });
        }
        Ok(Proc { child, name: name.to_string(), log })
    }

    /// Waits for the process to exit, at most `timeout`; returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100)); // let the readers drain
                return Ok(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} still running after {timeout:?}\n{}",
                    self.name,
                    self.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the process now (as `kill -9` would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (what a service manager's stop sends); the process decides how to end.
    pub fn terminate(&self) -> Result<(), String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -TERM {} failed", self.child.id()))
        }
    }

    /// Every line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The last `n` lines, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        format!("--- {} ---\n{}", self.name, log[log.len().saturating_sub(n)..].join("\n"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `sliver-node --dev --tmp` process. Killed on drop.
pub struct DevNode {
    child: Child,
    /// WebSocket RPC URL of the node (127.0.0.1, a port the node chose).
    pub rpc_url: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl DevNode {
    /// Starts a development node with a temporary database and waits until its RPC server
    /// listens. The OS picks free ports (RPC port 0, P2P port 0), so tests can run in parallel.
    pub fn start() -> Result<Self, String> {
        Self::start_with_args(&[])
    }

    /// Like [`DevNode::start`] with extra command-line arguments.
    pub fn start_with_args(extra: &[&str]) -> Result<Self, String> {
        let mut args = vec!["--dev", "--port", "0"];
        args.extend_from_slice(extra);
        Self::spawn(&args)
    }

    /// Starts `sliver-node` with a temporary database, an OS-chosen RPC port, no Prometheus
    /// and no mDNS, plus `args` (which name the chain and the P2P port).
    pub fn spawn(args: &[&str]) -> Result<Self, String> {
        Self::spawn_with(&["--tmp", "--rpc-port", "0"], args)
    }

    /// A development node whose database lives in `base_path` and whose RPC server listens on
    /// `rpc_port`: killing it and starting it again on the same two resumes the same chain at
    /// the same URL (a node restart under running clients).
    pub fn start_persistent(base_path: &std::path::Path, rpc_port: u16) -> Result<Self, String> {
        let base = base_path.display().to_string();
        let port = rpc_port.to_string();
        Self::spawn_with(&["--base-path", &base, "--rpc-port", &port], &["--dev", "--port", "0"])
    }

    /// Kills the node at once, as `kill -9` would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn spawn_with(storage: &[&str], args: &[&str]) -> Result<Self, String> {
        let bin = node_binary()?;
        let mut child = Command::new(&bin)
            .args(storage)
            .args(["--no-prometheus", "--no-mdns"])
            .args(["--no-telemetry", "--log", "info"])
            .args(args)
            .args(std::env::var("SLIVER_NODE_EXTRA_ARGS").unwrap_or_default().split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = rpc_url_from_log(&line) {
                    let _ = tx.send(url);
                }
                log2.lock().map(|mut l| l.push(line)).ok();
            }
        });
        let mut node = Self { child, rpc_url: String::new(), log };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(url) => {
                    node.rpc_url = url;
                    return Ok(node);
                }
                Err(_) if Instant::now() > deadline => {
                    return Err(format!(
                        "node did not open its RPC port within 120 s\n{}",
                        node.log_tail(40)
                    ))
                }
                Err(_) => {
                    if let Ok(Some(status)) = node.child.try_wait() {
                        return Err(format!(
                            "node exited early with {status}\n{}",
                            node.log_tail(40)
                        ));
                    }
                }
            }
        }
    }

    /// A chain client connected to this node (retrying for 30 s while it starts); panics with
    /// the node's log when it cannot connect.
    pub async fn connect(&self) -> sliver_chain::ChainClient {
        sliver_chain::ChainClient::connect_with_retry(&self.rpc_url, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.rpc_url, self.log_tail(30)))
    }

    /// The last `n` lines the node logged, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        log[log.len().saturating_sub(n)..].join("\n")
    }

    /// The node's libp2p PeerId, from its start-up log.
    pub fn peer_id(&self) -> Option<String> {
        let log = self.log.lock().ok()?;
        log.iter().find_map(|l| {
            l.split("Local node identity is: ").nth(1).map(|id| id.trim().to_string())
        })
    }
}

impl Drop for DevNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `Running JSON-RPC server: addr=127.0.0.1:40123,[::1]:40123` into a ws URL.
fn rpc_url_from_log(line: &str) -> Option<String> {
    let rest = line.split("Running JSON-RPC server: addr=").nth(1)?;
    let first = rest.split([',', ' ']).next()?.trim();
    let port = first.rsplit(':').next()?.parse::<u16>().ok()?;
    Some(format!("ws://127.0.0.1:{port}"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on loopback")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rpc_address_from_node_log() {
        let line = "2026-11-25 02:40:00 Running JSON-RPC server: addr=127.0.0.1:40123,[::1]:40125";
        assert_eq!(rpc_url_from_log(line).as_deref(), Some("ws://127.0.0.1:40123"));
        assert_eq!(rpc_url_from_log("Imported #1"), None);
    }
}

/// The training text: `../shared/data/tinyshakespeare.txt` when the checkout sits beside it,
/// else a generated text file.
pub fn corpus() -> PathBuf {
    let shared =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/tinyshakespeare.txt");
    if shared.is_file() {
        return shared;
    }
    let path = std::env::temp_dir().join(format!("sliver-e2e-corpus-{}.txt", std::process::id()));
    let text: String =
        (0..40_000).map(|i| ["to be ", "or not ", "that is ", "the question\n"][i % 4]).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// `sliver-miner` arguments: node URL, data directory and account, then `args`.
pub fn miner_args(args: &[&str], rpc: &str, dir: &std::path::Path, account: &str) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--rpc-url".into(),
        rpc.into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--account".into(),
        account.into(),
    ];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// Registers each of `accounts` as a miner with `sliver-miner register`, announcing a free
/// port of 127.0.0.1, with data directory `<dir>/m<index>`; returns the ports. Panics with the
/// command's output when a registration fails.
pub fn register_miners(
    bin: &std::path::Path,
    rpc: &str,
    dir: &std::path::Path,
    accounts: &[&str],
) -> Vec<u16> {
    let mut ports = Vec::new();
    for (i, account) in accounts.iter().enumerate() {
        let port = free_port();
        let addr = format!("/ip4/127.0.0.1/tcp/{port}");
        let data = dir.join(format!("m{i}"));
        let args = miner_args(&["register", "--address", &addr], rpc, &data, account);
        let mut p = Proc::spawn("register", bin, &args, &[]).expect("start sliver-miner register");
        assert_eq!(p.wait(Duration::from_secs(60)).unwrap(), 0, "{}", p.log_tail(20));
        assert!(p.log().iter().any(|l| l.contains("as miner uid")), "{}", p.log_tail(10));
        ports.push(port);
    }
    ports
}

/// What every `sliver-miner run` of a test shares: the node, the training text, and the chain
/// epoch to stop at.
pub struct MinerRun<'a> {
    /// Node WebSocket URL.
    pub rpc: &'a str,
    /// Training text.
    pub data: &'a std::path::Path,
    /// `--until-epoch`.
    pub until: &'a str,
}

impl MinerRun<'_> {
    /// Starts `sliver-miner run` for `account` with data directory `dir`, listening on
    /// 127.0.0.1:`port`, metrics and mDNS off.
    pub fn spawn(
        &self,
        bin: &std::path::Path,
        dir: &std::path::Path,
        account: &str,
        port: u16,
    ) -> Proc {
        self.spawn_with(bin, dir, account, port, &[])
    }

    /// [`MinerRun::spawn`] with more environment variables (e.g. `SLIVER_CHEAT` for a miner
    /// built with the test-only `cheat` feature).
    pub fn spawn_with(
        &self,
        bin: &std::path::Path,
        dir: &std::path::Path,
        account: &str,
        port: u16,
        env: &[(&str, &str)],
    ) -> Proc {
        let mut vars = vec![("RUST_LOG", "info,libp2p=warn,sliver_p2p=warn")];
        vars.extend_from_slice(env);
        let args = run_args(self.rpc, self.data, self.until, dir, account, port, &["--no-mdns"]);
        Proc::spawn(&format!("miner {account}"), bin, &args, &vars).expect("start sliver-miner")
    }
}

/// The arguments of `run` for a miner or validator: listening on 127.0.0.1:`port`, metrics
/// off, until epoch `until`, with `extra` flags.
fn run_args(
    rpc: &str,
    data: &std::path::Path,
    until: &str,
    dir: &std::path::Path,
    account: &str,
    port: u16,
    extra: &[&str],
) -> Vec<String> {
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let data = data.to_str().unwrap_or_default();
    let mut args = vec!["run", "--listen", &listen, "--data", data, "--metrics-port", "0"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--until-epoch", until]);
    miner_args(&args, rpc, dir, account)
}

/// The `SUMMARY key=value ...` line a miner prints when its run ends, as a map.
pub fn summary(p: &Proc) -> std::collections::BTreeMap<String, String> {
    p.log()
        .iter()
        .find(|l| l.starts_with("SUMMARY "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls the best block until some epoch at or after `from` is in `phase` with at least three
/// blocks of the phase left (so that a transaction sent now lands inside it); returns the epoch.
pub async fn wait_for_phase(
    client: &sliver_chain::ChainClient,
    from: u32,
    phase: sliver_chain::Phase,
    timeout: Duration,
) -> u32 {
    let start = Instant::now();
    loop {
        let (info, best) = client.epoch_info().await.expect("epoch info");
        if info.epoch >= from && info.phase == phase && info.phase_end.saturating_sub(best) >= 3 {
            return info.epoch;
        }
        assert!(start.elapsed() < timeout, "{phase:?} of epoch {from}+ not reached: at {info:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Registers `account` as a validator with `stake` SLV bonded, its data in `dir`; returns the
/// port it registered (127.0.0.1).
pub fn register_validator(
    bin: &std::path::Path,
    rpc: &str,
    dir: &std::path::Path,
    account: &str,
    stake: u32,
) -> u16 {
    let port = free_port();
    let addr = format!("/ip4/127.0.0.1/tcp/{port}");
    let stake = stake.to_string();
    let args = miner_args(&["register", "--address", &addr, "--stake", &stake], rpc, dir, account);
    let mut p = Proc::spawn("register", bin, &args, &[]).expect("start sliver-validator register");
    assert_eq!(p.wait(Duration::from_secs(60)).unwrap(), 0, "{}", p.log_tail(20));
    assert!(p.log().iter().any(|l| l.contains("as validator uid")), "{}", p.log_tail(10));
    port
}

/// What every `sliver-validator run` of a test shares.
pub struct ValidatorRun<'a> {
    /// Node WebSocket URL.
    pub rpc: &'a str,
    /// Training text.
    pub data: &'a std::path::Path,
    /// `--until-epoch`.
    pub until: &'a str,
}

impl ValidatorRun<'_> {
    /// Starts `sliver-validator run` for `account` with data directory `dir`, listening on
    /// 127.0.0.1:`port`, metrics off.
    pub fn spawn(
        &self,
        bin: &std::path::Path,
        dir: &std::path::Path,
        account: &str,
        port: u16,
    ) -> Proc {
        self.spawn_with(bin, dir, account, port, &[])
    }

    /// [`ValidatorRun::spawn`] with extra environment variables.
    pub fn spawn_with(
        &self,
        bin: &std::path::Path,
        dir: &std::path::Path,
        account: &str,
        port: u16,
        env: &[(&str, &str)],
    ) -> Proc {
        let args = run_args(self.rpc, self.data, self.until, dir, account, port, &[]);
        Proc::spawn(&format!("validator {account}"), bin, &args, env)
            .expect("start sliver-validator")
    }
}
