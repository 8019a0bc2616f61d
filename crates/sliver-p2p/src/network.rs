//! The network: one task owns the libp2p `Swarm` ([`crate::swarm`]); a cloneable [`Client`]
//! sends it commands over a channel and gets answers on oneshots (the shape of rust-libp2p's
//! file-sharing example). Tensor frames bypass the swarm task: they travel on `libp2p-stream`
//! streams opened from the client, with per-peer bounds on frames in flight, timeouts, and the
//! receiver's checks ([`crate::inbound`]).
//!
//! Who may connect is the application's to say ([`Client::set_peers`]: the chain's registered
//! miners and validators); connections are limited in total, per peer and per IP address,
//! misbehaving peers are banned for the rest of the epoch, and every buffer a peer can make
//! this node fill is bounded ([`NetworkConfig`], [`crate::budget`]).
//!
//! Reachability: AutoNAT (v1) probes whether the node can be dialled from outside; a node that
//! cannot listens through a relay (`listen_via_relay`, relay client), and DCUtR upgrades relayed
//! connections to direct ones by hole punching. Any node can serve as a relay
//! (`NetworkConfig::relay_server`; validators with public addresses do). mDNS finds peers on a
//! LAN when enabled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    autonat, connection_limits, dcutr, identify, mdns, noise, ping, relay, tcp, yamux, Multiaddr,
    PeerId, StreamProtocol,
};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::admission::{Admission, AdmissionView, PeerRole};
use crate::blobs::{BlobClass, Blobs};
use crate::budget::{FramePermit, InboundBudget, ServeBudget};
pub use crate::control::*;
use crate::frame::FrameHeader;
use crate::inbound::{FrameGate, Receiver, Recent};
use crate::metrics::P2pMetrics;
use crate::receipt::{Receipt, Reply};
use crate::swarm::{Behaviour, Command, SwarmTask, IDLE_CONNECTION};
use crate::P2pError;

/// Protocol of tensor frames.
pub const TENSOR_PROTOCOL: StreamProtocol = StreamProtocol::new("/sliver/tensor/1");
/// Sliver's own Kademlia protocol: a private DHT of the network's nodes, not IPFS's.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/sliver/kad/1");
/// Attempts per frame when the stream is reset before a receipt.
pub const SEND_ATTEMPTS: usize = 4;
/// Protocol of control messages.
pub const CONTROL_PROTOCOL: StreamProtocol = StreamProtocol::new("/sliver/control/1");

/// Settings of a node. Every limit bounds what a hostile peer can make this node spend; the
/// defaults suit a generic node, and a miner derives the frame limits from its run's tensor
/// shapes ([`NetworkConfig::with_max_frame`]).
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// Largest tensor payload accepted (bytes).
    pub max_frame_bytes: u64,
    /// Frames this node sends to one peer at once (further sends wait).
    pub max_in_flight_per_peer: usize,
    /// Frames of one peer read at once (further streams are refused "busy"; at least twice a
    /// sender's `max_in_flight_per_peer`, since a sender reuses its slot as soon as it holds the
    /// receipt, a moment before the receiver has closed the stream). Each stream can hold its
    /// 256 KiB multiplexer window unread, so this also bounds what a peer parks there.
    pub max_inbound_per_peer: usize,
    /// Bytes of one peer's inbound frames reserved at once (at least `max_frame_bytes`).
    pub max_peer_buffered_bytes: u64,
    /// Bytes of inbound frames held at once across all peers (being read or queued).
    pub max_buffered_bytes: u64,
    /// Largest magnitude accepted in an activation or gradient (default: the largest f16, a
    /// range mixed-precision training keeps to anyway). Larger finite values are refused.
    pub max_abs_value: f32,
    /// Time allowed for one frame, from opening the stream to the receipt.
    pub frame_timeout: Duration,
    /// Time allowed for a control request.
    pub request_timeout: Duration,
    /// Largest control response (bytes; blob chunks are at most half of it).
    pub max_control_bytes: u64,
    /// Largest control request (bytes): requests are small.
    pub max_control_request_bytes: u64,
    /// Strikes (bad frames or requests) after which a peer is banned until
    /// [`Client::clear_bans`] (the next epoch).
    pub max_strikes: u32,
    /// Frames waiting in the delivery queue before receivers stop reading (backpressure).
    pub delivery_queue: usize,
    /// Header hashes remembered to deliver a frame once even when a retried stream sends it
    /// twice.
    pub dedup_window: usize,
    /// Bytes of published shared blobs (pseudo-gradients, merged weights) held at most (oldest
    /// dropped first).
    pub max_blob_bytes: u64,
    /// Bytes of blobs published to answer audits held at most, apart from the shared ones.
    pub max_audit_blob_bytes: u64,
    /// Blob bytes served to one peer per second, on average.
    pub serve_bytes_per_sec: u64,
    /// Blob bytes served to one peer at once (the bucket's size).
    pub serve_burst_bytes: u64,
    /// Audit requests waiting for the application before further ones are answered "busy".
    pub audit_queue: usize,
    /// Established connections at most, in total.
    pub max_connections: u32,
    /// Connections (pending and established) from one IP address at most.
    pub max_connections_per_ip: u32,
    /// Connections to one peer at most.
    pub max_connections_per_peer: u32,
    /// Inbound connections still in their handshake at most.
    pub max_pending_incoming: u32,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Serve as a relay for nodes that cannot be dialled (validators with public addresses).
    pub relay_server: bool,
    /// Bytes one relayed connection may carry each way before the relay closes it.
    pub relay_max_circuit_bytes: u64,
    /// AutoNAT: only probe through, and answer probes of, peers at global IP addresses. Off for
    /// loopback and LAN tests.
    pub autonat_only_global: bool,
    /// AutoNAT: wait this long after start before the first probe.
    pub autonat_boot_delay: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            max_frame_bytes: 64 << 20,
            max_in_flight_per_peer: 2,
            max_inbound_per_peer: 4,
            max_peer_buffered_bytes: 128 << 20,
            max_buffered_bytes: 256 << 20,
            max_abs_value: 65504.0,
            frame_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            max_control_bytes: 1 << 20,
            max_control_request_bytes: 64 << 10,
            max_strikes: 5,
            delivery_queue: 64,
            dedup_window: 4096,
            max_blob_bytes: 1 << 30,
            max_audit_blob_bytes: 256 << 20,
            serve_bytes_per_sec: 64 << 20,
            serve_burst_bytes: 2 << 30,
            audit_queue: 16,
            max_connections: 256,
            max_connections_per_ip: 8,
            max_connections_per_peer: 3,
            max_pending_incoming: 64,
            mdns: false,
            relay_server: false,
            relay_max_circuit_bytes: 256 << 20,
            autonat_only_global: true,
            autonat_boot_delay: Duration::from_secs(15),
        }
    }
}

