//! The validator's configuration: a TOML file, overridden by flags and environment variables
//! (`SLIVER_*`), with defaults that work against a local development node.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use sliver_operator::config::ConfigError;

/// Everything `sliver-validator` can be told. Every field is optional in the file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ValidatorConfig {
    /// WebSocket RPC endpoint of a Sliver node: `wss://`, or `ws://` on this machine.
    pub rpc_url: String,
    /// Accept a plain `ws://` URL of a node on another machine.
    pub insecure_rpc: bool,
    /// Where the node key, the account key file, the sampling secret and pending reveals live.
    pub data_dir: PathBuf,
    /// The account: a secret URI, a mnemonic phrase, or the path of a file holding one.
    /// Default: `<data_dir>/account.key` (created by `sliver-validator keys --generate`).
    pub account: Option<String>,
    /// libp2p listen address.
    pub listen: String,
    /// Serve libp2p relay circuits for miners behind NAT.
    pub relay: bool,
    /// The run's training text (the validator rebuilds first-sliver inputs from it).
    pub data: Option<PathBuf>,
    /// Fraction of each miner's micro-batches replayed per epoch (at least one each).
    pub sample_rate: f64,
    /// Prometheus metrics port on 127.0.0.1 (0: off).
    pub metrics_port: u16,
    /// Micro-batches audited at once (across miners).
    pub concurrency: usize,
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        ValidatorConfig {
            rpc_url: sliver_chain::DEFAULT_RPC_URL.into(),
            insecure_rpc: false,
            data_dir: default_data_dir(),
            account: None,
            listen: "/ip4/0.0.0.0/tcp/30556".into(),
            relay: false,
            data: None,
            sample_rate: 0.05,
            metrics_port: 9617,
            concurrency: 4,
        }
    }
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".local/share/sliver-validator"))
        .unwrap_or_else(|| PathBuf::from(".sliver-validator"))
}

impl ValidatorConfig {
    /// Reads `path` (a missing file is an error only when it was named explicitly).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        sliver_operator::config::load(path)
    }

    /// Checks the values and the node URL against the RPC policy.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(self.sample_rate > 0.0 && self.sample_rate <= 1.0) {
            return Err(ConfigError::Value(format!(
                "sample_rate {} is not in (0, 1]: use e.g. 0.05 for 5% of each miner's micro-batches",
                self.sample_rate
            )));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::Value("concurrency must be at least 1".into()));
        }
        Ok(sliver_operator::rpc::check_rpc_url(&self.rpc_url, self.insecure_rpc)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_the_defaults_and_bad_values_are_errors() {
        let dir = std::env::temp_dir().join(format!("sliver-validator-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("validator.toml");
        std::fs::write(&path, "sample_rate = 0.2\nrelay = true\n").unwrap();
        let c = ValidatorConfig::load(Some(&path)).unwrap();
        assert_eq!((c.sample_rate, c.relay), (0.2, true));
        assert!(c.check().is_ok());
        std::fs::write(&path, "sample_rat = 0.2\n").unwrap();
        let err = ValidatorConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("unknown field `sample_rat`"), "{err}");
        for rate in [0.0, 1.5, f64::NAN] {
            let bad = ValidatorConfig { sample_rate: rate, ..ValidatorConfig::default() };
            assert!(bad.check().unwrap_err().to_string().contains("sample_rate"));
        }
        let remote = ValidatorConfig { rpc_url: "ws://10.0.0.1:9944".into(), ..Default::default() };
        assert!(remote.check().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
