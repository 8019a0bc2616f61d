//! The network: one task owns the libp2p `Swarm`; a cloneable [`Client`] sends it commands over
//! a channel and gets answers on oneshots (the shape of rust-libp2p's file-sharing example).
//! Tensor frames bypass the swarm task: they travel on `libp2p-stream` streams opened from the
//! client, with per-peer bounds on frames in flight, timeouts and full checks on receipt.
//!
//! Reachability: AutoNAT (v1) probes whether the node can be dialled from outside; a node that
//! cannot listens through a relay (`listen_via_relay`, relay client), and DCUtR upgrades relayed
//! connections to direct ones by hole punching. Any node can serve as a relay
//! (`NetworkConfig::relay_server`; validators with public addresses do). mDNS finds peers on a
//! LAN when enabled.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore, QueryId, QueryResult};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    autonat, dcutr, identify, mdns, noise, ping, relay, tcp, yamux, Multiaddr, PeerId,
    StreamProtocol, Swarm,
};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::blobs::BlobStore;
pub use crate::control::*;
use crate::frame::{FrameError, FrameHeader, MAX_HEADER_LEN};
use crate::receipt::{Receipt, Reply};
use crate::P2pError;

/// Protocol of tensor frames.
pub const TENSOR_PROTOCOL: StreamProtocol = StreamProtocol::new("/sliver/tensor/1");
/// Sliver's own Kademlia protocol: a private DHT of the network's nodes, not IPFS's.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/sliver/kad/1");
/// Attempts per frame when the stream is reset before a receipt.
pub const SEND_ATTEMPTS: usize = 4;
/// Protocol of control messages.
pub const CONTROL_PROTOCOL: StreamProtocol = StreamProtocol::new("/sliver/control/1");

/// Settings of a node.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// Largest tensor payload accepted (bytes).
    pub max_frame_bytes: u64,
    /// Frames in flight per peer, each way.
    pub max_in_flight_per_peer: usize,
    /// Time allowed for one frame, from opening the stream to the receipt.
    pub frame_timeout: Duration,
    /// Time allowed for a control request.
    pub request_timeout: Duration,
    /// Largest control request and response (bytes).
    pub max_control_bytes: u64,
    /// Refused frames after which a peer is disconnected.
    pub max_strikes: u32,
    /// Frames waiting in the delivery queue before receivers stop reading (backpressure).
    pub delivery_queue: usize,
    /// Header hashes remembered to deliver a frame once even when a retried stream sends it
    /// twice.
    pub dedup_window: usize,
    /// Bytes of published blobs served at most (oldest dropped first).
    pub max_blob_bytes: u64,
    /// Audit requests waiting for the application before further ones are answered "busy".
    pub audit_queue: usize,
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
            max_in_flight_per_peer: 8,
            frame_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            max_control_bytes: 1 << 20,
            max_strikes: 5,
            delivery_queue: 64,
            dedup_window: 4096,
            max_blob_bytes: 1 << 30,
            audit_queue: 16,
            mdns: false,
            relay_server: false,
            relay_max_circuit_bytes: 256 << 20,
            autonat_only_global: true,
            autonat_boot_delay: Duration::from_secs(15),
        }
    }
}

