//! # sliver-node
//!
//! The chain node of Sliver: it runs the Sliver runtime (compiled to WebAssembly), produces
//! blocks with Aura, finalizes them with GRANDPA, and serves the standard Substrate JSON-RPC so
//! that any Substrate client (polkadot.js, subxt, substrate-interface) can talk to it.
//!
//! - `sliver-node --dev --tmp`: a throw-away single-node development chain (Alice authors).
//! - `sliver-node --chain local --alice ...`: one node of a local multi-node network.
//!
//! RPC listens on 127.0.0.1 unless `--rpc-external` is given; the database is ParityDB.

mod chain_spec;
mod cli;
mod command;
mod rpc;
mod service;

fn main() -> sc_cli::Result<()> {
    command::run()
}