impl NetworkConfig {
    /// Frames of at most `bytes` (a run's largest activation or gradient): the per-peer budget
    /// becomes two such frames.
    pub fn with_max_frame(mut self, bytes: u64) -> Self {
        self.max_frame_bytes = bytes;
        self.max_peer_buffered_bytes = bytes.saturating_mul(2).max(1 << 20);
        // Room for at least eight peers' largest frames at once.
        self.max_buffered_bytes = self.max_buffered_bytes.max(bytes.saturating_mul(8));
        self
    }
}

/// A frame that passed every check, delivered to the application. It holds its share of the
/// node's inbound byte budget until dropped.
#[derive(Debug)]
pub struct IncomingFrame {
    /// Sender.
    pub peer: PeerId,
    /// Its header.
    pub header: FrameHeader,
    /// Its payload (a `sliver-wire` frame).
    pub payload: Vec<u8>,
    pub(crate) _permit: Option<FramePermit>,
}

impl IncomingFrame {
    /// A frame built by the application itself (tests, tools); it holds no budget.
    pub fn new(peer: PeerId, header: FrameHeader, payload: Vec<u8>) -> Self {
        IncomingFrame { peer, header, payload, _permit: None }
    }
}

/// What the application receives from the network.
pub struct Inbound {
    /// Tensor frames that passed every check, each delivered once.
    pub frames: mpsc::Receiver<IncomingFrame>,
    /// Validators' audit requests; answer each with [`AuditQuery::respond`].
    pub audits: mpsc::Receiver<AuditQuery>,
    /// Presence notices from other miners (leaving or rejoining), with their sender.
    pub notices: mpsc::Receiver<(PeerId, PresenceNotice)>,
}

/// What a validator's audit request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditAsk {
    /// The account of one micro-batch; answer with [`AuditQuery::respond`].
    MicroBatch(AuditRequest),
    /// A page of the index of an epoch; answer with [`AuditQuery::respond_index`].
    Index(AuditIndexRequest),
    /// A page of the step records of an epoch; answer with [`AuditQuery::respond_steps`].
    Steps(AuditStepsRequest),
    /// Blobs of the audit log to publish; answer with [`AuditQuery::respond_blobs`].
    Blobs(AuditBlobsRequest),
}

/// An audit request waiting for the application's answer. Dropping it unanswered tells the
/// asker the node has no answer.
pub struct AuditQuery {
    /// Who asks.
    pub peer: PeerId,
    /// What is asked.
    pub request: AuditAsk,
    channel: Option<ResponseChannel<ControlResponse>>,
    commands: mpsc::Sender<Command>,
}

impl AuditQuery {
    pub(crate) fn new(
        peer: PeerId,
        request: AuditAsk,
        channel: ResponseChannel<ControlResponse>,
        commands: mpsc::Sender<Command>,
    ) -> Self {
        AuditQuery { peer, request, channel: Some(channel), commands }
    }

