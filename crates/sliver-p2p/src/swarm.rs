//! The task that owns the libp2p `Swarm`: it takes [`Command`]s from clients, answers control
//! requests (ping, status, "who serves", blob chunks within each peer's serving budget, audit
//! requests from validators only, presence notices), keeps strikes and bans, and records
//! libp2p's own metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::kad::{self, store::MemoryStore, QueryId, QueryResult};
use libp2p::metrics::Recorder;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    autonat, connection_limits, dcutr, identify, mdns, ping, relay, Multiaddr, PeerId, Swarm,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::admission::{Admission, PeerRole};
use crate::blobs::Blobs;
use crate::budget::ServeBudget;
use crate::control::*;
use crate::metrics::P2pMetrics;
use crate::network::{AuditAsk, AuditQuery, Reachability, KAD_PROTOCOL};
use crate::P2pError;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) admission: Admission,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) stream: libp2p_stream::Behaviour,
    pub(crate) control: request_response::cbor::Behaviour<ControlRequest, ControlResponse>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) kad: kad::Behaviour<MemoryStore>,
    pub(crate) ping: ping::Behaviour,
    pub(crate) autonat: autonat::Behaviour,
    pub(crate) relay_client: relay::client::Behaviour,
    pub(crate) relay: Toggle<relay::Behaviour>,
    pub(crate) dcutr: dcutr::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
}

pub(crate) enum Command {
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
        reason: String,
    },
    SetPeers {
        peers: Option<HashMap<PeerId, PeerRole>>,
        reply: oneshot::Sender<()>,
    },
    ClearBans,
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Where the answer to a DHT lookup goes.
pub(crate) type LookupReply = oneshot::Sender<Result<Vec<Multiaddr>, P2pError>>;

/// Most peers whose strikes are remembered at once (only admitted peers can earn strikes, so
/// this bounds an open node).
const MAX_STRUCK: usize = 4096;

pub(crate) struct SwarmTask {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) commands: mpsc::Receiver<Command>,
    /// For audit queries, which answer through the task.
    pub(crate) commands_tx: mpsc::Sender<Command>,
    pub(crate) status: watch::Receiver<NodeStatus>,
    pub(crate) max_strikes: u32,
    pub(crate) strikes: HashMap<PeerId, u32>,
    pub(crate) listening: HashMap<ListenerId, oneshot::Sender<Result<Multiaddr, P2pError>>>,
    pub(crate) dialing: HashMap<PeerId, Vec<oneshot::Sender<Result<(), P2pError>>>>,
    pub(crate) requests:
        HashMap<OutboundRequestId, oneshot::Sender<Result<ControlResponse, P2pError>>>,
    pub(crate) lookups: HashMap<QueryId, (PeerId, LookupReply)>,
    pub(crate) blobs: Arc<Mutex<Blobs>>,
    pub(crate) serving: ServeBudget,
    pub(crate) audits: mpsc::Sender<AuditQuery>,
    pub(crate) notices: mpsc::Sender<(PeerId, PresenceNotice)>,
    pub(crate) reachability: watch::Sender<Reachability>,
    pub(crate) metrics: P2pMetrics,
    pub(crate) libp2p_metrics: libp2p::metrics::Metrics,
}