/// A frame that passed every check, delivered to the application.
#[derive(Clone, Debug)]
pub struct IncomingFrame {
    /// Sender.
    pub peer: PeerId,
    /// Its header.
    pub header: FrameHeader,
    /// Its payload (a `sliver-wire` frame).
    pub payload: Vec<u8>,
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

/// An audit request waiting for the application's answer. Dropping it unanswered tells the
/// asker the node has no answer.
pub struct AuditQuery {
    /// Who asks.
    pub peer: PeerId,
    /// What is asked.
    pub request: AuditRequest,
    channel: Option<ResponseChannel<ControlResponse>>,
    commands: mpsc::Sender<Command>,
}

impl AuditQuery {
    /// Sends `answer` (`None`: the micro-batch is not kept) to the asker.
    pub async fn respond(mut self, answer: Option<AuditAnswer>) {
        let response = match answer {
            Some(mut a) => {
                a.frames.truncate(MAX_AUDIT_FRAMES);
                ControlResponse::Audit(a)
            }
            None => ControlResponse::NotFound,
        };
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

#[derive(NetworkBehaviour)]
struct Behaviour {
    stream: libp2p_stream::Behaviour,
    control: request_response::cbor::Behaviour<ControlRequest, ControlResponse>,
    identify: identify::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    ping: ping::Behaviour,
    autonat: autonat::Behaviour,
    relay_client: relay::client::Behaviour,
    relay: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

enum Command {
    FindPeer {
        peer: PeerId,
        reply: oneshot::Sender<Result<Vec<Multiaddr>, P2pError>>,
    },
    Listen {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<Multiaddr, P2pError>>,
    },
    Respond {
        channel: ResponseChannel<ControlResponse>,
        response: ControlResponse,
    },
    Connected {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    AddExternal {
        addr: Multiaddr,
    },
    Dial {
        peer: PeerId,
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), P2pError>>,
    },
    Request {
        peer: PeerId,
        req: ControlRequest,
        reply: oneshot::Sender<Result<ControlResponse, P2pError>>,
    },
    Strike {
        peer: PeerId,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Handle to a running node; cheap to clone.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    streams: libp2p_stream::Control,
    key: Keypair,
    config: NetworkConfig,
    outgoing: Arc<Mutex<HashMap<PeerId, Arc<Semaphore>>>>,
    blobs: Arc<Mutex<BlobStore>>,
    reachability: watch::Receiver<Reachability>,
}

/// Starts a node with `key`: spawns the swarm task and the frame receiver. Returns the client
/// and what the application must consume (accepted frames, audit requests). `status` is what
/// the node answers to `Status` and `WhoServes` requests.
pub fn start(
    key: Keypair,
    config: NetworkConfig,
    status: watch::Receiver<NodeStatus>,
) -> Result<(Client, Inbound), P2pError> {
    let codec = request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(config.max_control_bytes)
        .set_response_size_maximum(config.max_control_bytes);
    let rr_config =
        request_response::Config::default().with_request_timeout(config.request_timeout);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_behaviour(|k, relay_client| Behaviour {
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
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
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
    let blobs = Arc::new(Mutex::new(BlobStore::new(config.max_blob_bytes)));
    let task = SwarmTask {
        swarm,
        commands: rx,
        commands_tx: commands.clone(),
        status,
        max_strikes: config.max_strikes,
        strikes: HashMap::new(),
        listening: HashMap::new(),
        dialing: HashMap::new(),
        requests: HashMap::new(),
        lookups: HashMap::new(),
        blobs: blobs.clone(),
        audits: audits_tx,
        notices: notices_tx,
        reachability: reach_tx,
    };
    tokio::spawn(task.run());
    let client =
        Client { commands, streams, key, config, outgoing: Arc::default(), blobs, reachability };
    tokio::spawn(receive_frames(client.clone(), incoming, frames_tx));
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
    /// hash. The store holds at most `max_blob_bytes` and drops the oldest blobs to make room.
    pub fn publish_blob(&self, bytes: Vec<u8>) -> Result<[u8; 32], P2pError> {
        let len = bytes.len();
        let mut store = self.blobs.lock().map_err(|_| P2pError::Stopped)?;
        store.insert(bytes).ok_or_else(|| {
            P2pError::Transport(format!(
                "a blob of {len} bytes is larger than the blob store ({} bytes)",
                self.config.max_blob_bytes
            ))
        })
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
        let _permit = permit_pool.acquire().await.map_err(|_| P2pError::Stopped)?;
        // libp2p-stream hands inbound streams over through a channel without buffer and drops
        // a stream that arrives while the previous one is being taken: under concurrency a few
        // streams are reset before the receiver reads a byte. Such a reset is retried; a peer
        // that is really gone fails every attempt. (A retry after a lost receipt can deliver a
        // frame twice: receivers deduplicate by header hash.)
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_send_frame(peer, header, payload).await {
                Err(P2pError::PeerGone { .. }) if attempt < SEND_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(5 * attempt as u64)).await;
                }
                other => return other,
            }
        }
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
            Some(Reply::Accepted(r)) if r.header_hash == header.hash() && r.verify(&peer) => Ok(r),
            Some(Reply::Accepted(_)) => Err(P2pError::BadReceipt { peer }),
            Some(Reply::Refused(reason)) => Err(P2pError::Refused { peer, reason }),
            None if reply.is_empty() => {
                Err(P2pError::PeerGone { peer, reason: "stream closed before a receipt".into() })
            }
            None => Err(P2pError::BadReceipt { peer }),
        }
    }
}

/// Accepts tensor streams: at most `max_in_flight_per_peer` per peer at once, each checked and
/// delivered to the bounded queue before the receipt is signed.
async fn receive_frames(
    client: Client,
    mut incoming: libp2p_stream::IncomingStreams,
    frames: mpsc::Sender<IncomingFrame>,
) {
    let limits: Arc<Mutex<HashMap<PeerId, Arc<Semaphore>>>> = Arc::default();
    let seen = Arc::new(Mutex::new(Recent::new(client.config.dedup_window)));
    while let Some((peer, stream)) = incoming.next().await {
        let pool = match limits.lock() {
            Ok(mut m) => m
                .entry(peer)
                // Twice the sender's bound: a sender reuses its slot as soon as it holds the
                // receipt, a moment before this side has closed the stream.
                .or_insert_with(|| {
                    Arc::new(Semaphore::new(2 * client.config.max_in_flight_per_peer.max(1)))
                })
                .clone(),
            Err(_) => return,
        };
        let client = client.clone();
        let frames = frames.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            // Busy is not misbehaviour: refused, but no strike.
            let Ok(permit) = pool.try_acquire() else {
                tracing::debug!(%peer, "refused a tensor frame: too many in flight");
                let _ = stream
                    .write_all(&Reply::Refused("too many frames in flight".into()).encode())
                    .await;
                let _ = stream.close().await;
                return;
            };
            let timeout = client.config.frame_timeout;
            let result = tokio::time::timeout(
                timeout,
                read_frame(&mut stream, client.config.max_frame_bytes),
            )
            .await;
            let outcome = match result {
                Ok(Ok((header, payload))) => {
                    let hash = header.hash();
                    // A sender retries a stream that was reset after delivery: sign again, but
                    // deliver once.
                    let fresh = seen.lock().map(|mut s| s.insert((peer, hash))).unwrap_or(true);
                    if !fresh {
                        tracing::debug!(%peer, "a frame delivered before arrived again");
                        Ok(hash)
                    } else if frames.send(IncomingFrame { peer, header, payload }).await.is_err() {
                        Err("receiver is shutting down".to_string())
                    } else {
                        Ok(hash)
                    }
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!("frame not complete within {timeout:?}")),
            };
            drop(permit);
            let reply = match outcome {
                Ok(hash) => Reply::Accepted(Receipt::sign(&client.key, hash)),
                Err(reason) => {
                    tracing::warn!(%peer, %reason, "refused a tensor frame");
                    let _ = client.commands.send(Command::Strike { peer }).await;
                    Reply::Refused(reason)
                }
            };
            let _ = stream.write_all(&reply.encode()).await;
            let _ = stream.close().await;
        });
    }
}

/// The last `cap` keys seen, for deduplication.
struct Recent<K> {
    cap: usize,
    order: VecDeque<K>,
    set: HashSet<K>,
}

impl<K: std::hash::Hash + Eq + Clone> Recent<K> {
    fn new(cap: usize) -> Self {
        Recent { cap: cap.max(1), order: VecDeque::new(), set: HashSet::new() }
    }

