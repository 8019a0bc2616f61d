//! Who may talk to this node: the chain's registered peers, minus the peers banned for the rest
//! of the epoch, within per-IP connection limits.
//!
//! A node starts *open* (every peer admitted, as tests and tools want). A miner or validator
//! closes it with [`crate::Client::set_peers`], giving the registry's PeerIds and their roles;
//! from then on a connection from any other peer is denied as soon as the noise handshake has
//! named it, before any protocol runs, and connections of peers that left the registry are
//! closed. Peers that keep sending bad frames are banned ([`Admission::ban`]) until the
//! application clears the bans at the next epoch boundary.
//!
//! The [`Admission`] behaviour enforces this on connections. The swarm task owns it and
//! publishes each change as an [`AdmissionView`] on a `watch` channel, which the tensor-stream
//! receiver and the control handler consult per stream and per request (so that a peer whose
//! registration ends mid-connection is refused at once).

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    dummy, CloseConnection, ConnectionClosed, ConnectionDenied, ConnectionId, DialFailure,
    FromSwarm, ListenFailure, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::watch;

/// What a registered peer does, as the chain says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerRole {
    /// Trains a sliver: may send tensor frames, presence notices, blob requests.
    Miner,
    /// Audits: may also send audit requests, and relays.
    Validator,
}

/// The peers admitted now: open (anyone), or the registry's peers; minus the banned ones.
#[derive(Clone, Debug, Default)]
pub struct AdmissionView {
    /// `None`: open, every peer admitted. `Some`: only these peers, in these roles.
    registered: Option<Arc<HashMap<PeerId, PeerRole>>>,
    banned: Arc<HashSet<PeerId>>,
}

impl AdmissionView {
    /// The role `peer` is admitted in: `Some(None)` for any peer of an open node, `None` if it
    /// is not admitted (not registered, or banned).
    pub fn role(&self, peer: &PeerId) -> Option<Option<PeerRole>> {
        if self.banned.contains(peer) {
            return None;
        }
        match &self.registered {
            None => Some(None),
            Some(map) => map.get(peer).map(|r| Some(*r)),
        }
    }

    /// Whether `peer` may connect and send anything at all.
    pub fn admits(&self, peer: &PeerId) -> bool {
        self.role(peer).is_some()
    }

    /// Whether `peer` may ask for audits: a registered validator (any peer of an open node).
    pub fn is_validator(&self, peer: &PeerId) -> bool {
        matches!(self.role(peer), Some(None | Some(PeerRole::Validator)))
    }

    /// Whether the node only admits registered peers.
    pub fn is_closed(&self) -> bool {
        self.registered.is_some()
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.contains(peer)
    }
}

/// Why a connection was denied.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// Not among the registry's peers.
    #[error("peer {0} is not a registered miner or validator")]
    NotRegistered(PeerId),
    /// Banned for the rest of the epoch after repeated bad frames.
    #[error("peer {0} is banned for the rest of the epoch")]
    Banned(PeerId),
    /// Too many connections from one IP address.
    #[error("{ip} already has {count} connections (limit {limit})")]
    TooManyFromIp {
        /// The address.
        ip: IpAddr,
        /// Its connections.
        count: u32,
        /// The limit.
        limit: u32,
    },
}

/// The connection-level gate: registered peers only (once closed), no banned peers, at most
/// `max_per_ip` connections (pending and established) from one IP address. Relayed
/// connections are not counted against the relay's address.
pub struct Admission {
    view: AdmissionView,
    publish: watch::Sender<AdmissionView>,
    max_per_ip: u32,
    per_ip: HashMap<IpAddr, u32>,
    /// Every connection: the IP it is counted against (inbound, direct) and its peer.
    connections: HashMap<ConnectionId, (Option<IpAddr>, Option<PeerId>)>,
    peers: HashMap<PeerId, HashSet<ConnectionId>>,
    close: VecDeque<PeerId>,
    waker: Option<Waker>,
}

impl Admission {
    /// An open gate with a per-IP limit; returns it and the channel its views are published on.
    pub fn new(max_per_ip: u32) -> (Self, watch::Receiver<AdmissionView>) {
        let (publish, rx) = watch::channel(AdmissionView::default());
        let gate = Admission {
            view: AdmissionView::default(),
            publish,
            max_per_ip: max_per_ip.max(1),
            per_ip: HashMap::new(),
            connections: HashMap::new(),
            peers: HashMap::new(),
            close: VecDeque::new(),
            waker: None,
        };
        (gate, rx)
    }

    /// Admits only `peers` from now on (`None`: everyone), closing the connections of peers no
    /// longer admitted.
    pub fn set_registered(&mut self, peers: Option<HashMap<PeerId, PeerRole>>) {
        self.view.registered = peers.map(Arc::new);
        self.publish_and_close();
    }

    /// Bans `peer` until [`Admission::clear_bans`]; its connections are closed.
    pub fn ban(&mut self, peer: PeerId) {
        let mut banned = (*self.view.banned).clone();
        if banned.insert(peer) {
            self.view.banned = Arc::new(banned);
            self.publish_and_close();
        }
    }

