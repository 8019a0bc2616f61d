//! # sliver-operator
//!
//! The plumbing every program a Sliver operator runs needs, whatever its role, so that the
//! miner and the validator behave alike where an operator would expect them to:
//!
//! - [`config`]: the TOML file, its errors and the global flags that override it.
//! - [`keys`]: the chain account (sr25519: a secret URI, a mnemonic or a key file) and the
//!   libp2p node key, both kept in the data directory with mode 0600.
//! - [`rpc`]: which node URLs are acceptable: `wss://` anywhere, `ws://` only on loopback unless
//!   the operator says otherwise, because a remote node over plain WebSocket can be impersonated
//!   and the programs take their peers and assignments from it.
//! - [`chain`]: one task owns the connection to the node: it follows the epoch, the assignment
//!   and the registry, reconnects with jittered backoff, and runs the requests the other parts
//!   send it.
//! - [`metrics`]: the Prometheus endpoint (hyper) for a `prometheus-client` registry.
//! - [`signals`]: SIGTERM and Ctrl-C as a watch flag, for leaving cleanly.
//!
//! No Burn here: this crate builds in seconds and serves programs that do not train.

pub mod chain;
pub mod config;
pub mod keys;
pub mod metrics;
pub mod rpc;
pub mod signals;