    /// True if `key` was not among the last `cap` keys.
    fn insert(&mut self, key: K) -> bool {
        if !self.set.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
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
        ControlResponse::NotFound => "NotFound".into(),
        ControlResponse::Ack => "Ack".into(),
        ControlResponse::Error(e) => format!("Error({})", e.chars().take(200).collect::<String>()),
    }
}

async fn read_frame(
    stream: &mut libp2p::Stream,
    max_payload: u64,
) -> Result<(FrameHeader, Vec<u8>), String> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(|e| format!("reading header length: {e}"))?;
    let len = u16::from_le_bytes(len) as usize;
    if len > MAX_HEADER_LEN {
        return Err(FrameError::HeaderLength(len).to_string());
    }
    let mut header = vec![0u8; len];
    stream.read_exact(&mut header).await.map_err(|e| format!("reading header: {e}"))?;
    let header = FrameHeader::decode(&header).map_err(|e| e.to_string())?;
    header.check_len(max_payload).map_err(|e| e.to_string())?;
    let mut payload = vec![0u8; header.payload_len as usize];
    stream.read_exact(&mut payload).await.map_err(|e| format!("reading payload: {e}"))?;
    header.check_payload(&payload).map_err(|e| e.to_string())?;
    Ok((header, payload))
}

struct SwarmTask {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    /// For audit queries, which answer through the task.
    commands_tx: mpsc::Sender<Command>,
    status: watch::Receiver<NodeStatus>,
    max_strikes: u32,
    strikes: HashMap<PeerId, u32>,
    listening: HashMap<ListenerId, oneshot::Sender<Result<Multiaddr, P2pError>>>,
    dialing: HashMap<PeerId, Vec<oneshot::Sender<Result<(), P2pError>>>>,
    requests: HashMap<OutboundRequestId, oneshot::Sender<Result<ControlResponse, P2pError>>>,
    lookups: HashMap<QueryId, (PeerId, oneshot::Sender<Result<Vec<Multiaddr>, P2pError>>)>,
    blobs: Arc<Mutex<BlobStore>>,
    audits: mpsc::Sender<AuditQuery>,
    notices: mpsc::Sender<(PeerId, PresenceNotice)>,
    reachability: watch::Sender<Reachability>,
}