    /// Sends `answer` (`None`: the micro-batch is not kept) to the asker.
    pub async fn respond(self, answer: Option<AuditAnswer>) {
        let response = match answer {
            Some(mut a) => {
                a.frames.truncate(MAX_AUDIT_FRAMES);
                ControlResponse::Audit(a)
            }
            None => ControlResponse::NotFound,
        };
        self.send(response).await;
    }

    /// Sends a page of the audit index (`None`: the epoch is not kept) to the asker.
    pub async fn respond_index(self, page: Option<AuditIndexPage>) {
        let response = match page {
            Some(mut p) => {
                if p.entries.len() > MAX_INDEX_ENTRIES {
                    p.entries.truncate(MAX_INDEX_ENTRIES);
                    p.more = true;
                }
                for e in &mut p.entries {
                    e.sent.truncate(MAX_INDEX_SENT);
                }
                ControlResponse::AuditIndex(p)
            }
            None => ControlResponse::NotFound,
        };
        self.send(response).await;
    }

    /// Sends a page of the step records (`None`: the epoch is not kept) to the asker.
    pub async fn respond_steps(self, page: Option<AuditStepsPage>) {
        let response = match page {
            Some(mut p) => {
                if p.steps.len() > MAX_STEP_ENTRIES {
                    p.steps.truncate(MAX_STEP_ENTRIES);
                    p.more = true;
                }
                ControlResponse::AuditSteps(p)
            }
            None => ControlResponse::NotFound,
        };
        self.send(response).await;
    }

    /// Tells the asker which of the blobs it named are published now.
    pub async fn respond_blobs(self, mut published: Vec<[u8; 32]>) {
        published.truncate(MAX_AUDIT_BLOBS);
        self.send(ControlResponse::AuditBlobs(published)).await;
    }

    async fn send(mut self, response: ControlResponse) {
        if let Some(channel) = self.channel.take() {
            let _ = self.commands.send(Command::Respond { channel, response }).await;
        }
    }
}

impl Drop for AuditQuery {
    fn drop(&mut self) {
        if let Some(channel) = self.channel.take() {
            let response = ControlResponse::Error("the node has no answer".into());
            let _ = self.commands.try_send(Command::Respond { channel, response });
        }
    }
}

/// Whether other nodes can dial this one, as AutoNAT and the relay client found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reachability {
    /// Not known yet (no probe has finished; a probe needs connected peers).
    Unknown,
    /// Peers dialled this node back at this address.
    Public(Multiaddr),
    /// Peers could not dial this node back: it is behind NAT or a firewall.
    Private,
    /// Not reachable directly, but reachable through a relay at this circuit address.
    Relayed(Multiaddr),
}

impl Reachability {
    /// What to tell the operator.
    pub fn advice(&self, listen_port: Option<u16>) -> String {
        let port = listen_port.map(|p| p.to_string()).unwrap_or_else(|| "your listen".into());
        match self {
            Reachability::Public(a) => format!("reachable from outside at {a}"),
            Reachability::Relayed(a) => format!(
                "not reachable directly; reachable through a relay at {a}. Neighbours try a \
                 direct connection by hole punching (DCUtR); forwarding TCP and UDP port {port} \
                 on your router to this machine saves the relay's bandwidth"
            ),
            Reachability::Private => format!(
                "NOT reachable from outside (behind NAT or a firewall). Forward TCP and UDP port \
                 {port} on your router to this machine, or start with --relay <multiaddr of a \
                 validator that relays> so neighbours can reach you through it"
            ),
            Reachability::Unknown => "reachability not known yet (no AutoNAT probe has \
                 finished; it needs connected peers)"
                .into(),
        }
    }
}

/// Handle to a running node; cheap to clone.
#[derive(Clone)]
pub struct Client {
    pub(crate) commands: mpsc::Sender<Command>,
    streams: libp2p_stream::Control,
    pub(crate) key: Keypair,
    pub(crate) config: NetworkConfig,
    outgoing: Arc<Mutex<HashMap<PeerId, Arc<Semaphore>>>>,
    blobs: Arc<Mutex<Blobs>>,
    reachability: watch::Receiver<Reachability>,
    admission: watch::Receiver<AdmissionView>,
    gate: Arc<watch::Sender<Option<Arc<dyn FrameGate>>>>,
    pub(crate) metrics: P2pMetrics,
}

/// Starts a node with `key`: spawns the swarm task and the frame receiver. Returns the client
/// and what the application must consume (accepted frames, audit requests). `status` is what
/// the node answers to `Status` and `WhoServes` requests. Its metrics go to a registry of its
/// own; [`start_with_metrics`] puts them in the application's.
pub fn start(
    key: Keypair,
    config: NetworkConfig,
    status: watch::Receiver<NodeStatus>,
) -> Result<(Client, Inbound), P2pError> {
    start_with_metrics(key, config, status, &mut Registry::default())
}

