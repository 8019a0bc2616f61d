//! Which node URLs an operator's program connects to.
//!
//! The miner takes its replicas, its neighbours' keys and its assignment from the node it talks
//! to, so that node must be the one the operator meant. Over `wss://` the TLS certificate says
//! so; over plain `ws://` anyone on the path can answer instead. Plain `ws://` is therefore
//! accepted only for loopback addresses (a node on the same machine), unless the operator
//! passes `--insecure-rpc` (a trusted LAN, an SSH tunnel they set up themselves).

use url::{Host, Url};

/// Why a node URL is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RpcUrlError {
    /// Not a URL.
    #[error("{url:?} is not a URL: {reason}")]
    Malformed {
        /// What was given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Neither `ws://` nor `wss://`.
    #[error(
        "{url:?}: the node's RPC URL must start with wss:// (or ws:// for a node on this machine)"
    )]
    Scheme {
        /// What was given.
        url: String,
    },
    /// Plain WebSocket to a node on another machine.
    #[error(
        "refusing plain ws:// to a remote node ({url}): anyone on the path could impersonate it \
         and hand this program fake peers and assignments. Use wss:// (TLS), reach the node \
         through an SSH tunnel on 127.0.0.1, or pass --insecure-rpc if you trust the network"
    )]
    InsecureRemote {
        /// What was given.
        url: String,
    },
}

/// Checks `url` against the policy above; `allow_insecure` lifts the loopback restriction of
/// `ws://`.
pub fn check_rpc_url(url: &str, allow_insecure: bool) -> Result<(), RpcUrlError> {
    let parsed = Url::parse(url)
        .map_err(|e| RpcUrlError::Malformed { url: url.into(), reason: e.to_string() })?;
    match parsed.scheme() {
        "wss" => Ok(()),
        "ws" if allow_insecure || is_loopback(&parsed) => Ok(()),
        "ws" => Err(RpcUrlError::InsecureRemote { url: url.into() }),
        _ => Err(RpcUrlError::Scheme { url: url.into() }),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_websocket_only_on_loopback_unless_allowed() {
        for ok in
            ["ws://127.0.0.1:9944", "ws://127.9.0.1:9944", "ws://[::1]:9944", "ws://localhost:9944"]
        {
            assert_eq!(check_rpc_url(ok, false), Ok(()), "{ok}");
        }
        for ok in ["wss://rpc.example.org", "wss://203.0.113.7:443/path"] {
            assert_eq!(check_rpc_url(ok, false), Ok(()), "{ok}");
        }
        for remote in ["ws://10.0.0.5:9944", "ws://rpc.example.org:9944", "ws://localhost.evil.org"]
        {
            let err = check_rpc_url(remote, false).unwrap_err();
            assert!(matches!(err, RpcUrlError::InsecureRemote { .. }), "{remote}");
            assert!(err.to_string().contains("--insecure-rpc"));
            assert_eq!(check_rpc_url(remote, true), Ok(()), "{remote} with the flag");
        }
        assert!(matches!(
            check_rpc_url("http://127.0.0.1:9944", true),
            Err(RpcUrlError::Scheme { .. })
        ));
        assert!(matches!(
            check_rpc_url("127.0.0.1:9944", false),
            Err(RpcUrlError::Scheme { .. }) | Err(RpcUrlError::Malformed { .. })
        ));
        assert!(matches!(check_rpc_url("not a url", false), Err(RpcUrlError::Malformed { .. })));
    }
}
