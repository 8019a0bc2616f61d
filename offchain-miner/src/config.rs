//! The miner's configuration: a TOML file, overridden by flags and environment variables
//! (`SLIVER_*`), with defaults that work against a local development node.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use sliver_operator::config::ConfigError;

/// Everything `sliver-miner` can be told. Every field is optional in the file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MinerConfig {
    /// WebSocket RPC endpoint of a Sliver node: `wss://`, or `ws://` on this machine.
    pub rpc_url: String,
    /// Accept a plain `ws://` URL of a node on another machine (a trusted LAN or a tunnel).
    pub insecure_rpc: bool,
    /// Where the node key, the account key file, checkpoints and logs live.
    pub data_dir: PathBuf,
    /// The account: a secret URI (`//Alice`, `0x<seed>`), a mnemonic phrase, or the path of a
    /// file holding one. Default: `<data_dir>/account.key` (created by `sliver-miner keys`).
    pub account: Option<String>,
    /// libp2p listen address.
    pub listen: String,
    /// Addresses to register and announce (what others dial); default: the bound address.
    pub public_addresses: Vec<String>,
    /// A relay to listen through when this machine cannot be dialled (a validator's multiaddr
    /// ending in `/p2p/<peer id>`).
    pub relay: Option<String>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// The training text: a file, a directory of `.txt` files, or JSON Lines with a `text`
    /// field. Must hold the dataset the chain's training run names.
    pub data: Option<PathBuf>,
    /// Burn device: `flex` (CPU), or `wgpu` / `cuda` where compiled in.
    pub device: String,
    /// Codec of activations and gradients on the wire: `f32`, `bf16` or `int8`.
    pub codec: String,
    /// Port of the Prometheus metrics endpoint on 127.0.0.1 (0: off).
    pub metrics_port: u16,
    /// Seconds between status lines.
    pub status_interval_secs: u64,
    /// Seconds the first sliver waits for a micro-batch's gradient before dropping it.
    pub grad_timeout_secs: u64,
    /// Connections from one IP address at most (several miners behind one NAT need more).
    pub max_connections_per_ip: u32,
    /// Disk the audit log (frames, receipts, step records and snapshots, for the current and
    /// previous epoch) may use, in MiB. Micro-batches past it cannot be audited and earn
    /// nothing.
    pub audit_disk_mib: u64,
    /// The audit log keeps the weights and the optimiser state every this many optimiser
    /// steps: disk falls as it grows, and a validator replays up to this many steps per audit.
    pub audit_snapshot_steps: u64,
    /// When the machine is available: the idle-window schedule.
    pub availability: Availability,
}

/// When the miner trains. Outside its windows it leaves the pipeline cleanly and waits.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Availability {
    /// Windows as `"HH:MM-HH:MM"` in UTC (a window may cross midnight); empty: always.
    pub windows: Vec<String>,
    /// Days the windows apply to (`mon` ... `sun`); empty: every day.
    pub days: Vec<String>,
    /// Train only while the 1-minute load average, less this miner's own share, stays below
    /// this (0: no threshold).
    pub max_other_load: f64,
    /// While this file exists the miner does not train (`touch` it to leave the pipeline
    /// cleanly now, remove it to rejoin). Default: `<data_dir>/pause`.
    pub pause_file: Option<PathBuf>,
}

impl Default for MinerConfig {
    fn default() -> Self {
        MinerConfig {
            rpc_url: sliver_chain::DEFAULT_RPC_URL.into(),
            insecure_rpc: false,
            data_dir: default_data_dir(),
            account: None,
            listen: "/ip4/0.0.0.0/tcp/30555".into(),
            public_addresses: Vec::new(),
            relay: None,
            mdns: true,
            data: None,
            device: "flex".into(),
            codec: "bf16".into(),
            metrics_port: 9616,
            status_interval_secs: 5,
            grad_timeout_secs: 30,
            max_connections_per_ip: 16,
            audit_disk_mib: 8192,
            audit_snapshot_steps: 8,
            availability: Availability::default(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".local/share/sliver-miner"))
        .unwrap_or_else(|| PathBuf::from(".sliver-miner"))
}

impl MinerConfig {
    /// Reads `path` (a missing file is an error only when it was named explicitly).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        sliver_operator::config::load(path)
    }

    /// The wire codec named by `codec`.
    pub fn wire_codec(&self) -> Result<sliver_wire::WireCodec, ConfigError> {
        match self.codec.as_str() {
            "f32" => Ok(sliver_wire::WireCodec::F32),
            "bf16" => Ok(sliver_wire::WireCodec::Bf16),
            "int8" => Ok(sliver_wire::WireCodec::Int8),
            other => {
                Err(ConfigError::Value(format!("unknown codec {other:?}: use f32, bf16 or int8")))
            }
        }
    }

    /// Checks the node URL against the RPC policy (see `sliver_operator::rpc`).
    pub fn check_rpc(&self) -> Result<(), ConfigError> {
        Ok(sliver_operator::rpc::check_rpc_url(&self.rpc_url, self.insecure_rpc)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_the_defaults_and_typos_are_errors() {
        let dir = std::env::temp_dir().join(format!("sliver-miner-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("miner.toml");
        std::fs::write(
            &path,
            "rpc_url = \"ws://10.0.0.1:9944\"\ncodec = \"int8\"\n[availability]\nwindows = [\"22:00-06:00\"]\n",
        )
        .unwrap();
        let c = MinerConfig::load(Some(&path)).unwrap();
        assert_eq!(c.rpc_url, "ws://10.0.0.1:9944");
        assert_eq!(c.wire_codec().unwrap(), sliver_wire::WireCodec::Int8);
        assert_eq!(c.availability.windows, vec!["22:00-06:00".to_string()]);
        assert_eq!(c.listen, MinerConfig::default().listen);

        std::fs::write(&path, "rpc_ur = \"x\"\n").unwrap();
        let err = MinerConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("unknown field `rpc_ur`"), "{err}");
        let err = MinerConfig::load(Some(&dir.join("missing.toml"))).unwrap_err().to_string();
        assert!(err.contains("cannot read the configuration"), "{err}");
        let bad = MinerConfig { codec: "fp8".into(), ..MinerConfig::default() };
        assert!(bad.wire_codec().unwrap_err().to_string().contains("unknown codec"));
        // A remote node over plain ws:// only with insecure_rpc.
        assert!(c.check_rpc().is_err(), "ws://10.0.0.1 is remote");
        let allowed = MinerConfig { insecure_rpc: true, ..c.clone() };
        assert!(allowed.check_rpc().is_ok());
        assert!(MinerConfig::default().check_rpc().is_ok(), "the default is loopback");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
