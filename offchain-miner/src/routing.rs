//! Whom the miner talks to: the neighbours it dials, the next sliver's miner each micro-batch
//! goes to, and the peers it tells when it leaves or rejoins — all taken from the chain's
//! assignment of the current epoch.
//!
//! The next hop is chosen SWARM-style among the miners of the next sliver whose node status
//! says they serve it (and that have not announced they are leaving): those within three times
//! the best status round trip, then, of those, the ones this miner measured at most 1.5 times
//! slower per completed micro-batch than the fastest, plus the ones not measured yet; routes
//! are spread over what remains. It is chosen again every [`REPICK_EVERY`], so a miner that
//! began serving late gets its share and a slow one loses it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sliver_operator::chain::ChainView;
use sliver_p2p::{Client, ControlRequest, ControlResponse, Multiaddr, PeerId};

use crate::gate::Neighbours;
use crate::presence::Presence;

/// How long a next hop is kept before it is chosen again.
pub const REPICK_EVERY: Duration = Duration::from_secs(10);
/// How often the neighbours are dialled again.
const DIAL_EVERY: Duration = Duration::from_secs(10);

/// The miners a leaving or rejoining miner tells: its replicas, and the miners of the
/// slivers before and after its own.
pub struct Peers {
    /// The other miners of its sliver.
    pub replicas: Vec<PeerId>,
    /// The miners of the neighbouring slivers.
    pub neighbours: Vec<PeerId>,
}

impl Peers {
    /// The peers of `sliver` in `view`'s epoch, without `me`.
    pub fn of(view: &ChainView, sliver: u16, me: PeerId) -> Self {
        let of = |s: Option<u16>| -> Vec<PeerId> {
            s.map(|s| view.miners(s))
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.peer)
                .filter(|p| *p != me)
                .collect()
        };
        let mut neighbours = of(sliver.checked_sub(1));
        neighbours.extend(of(sliver.checked_add(1)));
        Peers { replicas: of(Some(sliver)), neighbours }
    }

    /// Replicas and neighbours.
    pub fn all(&self) -> Vec<PeerId> {
        self.replicas.iter().chain(&self.neighbours).copied().collect()
    }
}

/// Who may send activations to a stage of `sliver` this epoch: the previous sliver's miners
/// (with their route when that sliver is the first: its position among them).
pub fn neighbours_of(view: &ChainView, sliver: u16) -> Neighbours {
    let routes = view.miners(0).len() as u64;
    let previous = match sliver.checked_sub(1) {
        None => HashMap::new(),
        Some(prev) => view
            .miners(prev)
            .iter()
            .enumerate()
            .map(|(i, p)| (p.peer, (prev == 0).then_some(i as u64)))
            .collect(),
    };
    Neighbours { previous, routes }
}

/// Where `uid` stands among the miners of `sliver` (its route, on the first sliver).
pub fn position(view: &ChainView, sliver: u16, uid: u16) -> u64 {
    view.miners(sliver).iter().position(|p| p.uid == uid).unwrap_or(0) as u64
}

/// The routing state of one training loop.
#[derive(Default)]
pub struct Routing {
    /// The next sliver's miner in use, with its status round trip.
    pub next: Option<(PeerId, Duration)>,
    picked: Option<Instant>,
    speeds: Speeds,
    /// Peers not to route to, until when.
    excluded: Vec<(PeerId, Instant)>,
    dialled: Option<Instant>,
}

impl Routing {
    /// Forgets the epoch's choices (a new epoch has a new assignment).
    pub fn reset(&mut self) {
        self.next = None;
        self.picked = None;
        self.excluded.clear();
    }

    /// Stops using `peer` for [`REPICK_EVERY`] (it dropped micro-batches or is gone); it is
    /// tried again after that, since a miner that restarted or was still merging at the
    /// boundary comes back.
    pub fn exclude(&mut self, peer: PeerId) {
        self.excluded.push((peer, Instant::now() + REPICK_EVERY));
        self.next = None;
    }