    /// Lifts every ban (the application does this at each epoch boundary).
    pub fn clear_bans(&mut self) {
        if !self.view.banned.is_empty() {
            self.view.banned = Arc::default();
            let _ = self.publish.send_replace(self.view.clone());
        }
    }

    /// The current view.
    pub fn view(&self) -> &AdmissionView {
        &self.view
    }

    fn publish_and_close(&mut self) {
        let _ = self.publish.send_replace(self.view.clone());
        let out: Vec<PeerId> =
            self.peers.keys().filter(|p| !self.view.admits(p)).copied().collect();
        self.close.extend(out);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn enforce(&self, peer: &PeerId) -> Result<(), ConnectionDenied> {
        if self.view.is_banned(peer) {
            return Err(ConnectionDenied::new(Denied::Banned(*peer)));
        }
        if !self.view.admits(peer) {
            return Err(ConnectionDenied::new(Denied::NotRegistered(*peer)));
        }
        Ok(())
    }

    /// Counts a pending inbound connection against its IP address.
    fn count_ip(&mut self, id: ConnectionId, addr: &Multiaddr) -> Result<(), ConnectionDenied> {
        let ip = ip_of(addr);
        if let Some(ip) = ip {
            let count = self.per_ip.get(&ip).copied().unwrap_or(0);
            if count >= self.max_per_ip {
                return Err(ConnectionDenied::new(Denied::TooManyFromIp {
                    ip,
                    count,
                    limit: self.max_per_ip,
                }));
            }
            self.per_ip.insert(ip, count + 1);
        }
        self.connections.insert(id, (ip, None));
        Ok(())
    }

    fn forget(&mut self, id: ConnectionId) {
        if let Some((ip, peer)) = self.connections.remove(&id) {
            if let Some(ip) = ip {
                if let Some(n) = self.per_ip.get_mut(&ip) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_ip.remove(&ip);
                    }
                }
            }
            if let Some(peer) = peer {
                if let Some(set) = self.peers.get_mut(&peer) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.peers.remove(&peer);
                    }
                }
            }
        }
    }

    /// Records the peer of an established connection (outbound ones are not counted per IP:
    /// the limit is on what others open here).
    fn established(&mut self, id: ConnectionId, peer: PeerId) {
        self.connections.entry(id).or_insert((None, None)).1 = Some(peer);
        self.peers.entry(peer).or_default().insert(id);
    }

    /// Connections counted per IP address now (for tests and metrics).
    pub fn connections_from(&self, ip: &IpAddr) -> u32 {
        self.per_ip.get(ip).copied().unwrap_or(0)
    }
}

/// The IP address a connection comes from; `None` for relayed connections (the relay limits
/// its circuits itself) and non-IP transports.
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl NetworkBehaviour for Admission {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.count_ip(id, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // A denial here is reported back as a listen failure, which forgets the connection.
        self.enforce(&peer)?;
        self.established(id, peer);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _id: ConnectionId,
        peer: Option<PeerId>,
        _addrs: &[Multiaddr],
        _role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(peer) = peer {
            self.enforce(&peer)?;
        }
        Ok(Vec::new())
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.enforce(&peer)?;
        self.established(id, peer);
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.forget(connection_id)
            }
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. })
            | FromSwarm::DialFailure(DialFailure { connection_id, .. }) => {
                self.forget(connection_id)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(peer) = self.close.pop_front() {
            return Poll::Ready(ToSwarm::CloseConnection {
                peer_id: peer,
                connection: CloseConnection::All,
            });
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_admit_registered_unbanned_peers_in_their_roles() {
        let (mut gate, rx) = Admission::new(4);
        let (m, v, x) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert_eq!(rx.borrow().role(&x), Some(None), "open: anyone");
        assert!(rx.borrow().is_validator(&x), "open: tools may audit");
        gate.set_registered(Some(HashMap::from([(m, PeerRole::Miner), (v, PeerRole::Validator)])));
        let view = rx.borrow().clone();
        assert!(view.admits(&m) && view.admits(&v) && !view.admits(&x));
        assert!(!view.is_validator(&m) && view.is_validator(&v));
        gate.ban(m);
        assert!(!rx.borrow().admits(&m) && rx.borrow().is_banned(&m));
        gate.clear_bans();
        assert!(rx.borrow().admits(&m));
    }

    #[test]
    fn ip_addresses_of_direct_connections_only() {
        assert_eq!(
            ip_of(&"/ip4/10.1.2.3/tcp/5".parse().unwrap()),
            Some("10.1.2.3".parse().unwrap())
        );
        let relayed: Multiaddr =
            format!("/ip4/10.1.2.3/tcp/5/p2p/{}/p2p-circuit", PeerId::random()).parse().unwrap();
        assert_eq!(ip_of(&relayed), None);
        assert_eq!(ip_of(&"/memory/1".parse().unwrap()), None);
    }
}