/// [`start`], registering the transport's and libp2p's metrics in `registry`.
pub fn start_with_metrics(
    key: Keypair,
    config: NetworkConfig,
    status: watch::Receiver<NodeStatus>,
    registry: &mut Registry,
) -> Result<(Client, Inbound), P2pError> {
    let codec = request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(config.max_control_request_bytes)
        .set_response_size_maximum(config.max_control_bytes);
    let rr_config = request_response::Config::default()
        .with_request_timeout(config.request_timeout)
        .with_max_concurrent_streams(32);
    let libp2p_metrics = libp2p::metrics::Metrics::new(registry);
    let metrics = P2pMetrics::register(registry);
    let (admission, admission_rx) = Admission::new(config.max_connections_per_ip);
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_pending_incoming(Some(config.max_pending_incoming));
    let yamux_config = || {
        // Each stream may buffer its 256 KiB window unread; fewer streams, less of that.
        let mut c = yamux::Config::default();
        c.set_max_num_streams(64);
        c
    };
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux_config)
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_quic_config(|mut c| {
            // QUIC's receive windows are what a peer can make this node buffer per connection.
            c.max_stream_data = 1 << 20;
            c.max_connection_data = 8 << 20;
            c.max_concurrent_stream_limit = 64;
            c
        })
        .with_relay_client(noise::Config::new, yamux_config)
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_behaviour(|k, relay_client| Behaviour {
            admission,
            limits: connection_limits::Behaviour::new(limits),
            stream: libp2p_stream::Behaviour::new(),
            control: request_response::Behaviour::with_codec(
                codec,
                [(CONTROL_PROTOCOL, ProtocolSupport::Full)],
                rr_config,
            ),
            identify: identify::Behaviour::new(identify::Config::new(
                "/sliver/1".into(),
                k.public(),
            )),
            kad: {
                let id = k.public().to_peer_id();
                let mut kad = kad::Behaviour::with_config(
                    id,
                    MemoryStore::new(id),
                    kad::Config::new(KAD_PROTOCOL),
                );
                // Answer DHT queries before an external address is confirmed: Sliver nodes on
                // a LAN or on loopback are still each other's routing table.
                kad.set_mode(Some(kad::Mode::Server));
                kad
            },
            ping: ping::Behaviour::default(),
            autonat: autonat::Behaviour::new(
                k.public().to_peer_id(),
                autonat::Config {
                    only_global_ips: config.autonat_only_global,
                    boot_delay: config.autonat_boot_delay,
                    retry_interval: Duration::from_secs(30),
                    ..autonat::Config::default()
                },
            ),
            relay_client,
            relay: Toggle::from(config.relay_server.then(|| {
                relay::Behaviour::new(
                    k.public().to_peer_id(),
                    relay::Config {
                        max_circuit_bytes: config.relay_max_circuit_bytes,
                        max_circuit_duration: Duration::from_secs(30 * 60),
                        ..relay::Config::default()
                    },
                )
            })),
            dcutr: dcutr::Behaviour::new(k.public().to_peer_id()),
            mdns: Toggle::from(if config.mdns {
                match mdns::tokio::Behaviour::new(mdns::Config::default(), k.public().to_peer_id())
                {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!(error = %e, "mDNS is unavailable; LAN discovery is off");
                        None
                    }
                }
            } else {
                None
            }),
        })
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION))
        .build();
    let mut streams = swarm.behaviour().stream.new_control();
    let incoming = streams
        .accept(TENSOR_PROTOCOL)
        .map_err(|_| P2pError::Transport("tensor protocol registered twice".into()))?;
    let (commands, rx) = mpsc::channel(64);
    let (frames_tx, frames) = mpsc::channel(config.delivery_queue.max(1));
    let (audits_tx, audits) = mpsc::channel(config.audit_queue.max(1));
    let (notices_tx, notices) = mpsc::channel(config.audit_queue.max(1));
    let (reach_tx, reachability) = watch::channel(Reachability::Unknown);
    let (gate_tx, gate_rx) = watch::channel(None);
    let blobs =
        Arc::new(Mutex::new(Blobs::new(config.max_blob_bytes, config.max_audit_blob_bytes)));
    let task = SwarmTask {
        swarm,
        commands: rx,
        commands_tx: commands.clone(),
        status,
        max_strikes: config.max_strikes.max(1),
        strikes: HashMap::new(),
        listening: HashMap::new(),
        dialing: HashMap::new(),
        requests: HashMap::new(),
        lookups: HashMap::new(),
        blobs: blobs.clone(),
        serving: ServeBudget::new(config.serve_bytes_per_sec, config.serve_burst_bytes),
        audits: audits_tx,
        notices: notices_tx,
        reachability: reach_tx,
        metrics: metrics.clone(),
        libp2p_metrics,
    };
    tokio::spawn(task.run());
    let budget = InboundBudget::new(
        config.max_buffered_bytes,
        config.max_peer_buffered_bytes.max(config.max_frame_bytes),
        config.max_inbound_per_peer,
    );
    let client = Client {
        commands,
        streams,
        key,
        config,
        outgoing: Arc::default(),
        blobs,
        reachability,
        admission: admission_rx.clone(),
        gate: Arc::new(gate_tx),
        metrics,
    };
    let receiver = Arc::new(Receiver {
        client: client.clone(),
        budget,
        seen: Mutex::new(Recent::new(client.config.dedup_window)),
        admission: admission_rx,
        gate: gate_rx,
        frames: frames_tx,
    });
    tokio::spawn(receiver.run(incoming));
    Ok((client, Inbound { frames, audits, notices }))
}

