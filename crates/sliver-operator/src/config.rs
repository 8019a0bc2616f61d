//! What every operator program's configuration shares: the TOML file (every field optional,
//! a typo an "unknown field" error), the errors that name the file or the value, and the
//! global flags (`--config`, `--rpc-url`, `--data-dir`, `--account`, `--insecure-rpc`, with
//! their `SLIVER_*` variables) that override the file.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a configuration is not usable; each message names the file or the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` cannot be read.
    #[error("cannot read the configuration {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not valid (a typo is an unknown field).
    #[error("bad configuration {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A value is not one of the accepted ones.
    #[error("{0}")]
    Value(String),
    /// The node URL is refused.
    #[error(transparent)]
    Rpc(#[from] crate::rpc::RpcUrlError),
}

/// Reads `path` as TOML (`None`: the defaults; a missing file is an error only when it was
/// named explicitly).
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else { return Ok(T::default()) };
    let p = || path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Read { path: p(), reason: e.to_string() })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: p(), reason: e.to_string() })
}

/// The flags every operator program takes before its subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "SLIVER_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// WebSocket RPC endpoint of a Sliver node [default: ws://127.0.0.1:9944].
    #[arg(long, env = "SLIVER_RPC_URL", global = true)]
    pub rpc_url: Option<String>,
    /// Data directory (keys and the program's state) [default: ~/.local/share/<program>].
    #[arg(long, env = "SLIVER_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The account: a secret URI (//Alice, 0x<seed>), a mnemonic phrase or a key file.
    #[arg(long, env = "SLIVER_ACCOUNT", global = true, hide_env_values = true)]
    pub account: Option<String>,
    /// Accept a plain ws:// URL of a node on another machine (without it only wss:// or a node
    /// on this machine).
    #[arg(long, global = true)]
    pub insecure_rpc: bool,
}

/// The fields of a program's configuration that [`CommonArgs`] override.
pub struct Common<'a> {
    /// The node URL.
    pub rpc_url: &'a mut String,
    /// Accept a remote `ws://` node.
    pub insecure_rpc: &'a mut bool,
    /// The data directory.
    pub data_dir: &'a mut PathBuf,
    /// The account.
    pub account: &'a mut Option<String>,
}

impl CommonArgs {
    /// Overrides `into` with the flags given.
    pub fn apply(self, into: Common<'_>) {
        if let Some(v) = self.rpc_url {
            *into.rpc_url = v;
        }
        if self.insecure_rpc {
            *into.insecure_rpc = true;
        }
        if let Some(v) = self.data_dir {
            *into.data_dir = v;
        }
        if let Some(v) = self.account {
            *into.account = Some(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Cfg {
        rpc_url: String,
        rate: f64,
    }

    #[test]
    fn a_file_overrides_the_defaults_and_typos_are_errors() {
        let dir = std::env::temp_dir().join(format!("sliver-operator-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "rate = 0.5\n").unwrap();
        assert_eq!(load::<Cfg>(Some(&path)).unwrap(), Cfg { rate: 0.5, ..Cfg::default() });
        assert_eq!(load::<Cfg>(None).unwrap(), Cfg::default());
        std::fs::write(&path, "rat = 0.5\n").unwrap();
        let err = load::<Cfg>(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("unknown field `rat`"), "{err}");
        let err = load::<Cfg>(Some(&dir.join("missing.toml"))).unwrap_err().to_string();
        assert!(err.contains("cannot read the configuration"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
