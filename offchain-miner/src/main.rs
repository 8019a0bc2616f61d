//! # sliver-miner
//!
//! The program a miner operator runs: `keys` (create or show the account and the node key),
//! `register` (the registry pallet, with the PeerId ownership proof), `run` (train the assigned
//! sliver with its neighbours), `status` and `deregister`. Configuration comes from a TOML
//! file (`--config`), overridden by flags and `SLIVER_*` environment variables; the defaults
//! work against a local development node. SIGTERM and Ctrl-C make `run` leave the pipeline
//! cleanly (as the pause file does) and exit.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sliver_chain::{Backend, ChainClient, HardwareProfile, Role};
use sliver_miner::config::MinerConfig;
use sliver_miner::keys;
use sliver_miner::miner::RunOptions;
use sliver_miner::run::run;

const PROGRAM: &str = "sliver-miner";

/// Sliver miner: trains one sliver of a language model and gets paid for verified work.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: sliver_operator::config::CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the account and node key (PeerId); `--generate` creates a new account key file.
    Keys {
        /// Create `<data-dir>/account.key` with a fresh random seed if it does not exist.
        #[arg(long)]
        generate: bool,
    },
    /// Register as a miner (holds the registration deposit).
    Register {
        /// Address others dial, as a multiaddr (repeatable) [default: the listen address].
        #[arg(long = "address")]
        addresses: Vec<String>,
        /// Self-measured throughput in tokens per second (used to balance slivers).
        #[arg(long, default_value_t = 5_000)]
        throughput: u64,
        /// Memory available for training, MiB.
        #[arg(long, default_value_t = 8_192)]
        memory_mib: u32,
    },
    /// Train the assigned sliver until stopped.
    Run {
        /// libp2p listen address [default: /ip4/0.0.0.0/tcp/30555].
        #[arg(long, env = "SLIVER_LISTEN")]
        listen: Option<String>,
        /// The training text (file, directory of .txt files, or JSON Lines).
        #[arg(long, env = "SLIVER_DATA")]
        data: Option<PathBuf>,
        /// Burn device: flex (CPU), or wgpu / cuda in a build with that feature
        /// (`cargo build -p sliver-miner --features wgpu`).
        #[arg(long)]
        device: Option<String>,
        /// Wire codec of activations and gradients: f32, bf16, int8.
        #[arg(long)]
        codec: Option<String>,
        /// Prometheus metrics port on 127.0.0.1 (0: off).
        #[arg(long)]
        metrics_port: Option<u16>,
        /// Listen through this relay (a validator's multiaddr ending in /p2p/<peer id>).
        #[arg(long, env = "SLIVER_RELAY")]
        relay: Option<String>,
        /// Turn mDNS LAN discovery off.
        #[arg(long)]
        no_mdns: bool,
        /// Stop after this many epoch boundaries.
        #[arg(long)]
        epochs: Option<u64>,
        /// Stop at the boundary into this chain epoch.
        #[arg(long)]
        until_epoch: Option<u64>,
    },
    /// Show registration, assignment, balance and the latest weight commitment.
    Status,
    /// Give up the uid (the deposit unbonds over the chain's unbonding period).
    Deregister,
}

/// Keeps freed tensor buffers for reuse across training steps (see `sliver_engine::alloc`).
#[global_allocator]
static GLOBAL: sliver_engine::alloc::TrainingAllocator = sliver_engine::alloc::TrainingAllocator;