    /// Forgets the next hop (it left the pipeline).
    pub fn drop_next(&mut self) {
        self.next = None;
    }

    /// Records a step of `completed` micro-batches through `peer` that took `took`.
    pub fn record(&mut self, peer: PeerId, completed: u64, took: Duration) {
        self.speeds.record(peer, completed, took);
    }

    /// The next hop for the micro-batches of `route`, choosing again when it left or is due.
    pub async fn next_hop(
        &mut self,
        client: &Client,
        view: &ChainView,
        sliver: u16,
        route: u64,
        presence: &Presence,
    ) -> Option<(PeerId, Duration)> {
        if self.next.is_some_and(|(p, _)| presence.is_away(&p))
            || self.picked.is_some_and(|t| t.elapsed() > REPICK_EVERY)
        {
            self.next = None;
        }
        if self.next.is_none() {
            let now = Instant::now();
            self.excluded.retain(|(_, until)| *until > now);
            let excluded: Vec<PeerId> = self.excluded.iter().map(|(p, _)| *p).collect();
            self.next =
                pick_next(client, view, sliver, route, &excluded, presence, &self.speeds).await;
            self.picked = Some(Instant::now());
        }
        self.next
    }

    /// Dials the neighbours in the background when due (an unreachable one must not hold up
    /// training).
    pub fn dial_if_due(&mut self, client: &Client, view: &ChainView, sliver: u16) {
        if self.dialled.is_none_or(|t| t.elapsed() > DIAL_EVERY) {
            self.dialled = Some(Instant::now());
            let (c, peers) = (client.clone(), neighbour_addrs(view, sliver, client.peer_id()));
            tokio::spawn(async move { dial_all(&c, peers).await });
        }
    }
}

fn neighbour_addrs(view: &ChainView, sliver: u16, me: PeerId) -> Vec<(PeerId, Vec<Multiaddr>)> {
    [sliver.checked_sub(1), Some(sliver), sliver.checked_add(1)]
        .into_iter()
        .flatten()
        .flat_map(|s| view.miners(s))
        .filter(|p| p.peer != me)
        .map(|p| (p.peer, p.addrs.clone()))
        .collect()
}

async fn dial_all(client: &Client, peers: Vec<(PeerId, Vec<Multiaddr>)>) {
    futures::future::join_all(peers.into_iter().map(|(peer, addrs)| async move {
        for a in addrs {
            if client.dial(peer, a).await.is_ok() {
                break;
            }
        }
    }))
    .await;
}

/// Dials the registered miners of the neighbouring slivers and of `sliver`, all at once.
pub async fn connect_neighbours(client: &Client, view: &ChainView, sliver: u16) {
    dial_all(client, neighbour_addrs(view, sliver, client.peer_id())).await;
}

/// A live miner of `sliver` for the micro-batches of `route`, skipping `excluded` and miners
/// that left the pipeline; a candidate counts only once its status says it serves `sliver` in
/// this epoch (a miner still merging at the boundary does not yet). See [`choose_next`].
async fn pick_next(
    client: &Client,
    view: &ChainView,
    sliver: u16,
    route: u64,
    excluded: &[PeerId],
    presence: &Presence,
    speeds: &Speeds,
) -> Option<(PeerId, Duration)> {
    let candidates: Vec<PeerId> = view
        .miners(sliver)
        .iter()
        .map(|p| p.peer)
        .filter(|p| !excluded.contains(p) && !presence.is_away(p))
        .collect();
    let asks = futures::future::join_all(candidates.iter().map(|p| async move {
        let t = Instant::now();
        let ask = client.request(*p, ControlRequest::Status);
        match tokio::time::timeout(Duration::from_secs(3), ask).await {
            Ok(Ok(ControlResponse::Status(st)))
                if st.slivers.contains(&sliver) && st.epoch == view.epoch =>
            {
                Some((*p, t.elapsed()))
            }
            _ => None,
        }
    }))
    .await;
    choose_next(asks.into_iter().flatten().collect(), speeds, route)
}