impl Client {
    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.key.public().to_peer_id()
    }

    /// Listens on `addr` (port 0 picks one); returns the address actually bound.
    pub async fn listen(&self, addr: Multiaddr) -> Result<Multiaddr, P2pError> {
        self.call(|reply| Command::Listen { addr, reply }).await?
    }

    /// Listens through the relay `relay` reachable at `relay_addr`: reserves a slot there and
    /// returns the circuit address (`<relay_addr>/p2p/<relay>/p2p-circuit`) other nodes dial.
    pub async fn listen_via_relay(
        &self,
        relay: PeerId,
        relay_addr: Multiaddr,
    ) -> Result<Multiaddr, P2pError> {
        self.dial(relay, relay_addr.clone()).await?;
        let circuit = relay_addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
        let timeout = self.config.request_timeout;
        tokio::time::timeout(timeout, self.listen(circuit)).await.map_err(|_| {
            P2pError::Transport(format!("relay {relay} did not grant a reservation in {timeout:?}"))
        })?
    }

    /// Declares `addr` as an address other nodes can dial this node at (an operator's public
    /// address). A relay serves reservations only once it has one, declared or confirmed by
    /// AutoNAT.
    pub async fn add_external_address(&self, addr: Multiaddr) -> Result<(), P2pError> {
        self.commands.send(Command::AddExternal { addr }).await.map_err(|_| P2pError::Stopped)
    }

    /// Whether other nodes can dial this one (AutoNAT, relay reservations).
    pub fn reachability(&self) -> Reachability {
        self.reachability.borrow().clone()
    }

    /// Waits until reachability is known, at most `timeout`; returns what is known then.
    pub async fn wait_reachability(&self, timeout: Duration) -> Reachability {
        let mut rx = self.reachability.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|r| *r != Reachability::Unknown)).await;
        self.reachability()
    }

    /// The peers this node is connected to now.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, P2pError> {
        self.call(|reply| Command::Connected { reply }).await
    }

    /// Publishes `bytes` for peers to fetch with [`Client::fetch_blob`]; returns their BLAKE3
    /// hash. The shared store holds at most `max_blob_bytes` and drops its oldest blobs to make
    /// room; blobs published for audits never do.
    pub fn publish_blob(&self, bytes: Vec<u8>) -> Result<[u8; 32], P2pError> {
        self.publish_in(BlobClass::Shared, bytes, self.config.max_blob_bytes)
    }

    /// Publishes `bytes` to answer an audit, in the audit store (`max_audit_blob_bytes`), which
    /// evicts only other audit blobs.
    pub fn publish_audit_blob(&self, bytes: Vec<u8>) -> Result<[u8; 32], P2pError> {
        self.publish_in(BlobClass::Audit, bytes, self.config.max_audit_blob_bytes)
    }

    fn publish_in(&self, class: BlobClass, bytes: Vec<u8>, max: u64) -> Result<[u8; 32], P2pError> {
        let len = bytes.len();
        let mut blobs = self.blobs.lock().map_err(|_| P2pError::Stopped)?;
        blobs.store(class).insert(bytes).ok_or_else(|| {
            P2pError::Transport(format!(
                "a blob of {len} bytes is larger than the {class:?} blob store ({max} bytes)"
            ))
        })
    }

    /// Admits only `peers` (the chain's registered miners and validators, with their roles)
    /// from now on, closing other connections; `None` opens the node to every peer again.
    pub async fn set_peers(
        &self,
        peers: Option<HashMap<PeerId, PeerRole>>,
    ) -> Result<(), P2pError> {
        self.call(|reply| Command::SetPeers { peers, reply }).await
    }

    /// Who is admitted now (and who is banned).
    pub fn admission(&self) -> AdmissionView {
        self.admission.borrow().clone()
    }

    /// Counts a strike against `peer` for misbehaviour the application found (`reason` is
    /// logged); at `max_strikes` in one epoch the peer is banned until [`Client::clear_bans`].
    pub async fn strike(&self, peer: PeerId, reason: impl Into<String>) {
        let _ = self.commands.send(Command::Strike { peer, reason: reason.into() }).await;
    }

    /// Lifts every ban and forgets every strike (call it at each epoch boundary).
    pub async fn clear_bans(&self) {
        let _ = self.commands.send(Command::ClearBans).await;
    }

    /// Sets the application's [`FrameGate`]: from now on every tensor frame must pass it
    /// before it is read, delivered and receipted.
    pub fn set_frame_gate(&self, gate: Option<Arc<dyn FrameGate>>) {
        self.gate.send_replace(gate);
    }

    /// The largest magnitude this node accepts in a frame's values (what it should not send
    /// either: a neighbour with the same bound would refuse it and strike).
    pub fn max_abs_value(&self) -> f32 {
        self.config.max_abs_value
    }

    /// The transport's metric handles.
    pub fn metrics(&self) -> &P2pMetrics {
        &self.metrics
    }

    /// Stops serving the blob `hash`.
    pub fn unpublish_blob(&self, hash: &[u8; 32]) {
        if let Ok(mut store) = self.blobs.lock() {
            store.remove(hash);
        }
    }

    /// Fetches the blob `hash` from `peer` in chunks (four requests in flight) and checks its
    /// hash. A blob longer than `max_len`, a chunk at the wrong offset or of the wrong size, or
    /// bytes that do not hash to `hash` are errors naming the peer.
    pub async fn fetch_blob(
        &self,
        peer: PeerId,
        hash: [u8; 32],
        max_len: u64,
    ) -> Result<Vec<u8>, P2pError> {
        let chunk = MAX_BLOB_CHUNK.min((self.config.max_control_bytes / 2) as u32).max(1);
        let bad = |reason: String| P2pError::Request { peer, reason };
        let (total, first) = self.blob_chunk(peer, hash, 0, chunk).await?;
        if total > max_len {
            return Err(bad(format!("blob is {total} bytes, more than the {max_len} allowed")));
        }
        let mut out = Vec::with_capacity(total as usize);
        out.extend_from_slice(&first);
        let offsets: Vec<u64> = (out.len() as u64..total).step_by(chunk as usize).collect();
        let mut rest = futures::stream::iter(offsets)
            .map(|offset| async move {
                let (t, data) = self.blob_chunk(peer, hash, offset, chunk).await?;
                if t != total {
                    return Err(bad(format!("blob length changed from {total} to {t}")));
                }
                Ok(data)
            })
            .buffered(4);
        while let Some(data) = rest.next().await {
            out.extend_from_slice(&data?);
        }
        if out.len() as u64 != total || *blake3::hash(&out).as_bytes() != hash {
            return Err(bad("blob bytes do not match their hash".into()));
        }
        Ok(out)
    }

    async fn blob_chunk(
        &self,
        peer: PeerId,
        hash: [u8; 32],
        offset: u64,
        max_len: u32,
    ) -> Result<(u64, Vec<u8>), P2pError> {
        let bad = |reason: String| P2pError::Request { peer, reason };
        match self.request(peer, ControlRequest::Blob { hash, offset, max_len }).await? {
            ControlResponse::BlobChunk { total, offset: o, data } => {
                let expected = total.saturating_sub(offset).min(max_len as u64);
                if o != offset || data.len() as u64 != expected || (expected == 0 && offset < total)
                {
                    return Err(bad(format!(
                        "chunk at {o} of {} bytes, asked for {offset} (blob of {total})",
                        data.len()
                    )));
                }
                Ok((total, data))
            }
            ControlResponse::NotFound => Err(bad("the peer does not serve that blob".into())),
            other => Err(bad(format!("unexpected answer {}", short(&other)))),
        }
    }

    /// Asks `peer` (a miner) for its account of one micro-batch.
    pub async fn audit(
        &self,
        peer: PeerId,
        request: AuditRequest,
    ) -> Result<Option<AuditAnswer>, P2pError> {
        match self.request(peer, ControlRequest::Audit(request)).await? {
            ControlResponse::Audit(a) if a.frames.len() <= MAX_AUDIT_FRAMES => Ok(Some(a)),
            ControlResponse::NotFound => Ok(None),
            other => Err(P2pError::Request {
                peer,
                reason: format!("unexpected answer {}", short(&other)),
            }),
        }
    }

    /// Asks `peer` (a miner) for one page of its audit index of an epoch; `Ok(None)` if it
    /// keeps nothing of that epoch. A page out of key order or over the limits is an error.
    pub async fn audit_index(
        &self,
        peer: PeerId,
        request: AuditIndexRequest,
    ) -> Result<Option<AuditIndexPage>, P2pError> {
        match self.request(peer, ControlRequest::AuditIndex(request)).await? {
            ControlResponse::AuditIndex(p)
                if p.entries.len() <= MAX_INDEX_ENTRIES
                    && p.entries.iter().all(|e| e.sent.len() <= MAX_INDEX_SENT)
                    && p.entries.windows(2).all(|w| w[0].key < w[1].key)
                    && p.entries
                        .first()
                        .is_none_or(|e| request.after.is_none_or(|a| a < e.key)) =>
            {
                Ok(Some(p))
            }
            ControlResponse::NotFound => Ok(None),
            other => Err(P2pError::Request {
                peer,
                reason: format!("unexpected answer {}", short(&other)),
            }),
        }
    }

    /// Asks `peer` (a miner) for a page of its step records of an epoch; `Ok(None)` if it
    /// keeps nothing of that epoch. A page over the limits is an error.
    pub async fn audit_steps(
        &self,
        peer: PeerId,
        request: AuditStepsRequest,
    ) -> Result<Option<AuditStepsPage>, P2pError> {
        match self.request(peer, ControlRequest::AuditSteps(request)).await? {
            ControlResponse::AuditSteps(p)
                if p.steps.len() <= MAX_STEP_ENTRIES
                    && p.steps.iter().all(|s| s.batches.len() <= MAX_STEP_BATCHES) =>
            {
                Ok(Some(p))
            }
            ControlResponse::NotFound => Ok(None),
            other => Err(P2pError::Request {
                peer,
                reason: format!("unexpected answer {}", short(&other)),
            }),
        }
    }

    /// Asks `peer` (a miner) to publish blobs of its audit log of an epoch by hash (at most
    /// [`MAX_AUDIT_BLOBS`]); returns those it published (fetch them with [`Client::fetch_blob`]).
    pub async fn audit_blobs(
        &self,
        peer: PeerId,
        request: AuditBlobsRequest,
    ) -> Result<Vec<[u8; 32]>, P2pError> {
        if request.hashes.len() > MAX_AUDIT_BLOBS {
            return Err(P2pError::Request {
                peer,
                reason: format!("at most {MAX_AUDIT_BLOBS} blobs at once"),
            });
        }
        let asked = request.hashes.clone();
        match self.request(peer, ControlRequest::AuditBlobs(request)).await? {
            ControlResponse::AuditBlobs(p) if p.iter().all(|h| asked.contains(h)) => Ok(p),
            other => Err(P2pError::Request {
                peer,
                reason: format!("unexpected answer {}", short(&other)),
            }),
        }
    }

    /// Tells `peer` that this node leaves or rejoins the pipeline; `Ok` once it took the notice.
    pub async fn announce(&self, peer: PeerId, notice: PresenceNotice) -> Result<(), P2pError> {
        match self.request(peer, ControlRequest::Presence(notice)).await? {
            ControlResponse::Ack => Ok(()),
            other => Err(P2pError::Request {
                peer,
                reason: format!("notice not taken: {}", short(&other)),
            }),
        }
    }

    /// Connects to `peer` at `addr`.
    /// Fails if the peer at `addr` is not `peer`, or no connection is made within the request
    /// timeout.
    pub async fn dial(&self, peer: PeerId, addr: Multiaddr) -> Result<(), P2pError> {
        let timeout = self.config.request_timeout;
        tokio::time::timeout(timeout, self.call(|reply| Command::Dial { peer, addr, reply }))
            .await
            .map_err(|_| P2pError::Dial {
                peer,
                reason: format!("no connection within {timeout:?}"),
            })??
    }

    /// Looks `peer` up in the DHT (through the peers this node knows) and returns its addresses,
    /// which are also remembered for dialing.
    pub async fn find_peer(&self, peer: PeerId) -> Result<Vec<Multiaddr>, P2pError> {
        self.call(|reply| Command::FindPeer { peer, reply }).await?
    }

    /// Asks `peer` who serves `sliver`; entries that do not parse are dropped, and at most
    /// [`MAX_SERVERS`] servers with [`MAX_ADDRS`] addresses each are kept.
    pub async fn who_serves(
        &self,
        peer: PeerId,
        sliver: u16,
    ) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, P2pError> {
        match self.request(peer, ControlRequest::WhoServes { sliver }).await? {
            ControlResponse::Servers { sliver: s, peers } if s == sliver => Ok(peers
                .into_iter()
                .take(MAX_SERVERS)
                .filter_map(|r| {
                    let id = r.peer_id.parse().ok()?;
                    let addrs =
                        r.addrs.iter().take(MAX_ADDRS).filter_map(|a| a.parse().ok()).collect();
                    Some((id, addrs))
                })
                .collect()),
            other => Err(P2pError::Request {
                peer,
                reason: format!("unexpected answer {}", short(&other)),
            }),
        }
    }

    /// Sends a control request and waits for the response.
    pub async fn request(
        &self,
        peer: PeerId,
        req: ControlRequest,
    ) -> Result<ControlResponse, P2pError> {
        self.call(|reply| Command::Request { peer, req, reply }).await?
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, P2pError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| P2pError::Stopped)?;
        rx.await.map_err(|_| P2pError::Stopped)
    }

    /// Stops the node: the swarm task ends and every connection closes.
    pub async fn shutdown(&self) {
        let _ = self.call(|reply| Command::Shutdown { reply }).await;
    }

    /// The raw stream control, for protocols beyond tensor frames (and for tests that must send
    /// bytes a well-behaved client never would).
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// Sends one tensor frame to `peer` and returns its verified receipt. At most
    /// `max_in_flight_per_peer` frames are in flight to one peer; further calls wait.
    pub async fn send_frame(
        &self,
        peer: PeerId,
        header: &FrameHeader,
        payload: &[u8],
    ) -> Result<Receipt, P2pError> {
        header.check_payload(payload).map_err(P2pError::Frame)?;
        let permit_pool = {
            let mut map = self.outgoing.lock().map_err(|_| P2pError::Stopped)?;
            map.entry(peer)
                .or_insert_with(|| {
                    Arc::new(Semaphore::new(self.config.max_in_flight_per_peer.max(1)))
                })
                .clone()
        };
        let permit = permit_pool.acquire().await.map_err(|_| P2pError::Stopped)?;
        // libp2p-stream hands inbound streams over through a channel without buffer and drops
        // a stream that arrives while the previous one is being taken: under concurrency a few
        // streams are reset before the receiver reads a byte. Such a reset is retried; a peer
        // that is really gone fails every attempt. (A retry after a lost receipt can deliver a
        // frame twice: receivers deduplicate by header hash.)
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match self.try_send_frame(peer, header, payload).await {
                Err(P2pError::PeerGone { .. }) if attempt < SEND_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(5 * attempt as u64)).await;
                }
                // The receiver reads a bounded number of a peer's frames at once.
                Err(P2pError::Refused { reason, .. })
                    if reason == crate::inbound::BUSY && attempt < SEND_ATTEMPTS =>
                {
                    tokio::time::sleep(Duration::from_millis(10 * attempt as u64)).await;
                }
                other => break other,
            }
        };
        drop(permit);
        // Forget the peer's slot pool once no send uses it (the map holds one reference, this
        // call the other).
        if let Ok(mut map) = self.outgoing.lock() {
            if map.get(&peer).is_some_and(|p| Arc::strong_count(p) == 2) {
                map.remove(&peer);
            }
        }
        drop(permit_pool);
        outcome
    }

    async fn try_send_frame(
        &self,
        peer: PeerId,
        header: &FrameHeader,
        payload: &[u8],
    ) -> Result<Receipt, P2pError> {
        let mut control = self.streams.clone();
        let header_bytes = header.encode();
        let exchange = async move {
            let mut stream = control
                .open_stream(peer, TENSOR_PROTOCOL)
                .await
                .map_err(|e| P2pError::PeerGone { peer, reason: e.to_string() })?;
            let gone = |e: std::io::Error| P2pError::PeerGone { peer, reason: e.to_string() };
            stream.write_all(&(header_bytes.len() as u16).to_le_bytes()).await.map_err(gone)?;
            stream.write_all(&header_bytes).await.map_err(gone)?;
            stream.write_all(payload).await.map_err(gone)?;
            stream.flush().await.map_err(gone)?;
            let mut reply = Vec::new();
            (&mut stream).take(4096).read_to_end(&mut reply).await.map_err(gone)?;
            Ok::<_, P2pError>(reply)
        };
        let reply = tokio::time::timeout(self.config.frame_timeout, exchange)
            .await
            .map_err(|_| P2pError::Timeout { peer })??;
        match Reply::decode(&reply) {
            Some(Reply::Accepted(r))
                if r.header_hash == header.hash() && r.verify(&self.peer_id(), &peer) =>
            {
                Ok(r)
            }
            Some(Reply::Accepted(_)) => Err(P2pError::BadReceipt { peer }),
            Some(Reply::Refused(reason)) => Err(P2pError::Refused { peer, reason }),
            None if reply.is_empty() => {
                Err(P2pError::PeerGone { peer, reason: "stream closed before a receipt".into() })
            }
            None => Err(P2pError::BadReceipt { peer }),
        }
    }
}

/// A response named for an error message, without its (possibly large) contents.
fn short(r: &ControlResponse) -> String {
    match r {
        ControlResponse::Pong { .. } => "Pong".into(),
        ControlResponse::Status(_) => "Status".into(),
        ControlResponse::Servers { .. } => "Servers".into(),
        ControlResponse::BlobChunk { .. } => "BlobChunk".into(),
        ControlResponse::Audit(_) => "Audit".into(),
        ControlResponse::AuditIndex(p) => format!("AuditIndex({} entries)", p.entries.len()),
        ControlResponse::AuditSteps(p) => format!("AuditSteps({} steps)", p.steps.len()),
        ControlResponse::AuditBlobs(p) => format!("AuditBlobs({})", p.len()),
        ControlResponse::NotFound => "NotFound".into(),
        ControlResponse::Ack => "Ack".into(),
        ControlResponse::Error(e) => format!("Error({})", e.chars().take(200).collect::<String>()),
    }
}