#[tokio::main]
async fn main() {
    sliver_engine::alloc::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p=warn,libp2p_kad=error,sliver_p2p=warn".into()),
        )
        .init();
    if let Err(e) = real_main(Args::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn real_main(args: Args) -> anyhow::Result<()> {
    let mut cfg = MinerConfig::load(args.common.config.as_deref())?;
    args.common.apply(sliver_operator::config::Common {
        rpc_url: &mut cfg.rpc_url,
        insecure_rpc: &mut cfg.insecure_rpc,
        data_dir: &mut cfg.data_dir,
        account: &mut cfg.account,
    });
    cfg.check_rpc()?;
    match args.command {
        Command::Keys { generate } => {
            if generate {
                let (path, created) = keys::generate_account(&cfg.data_dir)?;
                println!(
                    "account key file: {} ({})",
                    path.display(),
                    if created { "created" } else { "exists, kept" }
                );
            }
            let account = keys::load_account(cfg.account.as_deref(), &cfg.data_dir, PROGRAM)?;
            let node = keys::node_key(&cfg.data_dir)?;
            println!("account: {}", sliver_chain::account_of(&account));
            println!(
                "peer id: {} (key in {}/node.key)",
                node.public().to_peer_id(),
                cfg.data_dir.display()
            );
        }
        Command::Register { addresses, throughput, memory_mib } => {
            let account = keys::load_account(cfg.account.as_deref(), &cfg.data_dir, PROGRAM)?;
            let node = keys::node_key(&cfg.data_dir)?;
            let chain = ChainClient::connect(&cfg.rpc_url).await?;
            let who = sliver_chain::account_of(&account);
            if let Some(uid) = chain.uid_of(&who).await? {
                println!("{who} is already registered as uid {uid}");
                return Ok(());
            }
            if chain.free_balance(&who).await? == 0 {
                anyhow::bail!("account {who} has no funds on {}: the registration deposit and fees need some; transfer funds to it first", cfg.rpc_url);
            }
            let addresses = if addresses.is_empty() { default_addresses(&cfg) } else { addresses };
            let peer_key = sliver_p2p::keys::ed25519_public(&node)?;
            let hardware = HardwareProfile { backend: Backend::Cpu, memory_mib, throughput };
            let sign = |m: &[u8]| sliver_p2p::keys::sign_ownership(&node, m).unwrap_or([0; 64]);
            let uid = chain
                .register_signed(&account, Role::Miner, peer_key, sign, &addresses, hardware)
                .await
                .context("registration failed")?;
            println!(
                "registered {who} as miner uid {uid}, peer id {}, addresses {addresses:?}",
                node.public().to_peer_id()
            );
        }
        Command::Run {
            listen,
            data,
            device,
            codec,
            metrics_port,
            relay,
            no_mdns,
            epochs,
            until_epoch,
        } => {
            if let Some(v) = listen {
                cfg.listen = v;
            }
            if data.is_some() {
                cfg.data = data;
            }
            if let Some(v) = device {
                cfg.device = v;
            }
            if let Some(v) = codec {
                cfg.codec = v;
            }
            if let Some(v) = metrics_port {
                cfg.metrics_port = v;
            }
            if relay.is_some() {
                cfg.relay = relay;
            }
            if no_mdns {
                cfg.mdns = false;
            }
            run(cfg, RunOptions { epochs, until_epoch }).await?;
        }
        Command::Status => {
            let account = keys::load_account(cfg.account.as_deref(), &cfg.data_dir, PROGRAM)?;
            let chain = ChainClient::connect(&cfg.rpc_url).await?;
            let who = sliver_chain::account_of(&account);
            let balance = chain.free_balance(&who).await?;
            let (info, _) = chain.epoch_info().await?;
            println!(
                "account {who}: free balance {}.{:012} SLV",
                balance / 1_000_000_000_000,
                balance % 1_000_000_000_000
            );
            println!("chain {}: epoch {} ({:?})", cfg.rpc_url, info.epoch, info.phase);
            let ledger_path = sliver_miner::ledger::Ledger::path(&cfg.data_dir);
            let mut ledger = sliver_miner::ledger::Ledger::load(&ledger_path)?;
            ledger.for_account(&who.to_string());
            println!(
                "contributed {:.2} hours ({:.0} s) of training in {} windows; earned {} in {} payouts (scanned to block {})",
                ledger.hours(),
                ledger.hours() * 3600.0,
                ledger.runs.values().map(|r| r.windows).sum::<u64>(),
                sliver_miner::ledger::slv(ledger.earned()),
                ledger.payouts,
                ledger.scanned_to,
            );
            for (run, r) in &ledger.runs {
                println!(
                    "  {run}: {:.2} h, {} tokens, {} steps",
                    r.trained_secs / 3600.0,
                    r.tokens,
                    r.steps
                );
            }
            match chain.uid_of(&who).await? {
                None => println!("not registered (run `sliver-miner register`)"),
                Some(uid) => {
                    let sliver = chain
                        .assignments()
                        .await?
                        .into_iter()
                        .find(|(u, _)| *u == uid)
                        .map(|(_, s)| s);
                    println!(
                        "uid {uid}, sliver {}",
                        sliver.map(|s| s.to_string()).unwrap_or_else(|| "not assigned yet".into())
                    );
                    match chain.weight_commitment(uid).await? {
                        Some(c) => println!(
                            "latest weight commitment: epoch {}, step {}, {} bytes, hash {:?}",
                            c.epoch, c.step, c.size, c.hash
                        ),
                        None => println!("no weight commitment yet"),
                    }
                }
            }
        }
        Command::Deregister => {
            let account = keys::load_account(cfg.account.as_deref(), &cfg.data_dir, PROGRAM)?;
            let chain = ChainClient::connect(&cfg.rpc_url).await?;
            chain.deregister(&account).await?;
            println!("deregistered {}", sliver_chain::account_of(&account));
        }
    }
    Ok(())
}

/// The listen address with 0.0.0.0 replaced by 127.0.0.1 (a local network's default).
fn default_addresses(cfg: &MinerConfig) -> Vec<String> {
    vec![cfg.listen.replace("/0.0.0.0/", "/127.0.0.1/")]
}