/// Seconds per completed micro-batch through each next-sliver miner, as this miner measured
/// them (an exponential moving average over its steps).
#[derive(Default)]
pub struct Speeds(HashMap<PeerId, f64>);

impl Speeds {
    /// Records a step of `completed` micro-batches through `peer` that took `took`.
    /// A step that completed nothing counts as one micro-batch that took the whole step: a
    /// neighbour that swallows activations (a black hole) is measured slow and loses its routes
    /// to the ones that answer, instead of staying "not measured yet" and tried again.
    pub fn record(&mut self, peer: PeerId, completed: u64, took: Duration) {
        let sample = took.as_secs_f64() / completed.max(1) as f64;
        let v = self.0.entry(peer).or_insert(sample);
        *v = 0.7 * *v + 0.3 * sample;
    }
}

/// SWARM-style choice among `live` miners (with their round trips): those answering within
/// three times the best round trip (plus 20 ms) are near-equals by latency; of those, the ones
/// measured at most 1.5 times slower per micro-batch than the fastest measured, and the ones
/// not measured yet (so that new miners are tried), share the routes: route modulo their
/// count, so the miners of one sliver spread over the next sliver's instead of all picking
/// the fastest.
pub fn choose_next(
    live: Vec<(PeerId, Duration)>,
    speeds: &Speeds,
    route: u64,
) -> Option<(PeerId, Duration)> {
    let best = live.iter().map(|(_, d)| *d).min()?;
    let near: Vec<(PeerId, Duration)> =
        live.into_iter().filter(|(_, d)| *d <= best * 3 + Duration::from_millis(20)).collect();
    let fastest =
        near.iter().filter_map(|(p, _)| speeds.0.get(p)).copied().fold(f64::MAX, f64::min);
    let fast: Vec<(PeerId, Duration)> = near
        .into_iter()
        .filter(|(p, _)| speeds.0.get(p).is_none_or(|s| *s <= fastest * 1.5))
        .collect();
    fast.get(route as usize % fast.len()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_hop_is_chosen_by_latency_then_measured_throughput() {
        let p: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        let ms = Duration::from_millis;
        let mut speeds = Speeds::default();
        // By latency: the 400 ms one is out; routes spread over the other three.
        let live = vec![(p[0], ms(2)), (p[1], ms(3)), (p[2], ms(10)), (p[3], ms(400))];
        let picks: Vec<PeerId> =
            (0..3).map(|r| choose_next(live.clone(), &speeds, r).unwrap().0).collect();
        assert_eq!(picks, vec![p[0], p[1], p[2]]);
        // p1 measured three times slower than p0: routes go to p0 and the unmeasured p2.
        speeds.record(p[0], 3, ms(300));
        speeds.record(p[1], 3, ms(900));
        let picks: Vec<PeerId> =
            (0..4).map(|r| choose_next(live.clone(), &speeds, r).unwrap().0).collect();
        assert_eq!(picks, vec![p[0], p[2], p[0], p[2]]);
        // p2 measured as fast as p0 (within 1.5x): both share.
        speeds.record(p[2], 2, ms(260));
        assert_eq!(choose_next(live.clone(), &speeds, 1).unwrap().0, p[2]);
        // The average moves towards new samples: p1 got fast.
        for _ in 0..20 {
            speeds.record(p[1], 3, ms(300));
        }
        let picks: Vec<PeerId> =
            (0..3).map(|r| choose_next(live.clone(), &speeds, r).unwrap().0).collect();
        assert_eq!(picks, vec![p[0], p[1], p[2]]);
        assert_eq!(choose_next(Vec::new(), &speeds, 0), None);
        // A black hole: steps through p3 complete nothing and take the whole timeout.
        let live = vec![(p[0], ms(2)), (p[3], ms(2))];
        speeds.record(p[3], 0, ms(3000));
        let picks: Vec<PeerId> =
            (0..4).map(|r| choose_next(live.clone(), &speeds, r).unwrap().0).collect();
        assert_eq!(picks, vec![p[0]; 4], "measured slow, it gets no route");
    }
}