impl SwarmTask {
    async fn run(mut self) {
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        let _ = reply.send(());
                        return;
                    }
                    Some(c) => self.on_command(c),
                    None => return, // every client is gone
                },
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Listen { addr, reply } => match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    self.listening.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply
                        .send(Err(P2pError::Transport(format!("cannot listen on {addr}: {e}"))));
                }
            },
            Command::Dial { peer, addr, reply } => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                self.swarm.add_peer_address(peer, addr.clone());
                // Dial the peer (not just the address): the connection must authenticate as
                // `peer`, and a failure names it, so the waiting caller is always answered.
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(vec![addr])
                    .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                    .build();
                match self.swarm.dial(opts) {
                    Ok(()) => self.dialing.entry(peer).or_default().push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(P2pError::Dial { peer, reason: e.to_string() }));
                    }
                }
            }
            Command::Request { peer, req, reply } => {
                let id = self.swarm.behaviour_mut().control.send_request(&peer, req);
                self.requests.insert(id, reply);
            }
            Command::Strike { peer } => {
                let n = self.strikes.entry(peer).or_insert(0);
                *n += 1;
                if *n >= self.max_strikes {
                    tracing::warn!(%peer, strikes = *n, "disconnecting a peer that sent bad frames");
                    let _ = self.swarm.disconnect_peer_id(peer);
                    self.strikes.remove(&peer);
                }
            }
            Command::FindPeer { peer, reply } => {
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                self.lookups.insert(id, (peer, reply));
            }
            Command::Respond { channel, response } => {
                let _ = self.swarm.behaviour_mut().control.send_response(channel, response);
            }
            Command::AddExternal { addr } => self.swarm.add_external_address(addr),
            Command::Connected { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Shutdown { .. } => {}
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { listener_id, address } => {
                if address.iter().any(|p| p == Protocol::P2pCircuit) {
                    tracing::info!(%address, "listening through a relay");
                    if !matches!(*self.reachability.borrow(), Reachability::Public(_)) {
                        self.reachability.send_replace(Reachability::Relayed(address.clone()));
                    }
                }
                if let Some(reply) = self.listening.remove(&listener_id) {
                    let _ = reply.send(Ok(address));
                }
            }
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                if let Some(reply) = self.listening.remove(&listener_id) {
                    let why = match reason {
                        Ok(()) => "listener closed".to_string(),
                        Err(e) => e.to_string(),
                    };
                    let _ = reply.send(Err(P2pError::Transport(format!("cannot listen: {why}"))));
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some(reply) = self.listening.remove(&listener_id) {
                    let _ = reply.send(Err(P2pError::Transport(format!("cannot listen: {error}"))));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => {
                let now = match new {
                    autonat::NatStatus::Public(addr) => {
                        self.swarm.add_external_address(addr.clone());
                        Reachability::Public(addr)
                    }
                    autonat::NatStatus::Private => match &*self.reachability.borrow() {
                        r @ Reachability::Relayed(_) => r.clone(),
                        _ => Reachability::Private,
                    },
                    autonat::NatStatus::Unknown => Reachability::Unknown,
                };
                tracing::info!(reachability = ?now, "AutoNAT");
                self.reachability.send_replace(now);
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(event)) => {
                tracing::debug!(?event, "relay client");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => {
                tracing::debug!(?event, "relay server");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => {
                    tracing::info!(peer = %remote_peer_id, "direct connection by hole punching")
                }
                Err(e) => {
                    tracing::info!(peer = %remote_peer_id, error = %e, "hole punching failed; staying relayed")
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    tracing::debug!(%peer, %addr, "found on the LAN (mDNS)");
                    self.swarm.add_peer_address(peer, addr.clone());
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(peer);
                    }
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                for reply in self.dialing.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                for reply in self.dialing.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Err(P2pError::Dial { peer, reason: error.to_string() }));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Control(event)) => self.on_control(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                // What a peer says it listens on feeds the DHT's routing table.
                if info.protocols.contains(&KAD_PROTOCOL) {
                    for addr in info.listen_addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetClosestPeers(result),
                ..
            })) => {
                if let Some((target, reply)) = self.lookups.remove(&id) {
                    let peers = match result {
                        Ok(ok) => ok.peers,
                        Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                    };
                    let found = peers.into_iter().find(|p| p.peer_id == target).map(|p| p.addrs);
                    let _ = reply.send(match found {
                        Some(addrs) if !addrs.is_empty() => {
                            for a in &addrs {
                                self.swarm.add_peer_address(target, a.clone());
                            }
                            Ok(addrs)
                        }
                        _ => Err(P2pError::Dial {
                            peer: target,
                            reason: "not found in the DHT".into(),
                        }),
                    });
                }
            }
            _ => {}
        }
    }

    fn on_control(&mut self, event: request_response::Event<ControlRequest, ControlResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                let response = match request {
                    ControlRequest::Ping { nonce } => ControlResponse::Pong { nonce },
                    ControlRequest::Status => ControlResponse::Status(self.status.borrow().clone()),
                    ControlRequest::WhoServes { sliver } => ControlResponse::Servers {
                        sliver,
                        peers: self
                            .status
                            .borrow()
                            .directory
                            .get(&sliver)
                            .map(|v| v.iter().take(MAX_SERVERS).cloned().collect())
                            .unwrap_or_default(),
                    },
                    ControlRequest::Blob { hash, offset, max_len } => {
                        let chunk = self
                            .blobs
                            .lock()
                            .ok()
                            .and_then(|s| s.chunk(&hash, offset, max_len.min(MAX_BLOB_CHUNK)));
                        match chunk {
                            Some((total, data)) => {
                                ControlResponse::BlobChunk { total, offset, data }
                            }
                            None => ControlResponse::NotFound,
                        }
                    }
                    ControlRequest::Audit(request) => {
                        let query = AuditQuery {
                            peer,
                            request,
                            channel: Some(channel),
                            commands: self.commands_tx.clone(),
                        };
                        if let Err(e) = self.audits.try_send(query) {
                            // Busy or not listening: the query's drop answers "no answer".
                            tracing::debug!(%peer, "audit request not queued: {e}");
                        }
                        return;
                    }
                    ControlRequest::Presence(notice) => match self.notices.try_send((peer, notice))
                    {
                        Ok(()) => ControlResponse::Ack,
                        Err(e) => ControlResponse::Error(format!("notice not taken: {e}")),
                    },
                };
                let _ = self.swarm.behaviour_mut().control.send_response(channel, response);
            }
            Event::Message { message: Message::Response { request_id, response }, .. } => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure { request_id, peer, error, .. } => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Err(P2pError::Request { peer, reason: error.to_string() }));
                }
            }
            _ => {}
        }
    }
}
