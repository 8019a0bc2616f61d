//! The network: one task owns the libp2p `Swarm`; a cloneable [`Client`] sends it commands over
//! a channel and gets answers on oneshots (the shape of rust-libp2p's file-sharing example).
//! Tensor frames bypass the swarm task: they travel on `libp2p-stream` streams opened from the
//! client, with per-peer bounds on frames in flight, timeouts and full checks on receipt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore, QueryId, QueryResult};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

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
        }
    }
}

/// Control requests (request-response, CBOR).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Liveness and round-trip time.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// What the peer serves now.
    Status,
    /// The peers the node knows to serve `sliver` in the current run.
    WhoServes {
        /// Sliver index.
        sliver: u16,
    },
}

/// Control responses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// Answer to `Ping`.
    Pong {
        /// The request's nonce.
        nonce: u64,
    },
    /// Answer to `Status`.
    Status(NodeStatus),
    /// Answer to `WhoServes`.
    Servers {
        /// The sliver asked about.
        sliver: u16,
        /// Its servers as the answering node knows them.
        peers: Vec<PeerRecord>,
    },
}

/// A peer and its addresses, as strings on the wire (parsed and checked by the receiver).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Base58 PeerId.
    pub peer_id: String,
    /// Multiaddrs.
    pub addrs: Vec<String>,
}

/// Most servers accepted in one `Servers` answer, and addresses per server.
pub const MAX_SERVERS: usize = 64;
/// Most addresses accepted per server.
pub const MAX_ADDRS: usize = 8;

/// What a node says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Training run.
    pub run: u64,
    /// Epoch.
    pub epoch: u64,
    /// Slivers this node serves.
    pub slivers: Vec<u16>,
    /// Servers of each sliver this node knows of (from the chain registry and its peers).
    pub directory: std::collections::BTreeMap<u16, Vec<PeerRecord>>,
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

#[derive(NetworkBehaviour)]
struct Behaviour {
    stream: libp2p_stream::Behaviour,
    control: request_response::cbor::Behaviour<ControlRequest, ControlResponse>,
    identify: identify::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    ping: ping::Behaviour,
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
}

/// Starts a node with `key`: spawns the swarm task and the frame receiver. Returns the client
/// and the queue of accepted frames. `status` is what the node answers to `Status` requests.
pub fn start(
    key: Keypair,
    config: NetworkConfig,
    status: watch::Receiver<NodeStatus>,
) -> Result<(Client, mpsc::Receiver<IncomingFrame>), P2pError> {
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
        .with_behaviour(|k| Behaviour {
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
        })
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    let mut streams = swarm.behaviour().stream.new_control();
    let incoming = streams
        .accept(TENSOR_PROTOCOL)
        .map_err(|_| P2pError::Transport("tensor protocol registered twice".into()))?;
    let (commands, rx) = mpsc::channel(64);
    let (frames_tx, frames_rx) = mpsc::channel(config.delivery_queue.max(1));
    tokio::spawn(SwarmTask::new(swarm, rx, status, config.max_strikes).run());
    let client = Client { commands, streams, key, config, outgoing: Arc::default() };
    tokio::spawn(receive_frames(client.clone(), incoming, frames_tx));
    Ok((client, frames_rx))
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

    /// Connects to `peer` at `addr`.
    pub async fn dial(&self, peer: PeerId, addr: Multiaddr) -> Result<(), P2pError> {
        self.call(|reply| Command::Dial { peer, addr, reply }).await?
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
            other => {
                Err(P2pError::Request { peer, reason: format!("unexpected answer {other:?}") })
            }
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
                    if frames.send(IncomingFrame { peer, header, payload }).await.is_err() {
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
    status: watch::Receiver<NodeStatus>,
    max_strikes: u32,
    strikes: HashMap<PeerId, u32>,
    listening: Vec<oneshot::Sender<Result<Multiaddr, P2pError>>>,
    dialing: HashMap<PeerId, Vec<oneshot::Sender<Result<(), P2pError>>>>,
    requests: HashMap<OutboundRequestId, oneshot::Sender<Result<ControlResponse, P2pError>>>,
    lookups: HashMap<QueryId, (PeerId, oneshot::Sender<Result<Vec<Multiaddr>, P2pError>>)>,
}

impl SwarmTask {
    fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        status: watch::Receiver<NodeStatus>,
        max_strikes: u32,
    ) -> Self {
        SwarmTask {
            swarm,
            commands,
            status,
            max_strikes,
            strikes: HashMap::new(),
            listening: Vec::new(),
            dialing: HashMap::new(),
            requests: HashMap::new(),
            lookups: HashMap::new(),
        }
    }

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
                Ok(_) => self.listening.push(reply),
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
                match self.swarm.dial(addr.clone()) {
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
            Command::Shutdown { .. } => {}
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                for reply in self.listening.drain(..) {
                    let _ = reply.send(Ok(address.clone()));
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
            Event::Message { message: Message::Request { request, channel, .. }, .. } => {
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