impl SwarmTask {
    pub(crate) async fn run(mut self) {
        loop {
            tokio::select! {
                event = futures::StreamExt::select_next_some(&mut self.swarm) => self.on_event(event),
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
            Command::Strike { peer, reason } => self.strike(peer, &reason),
            Command::SetPeers { peers, reply } => {
                self.swarm.behaviour_mut().admission.set_registered(peers);
                let _ = reply.send(());
            }
            Command::ClearBans => {
                self.swarm.behaviour_mut().admission.clear_bans();
                self.strikes.clear();
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

    /// Counts a strike against `peer`; at `max_strikes` in one epoch it is banned (disconnected
    /// and refused) until the application clears the bans at the next boundary.
    fn strike(&mut self, peer: PeerId, reason: &str) {
        self.metrics.strikes.inc();
        if self.strikes.len() >= MAX_STRUCK && !self.strikes.contains_key(&peer) {
            // Forget one of the peers with the fewest strikes rather than grow without bound.
            let least = self.strikes.iter().min_by_key(|(_, n)| **n).map(|(p, _)| *p);
            if let Some(p) = least {
                self.strikes.remove(&p);
            }
        }
        let n = self.strikes.entry(peer).or_insert(0);
        *n += 1;
        tracing::debug!(%peer, strikes = *n, %reason, "strike");
        if *n >= self.max_strikes {
            tracing::warn!(%peer, strikes = *n, last = %reason, "banning a peer for the rest of the epoch: repeated bad frames or requests");
            self.strikes.remove(&peer);
            self.metrics.bans.inc();
            self.swarm.behaviour_mut().admission.ban(peer);
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.libp2p_metrics.record(&event);
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
                self.libp2p_metrics.record(&event);
                tracing::debug!(?event, "relay server");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(event)) => {
                self.libp2p_metrics.record(&event);
                match event.result {
                    Ok(_) => {
                        tracing::info!(peer = %event.remote_peer_id, "direct connection by hole punching")
                    }
                    Err(e) => {
                        tracing::info!(peer = %event.remote_peer_id, error = %e, "hole punching failed; staying relayed")
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let admission = self.swarm.behaviour().admission.view().clone();
                for (peer, addr) in found {
                    if !admission.admits(&peer) {
                        continue;
                    }
                    tracing::debug!(%peer, %addr, "found on the LAN (mDNS)");
                    self.swarm.add_peer_address(peer, addr.clone());
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(peer);
                    }
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                self.metrics.connected_peers.set(self.swarm.connected_peers().count() as i64);
                for reply in self.dialing.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
            }
            SwarmEvent::ConnectionClosed { .. } => {
                self.metrics.connected_peers.set(self.swarm.connected_peers().count() as i64);
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                for reply in self.dialing.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Err(P2pError::Dial { peer, reason: error.to_string() }));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Control(event)) => self.on_control(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => {
                self.libp2p_metrics.record(&event);
                if let identify::Event::Received { peer_id, info, .. } = event {
                    // What a peer says it listens on feeds the DHT's routing table (at most a
                    // few addresses: a peer's claims cost this node memory).
                    if info.protocols.contains(&KAD_PROTOCOL) {
                        for addr in info.listen_addrs.into_iter().take(MAX_ADDRS) {
                            self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(event)) => {
                self.libp2p_metrics.record(&event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => {
                self.libp2p_metrics.record(&event);
                if let kad::Event::OutboundQueryProgressed {
                    id,
                    result: QueryResult::GetClosestPeers(result),
                    ..
                } = event
                {
                    self.on_lookup(id, result);
                }
            }
            _ => {}
        }
    }

    fn on_lookup(&mut self, id: QueryId, result: kad::GetClosestPeersResult) {
        let Some((target, reply)) = self.lookups.remove(&id) else { return };
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
            _ => Err(P2pError::Dial { peer: target, reason: "not found in the DHT".into() }),
        });
    }

    fn on_control(&mut self, event: request_response::Event<ControlRequest, ControlResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                let admission = self.swarm.behaviour().admission.view().clone();
                let response = match request {
                    // Connected before its registration ended or its ban began.
                    _ if !admission.admits(&peer) => {
                        ControlResponse::Error("not admitted: register on chain first".into())
                    }
                    ControlRequest::Audit(_)
                    | ControlRequest::AuditIndex(_)
                    | ControlRequest::AuditSteps(_)
                    | ControlRequest::AuditBlobs(_)
                        if !admission.is_validator(&peer) =>
                    {
                        self.metrics.requests_refused.inc();
                        self.strike(peer, "an audit request from a peer that is not a validator");
                        ControlResponse::Error(
                            "audits are answered for registered validators only".into(),
                        )
                    }
                    ControlRequest::Audit(request) => {
                        self.queue_audit(peer, AuditAsk::MicroBatch(request), channel);
                        return;
                    }
                    ControlRequest::AuditIndex(request) => {
                        self.queue_audit(peer, AuditAsk::Index(request), channel);
                        return;
                    }
                    ControlRequest::AuditSteps(request) => {
                        self.queue_audit(peer, AuditAsk::Steps(request), channel);
                        return;
                    }
                    ControlRequest::AuditBlobs(request) => {
                        self.queue_audit(peer, AuditAsk::Blobs(request), channel);
                        return;
                    }
                    other => self.answer(peer, other),
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

    /// Hands a validator's audit request to the application (its queue is bounded: a full one
    /// answers "no answer").
    fn queue_audit(
        &mut self,
        peer: PeerId,
        ask: AuditAsk,
        channel: request_response::ResponseChannel<ControlResponse>,
    ) {
        let query = AuditQuery::new(peer, ask, channel, self.commands_tx.clone());
        if let Err(e) = self.audits.try_send(query) {
            // Busy or not listening: the query's drop answers "no answer".
            tracing::debug!(%peer, "audit request not queued: {e}");
        }
    }

    /// The answer to a request (other than an audit) from an admitted `peer`.
    fn answer(&mut self, peer: PeerId, request: ControlRequest) -> ControlResponse {
        match request {
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
                        if self.serving.take(peer, data.len() as u64, Instant::now()) {
                            self.metrics.blob_bytes_served.inc_by(data.len() as u64);
                            ControlResponse::BlobChunk { total, offset, data }
                        } else {
                            self.metrics.serve_refused.inc();
                            ControlResponse::Error(SERVE_BUDGET_SPENT.into())
                        }
                    }
                    None => ControlResponse::NotFound,
                }
            }
            ControlRequest::Presence(notice) => match self.notices.try_send((peer, notice)) {
                Ok(()) => ControlResponse::Ack,
                Err(e) => ControlResponse::Error(format!("notice not taken: {e}")),
            },
            ControlRequest::Audit(_)
            | ControlRequest::AuditIndex(_)
            | ControlRequest::AuditSteps(_)
            | ControlRequest::AuditBlobs(_) => ControlResponse::Error("audits are queued".into()),
        }
    }
}

/// What a peer whose blob-serving budget is spent is told.
pub(crate) const SERVE_BUDGET_SPENT: &str = "serving budget for this peer spent; retry later";

/// How long the swarm keeps an idle connection.
pub(crate) const IDLE_CONNECTION: Duration = Duration::from_secs(120);
