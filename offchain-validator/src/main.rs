//! # sliver-validator
//!
//! The program a validator operator runs. For now it is the thin first step of the validator: it
//! connects to a Sliver node and follows the finalized head. Audits by replay and weight
//! setting arrive with the validator issue; the chain client it uses is already the real one,
//! and it shares the miner's operator plumbing (`sliver-operator`): the same RPC policy now,
//! keys, the chain task and the metrics endpoint when it audits.

use clap::Parser;
use std::time::Duration;

/// Sliver validator: re-checks samples of miners' work and sets weights on chain.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// WebSocket RPC endpoint of a Sliver node.
    #[arg(long, env = "SLIVER_RPC_URL", default_value = sliver_chain::DEFAULT_RPC_URL)]
    rpc_url: String,
    /// Stop after printing this many finalized heads (default: follow forever).
    #[arg(long)]
    heads: Option<u64>,
    /// Accept a plain ws:// URL of a node on another machine.
    #[arg(long)]
    insecure_rpc: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    sliver_operator::rpc::check_rpc_url(&args.rpc_url, args.insecure_rpc)?;
    let client = sliver_chain::ChainClient::connect(&args.rpc_url).await?;
    sliver_chain::print_heads(&client, "validator", Duration::from_millis(500), args.heads).await?;
    Ok(())
}
