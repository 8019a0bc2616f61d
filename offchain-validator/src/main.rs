//! # sliver-validator
//!
//! The program a validator operator runs: `keys` (create or show the account and the node
//! key), `register` (as a validator, with the stake bond), `run` (audit every miner each epoch
//! and set weights on chain), `status` and `deregister`. Configuration comes from a TOML file
//! (`--config`), overridden by flags and `SLIVER_*` environment variables; the defaults work
//! against a local development node. See `docs/validator.md`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sliver_chain::{Backend, ChainClient, HardwareProfile, Role};
use sliver_operator::keys;
use sliver_validator::config::ValidatorConfig;
use sliver_validator::run::{run, PROGRAM};
use sliver_validator::validator::RunOptions;

/// One SLV in the chain's smallest unit.
const UNIT: u128 = 1_000_000_000_000;

/// Sliver validator: re-checks samples of miners' work and sets weights on chain.
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
    /// Register as a validator and bond stake (the deposit is held, the stake bonded).
    Register {
        /// Address miners dial, as a multiaddr (repeatable) [default: the listen address].
        #[arg(long = "address")]
        addresses: Vec<String>,
        /// Stake to bond, in SLV (the chain's minimum is 100).
        #[arg(long, default_value_t = 100)]
        stake: u128,
    },
    /// Audit miners and set weights until stopped.
    Run {
        /// libp2p listen address [default: /ip4/0.0.0.0/tcp/30556].
        #[arg(long, env = "SLIVER_LISTEN")]
        listen: Option<String>,
        /// The run's training text (first-sliver inputs are rebuilt from it).
        #[arg(long, env = "SLIVER_DATA")]
        data: Option<PathBuf>,
        /// Fraction of each miner's micro-batches replayed per epoch [default: 0.05].
        #[arg(long)]
        sample_rate: Option<f64>,
        /// Prometheus metrics port on 127.0.0.1 (0: off) [default: 9617].
        #[arg(long)]
        metrics_port: Option<u16>,
        /// Serve libp2p relay circuits for miners behind NAT.
        #[arg(long, env = "SLIVER_SERVE_RELAY")]
        relay: bool,
        /// Stop after this many epoch boundaries.
        #[arg(long)]
        epochs: Option<u64>,
        /// Stop at the boundary into this chain epoch.
        #[arg(long)]
        until_epoch: Option<u64>,
    },
    /// Show registration, stake, balance and this epoch's weights.
    Status,
    /// Give up the uid (deposit and stake unbond over the chain's unbonding period).
    Deregister,
}

#[tokio::main]
async fn main() {
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

fn slv(amount: u128) -> String {
    format!("{}.{:012} SLV", amount / UNIT, amount % UNIT)
}

async fn real_main(args: Args) -> anyhow::Result<()> {
    let mut cfg = ValidatorConfig::load(args.common.config.as_deref())?;
    args.common.apply(sliver_operator::config::Common {
        rpc_url: &mut cfg.rpc_url,
        insecure_rpc: &mut cfg.insecure_rpc,
        data_dir: &mut cfg.data_dir,
        account: &mut cfg.account,
    });
    cfg.check()?;
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
                "peer id: {} (key in {}/{})",
                node.public().to_peer_id(),
                cfg.data_dir.display(),
                sliver_p2p::keys::KEY_FILE
            );
        }
        Command::Register { addresses, stake } => {
            let account = keys::load_account(cfg.account.as_deref(), &cfg.data_dir, PROGRAM)?;
            let node = keys::node_key(&cfg.data_dir)?;
            let chain = ChainClient::connect(&cfg.rpc_url).await?;
            let who = sliver_chain::account_of(&account);
            let amount = stake.saturating_mul(UNIT);
            if let Some(uid) = chain.uid_of(&who).await? {
                println!("{who} is already registered as uid {uid}");
                return Ok(());
            }
            let free = chain.free_balance(&who).await?;
            if free <= amount {
                anyhow::bail!(
                    "account {who} has {} on {}: the stake ({}), the registration deposit and fees need more; transfer funds to it first",
                    slv(free),
                    cfg.rpc_url,
                    slv(amount)
                );
            }
            let addresses = if addresses.is_empty() {
                vec![cfg.listen.replace("/0.0.0.0/", "/127.0.0.1/")]
            } else {
                addresses
            };
            let peer_key = sliver_p2p::keys::ed25519_public(&node)?;
            // A validator trains nothing; the registry asks every participant for a profile.
            let hardware =
                HardwareProfile { backend: Backend::Cpu, memory_mib: 1024, throughput: 1 };
            let sign = |m: &[u8]| sliver_p2p::keys::sign_ownership(&node, m).unwrap_or([0; 64]);
            let uid = chain
                .register_signed(&account, Role::Validator, peer_key, sign, &addresses, hardware)
                .await
                .context("registration failed")?;
            chain.bond(&account, amount).await.with_context(|| {
                format!("registered as uid {uid}, but bonding {} failed (the chain's minimum validator stake is 100 SLV)", slv(amount))
            })?;
            println!(
                "registered {who} as validator uid {uid} with {} bonded, peer id {}, addresses {addresses:?}",
                slv(amount),
                node.public().to_peer_id()
            );
        }
        Command::Run { listen, data, sample_rate, metrics_port, relay, epochs, until_epoch } => {
            if let Some(v) = listen {
                cfg.listen = v;
            }
            if data.is_some() {
                cfg.data = data;
            }
            if let Some(v) = sample_rate {
                cfg.sample_rate = v;
            }
            if let Some(v) = metrics_port {
                cfg.metrics_port = v;
            }
            if relay {
                cfg.relay = true;
            }
            run(cfg, RunOptions { epochs, until_epoch }).await?;
        }
        Command::Status => {
            let account = keys::load_account(cfg.account.as_deref(), &cfg.data_dir, PROGRAM)?;
            let chain = ChainClient::connect(&cfg.rpc_url).await?;
            let who = sliver_chain::account_of(&account);
            let (info, _) = chain.epoch_info().await?;
            println!("account {who}: free balance {}", slv(chain.free_balance(&who).await?));
            println!("chain {}: epoch {} ({:?})", cfg.rpc_url, info.epoch, info.phase);
            match chain.uid_of(&who).await? {
                None => println!("not registered (run `{PROGRAM} register`)"),
                Some(uid) => println!("uid {uid}, stake {}", slv(chain.stake_of(&who).await?)),
            }
            let reveals = sliver_validator::reveal::Reveals::open(&cfg.data_dir)?;
            match reveals.load(info.epoch) {
                Some(p) => println!(
                    "weights of epoch {} (auditing {}): {} miners, committed {}, revealed {}",
                    p.epoch,
                    p.audited,
                    p.uids.len(),
                    p.committed,
                    p.revealed
                ),
                None => println!("no weights set this epoch yet"),
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
