//! # sliver-miner
//!
//! The program a miner operator runs. For now it is the thin first step of the miner: it
//! connects to a Sliver node and follows the finalized head. Training, the P2P pipeline and
//! payouts arrive with the miner issue; the chain client it uses is already the real one.

use clap::Parser;
use std::time::Duration;

/// Sliver miner: trains one sliver of a language model and gets paid for verified work.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// WebSocket RPC endpoint of a Sliver node.
    #[arg(long, env = "SLIVER_RPC_URL", default_value = sliver_chain::DEFAULT_RPC_URL)]
    rpc_url: String,
    /// Stop after printing this many finalized heads (default: follow forever).
    #[arg(long)]
    heads: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = sliver_chain::ChainClient::connect(&args.rpc_url).await?;
    sliver_chain::print_heads(&client, "miner", Duration::from_millis(500), args.heads).await?;
    Ok(())
}
