//! The transport's own Prometheus metrics (prometheus-client), registered beside libp2p's
//! (`libp2p::metrics`: connections, bandwidth, identify, Kademlia, ping, relay, DCUtR) under
//! the `sliver_p2p` prefix of the registry the application serves.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters and gauges of one node (cheap to clone: each is an atomic behind an `Arc`).
#[derive(Clone, Debug, Default)]
pub struct P2pMetrics {
    /// Tensor frames accepted and delivered.
    pub frames_accepted: Counter,
    /// Tensor frames refused (by the transport's checks or the application's gate).
    pub frames_refused: Counter,
    /// Tensor streams refused before any byte was read (peer not admitted, or busy).
    pub streams_refused: Counter,
    /// Strikes counted against peers.
    pub strikes: Counter,
    /// Peers banned for the rest of an epoch.
    pub bans: Counter,
    /// Bytes of inbound frames held now (being read or waiting for the application).
    pub inbound_bytes: Gauge,
    /// Blob bytes served.
    pub blob_bytes_served: Counter,
    /// Blob chunks refused because the asker's serving budget was spent.
    pub serve_refused: Counter,
    /// Control requests refused (audits from peers that are not validators).
    pub requests_refused: Counter,
    /// Peers connected now.
    pub connected_peers: Gauge,
}

impl P2pMetrics {
    /// Registers every metric in `registry` and returns their handles.
    pub fn register(registry: &mut Registry) -> Self {
        let m = P2pMetrics::default();
        let r = registry.sub_registry_with_prefix("sliver_p2p");
        r.register("frames_accepted", "Tensor frames accepted", m.frames_accepted.clone());
        r.register("frames_refused", "Tensor frames refused", m.frames_refused.clone());
        r.register(
            "streams_refused",
            "Tensor streams refused before reading (not admitted, busy)",
            m.streams_refused.clone(),
        );
        r.register("strikes", "Strikes counted against peers", m.strikes.clone());
        r.register("bans", "Peers banned for the rest of an epoch", m.bans.clone());
        r.register(
            "inbound_bytes",
            "Bytes of inbound frames held (being read or queued)",
            m.inbound_bytes.clone(),
        );
        r.register("blob_bytes_served", "Blob bytes served", m.blob_bytes_served.clone());
        r.register(
            "serve_refused",
            "Blob chunks refused: the asker's serving budget was spent",
            m.serve_refused.clone(),
        );
        r.register(
            "requests_refused",
            "Control requests refused (audits from non-validators)",
            m.requests_refused.clone(),
        );
        r.register("connected_peers", "Peers connected", m.connected_peers.clone());
        m
    }
}
