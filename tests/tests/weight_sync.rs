//! A sliver's merged weights are taken only by the hash most of its replicas committed on
//! chain, from whichever holder serves those bytes. A real `sliver-node --dev`; five miners
//! driven by this test (registered with their libp2p keys, real P2P nodes on loopback); the
//! syncing side is the miner's own `sync::committed_state` with the operator's chain task.
//!
//! Of the three miners the chain assigns to one sliver, two commit the honest state's hash
//! and one commits a state of its own (every weight 1e30) and serves it to anyone. The honest
//! committer asked first serves nothing; the second serves the honest bytes. The joiner must
//! end with the honest state, fetched from the second.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use sliver_chain::{Backend, HardwareProfile, Role};
use sliver_e2e::DevNode;
use sliver_engine::merge::{export_flat, Flat};
use sliver_engine::{SliverSpec, SliverTrainer};
use sliver_miner::merge::State;
use sliver_operator::chain::ChainHandle;
use sliver_p2p::{start, Client, NetworkConfig, NodeStatus};
use tokio::sync::watch;

struct Miner {
    uid: u16,
    account: sliver_chain::Keypair,
    client: Client,
    addr: libp2p::Multiaddr,
    _status: watch::Sender<NodeStatus>,
    _inbound: sliver_p2p::Inbound,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_are_taken_only_by_the_hash_most_replicas_committed() {
    let node = DevNode::start().expect("start sliver-node");
    let chain = node.connect().await;
    let names = ["bob", "charlie", "dave", "eve", "ferdie"];
    let mut miners = Vec::new();
    for name in names {
        let account = sliver_chain::dev_keypair(name).unwrap();
        let key = Keypair::generate_ed25519();
        let (status, rx) = watch::channel(NodeStatus::default());
        let (client, inbound) = start(key.clone(), NetworkConfig::default(), rx).unwrap();
        let addr = client.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
        let peer_key = sliver_p2p::keys::ed25519_public(&key).unwrap();
        let sign = |m: &[u8]| sliver_p2p::keys::sign_ownership(&key, m).unwrap();
        let hardware =
            HardwareProfile { backend: Backend::Cpu, memory_mib: 8192, throughput: 5000 };
        let uid = chain
            .register_signed(&account, Role::Miner, peer_key, sign, &[addr.to_string()], hardware)
            .await
            .expect("register");
        miners.push(Miner { uid, account, client, addr, _status: status, _inbound: inbound });
    }

    // The epoch in which all five are assigned, and a sliver with three of them.
    let t = Instant::now();
    let (merged_epoch, slivers) = loop {
        let (info, assignments) = chain.epoch_and_assignments().await.unwrap();
        let mut by: BTreeMap<u16, Vec<u16>> = BTreeMap::new();
        for (uid, s) in assignments {
            if miners.iter().any(|m| m.uid == uid) {
                by.entry(s).or_default().push(uid);
            }
        }
        if by.values().map(Vec::len).sum::<usize>() == miners.len() {
            break (info.epoch as u64, by);
        }
        assert!(t.elapsed() < Duration::from_secs(90), "never assigned: {by:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (&sliver, uids) = slivers.iter().find(|(_, u)| u.len() >= 3).expect("a sliver of three");
    let mut uids = uids.clone();
    uids.sort_unstable();
    let replica = |uid: u16| miners.iter().find(|m| m.uid == uid).unwrap();
    let (silent, serving, liar) = (replica(uids[0]), replica(uids[1]), replica(uids[2]));
    println!("epoch {merged_epoch}: sliver {sliver} has uids {uids:?}; uid {} lies, uid {} serves nothing", liar.uid, silent.uid);

    // The states: the honest one (the run's initial weights, no momentum) and the liar's.
    let run = chain.training_run().await.unwrap().expect("a training run");
    let model = sliver_miner::run::model_of(&run).unwrap();
    let spec =
        SliverSpec::split(model.n_layer, run.num_slivers as usize).unwrap().remove(sliver as usize);
    let device = sliver_engine::default_device();
    let mut trainer = SliverTrainer::new(&model, spec, None, Default::default(), &device).unwrap();
    let like = export_flat(&mut trainer.sliver);
    let zeros: Flat = like.iter().map(|(k, v)| (k.clone(), vec![0.0; v.len()])).collect();
    let honest = State { weights: like.clone(), velocity: zeros.clone() };
    let lie = State {
        weights: like.iter().map(|(k, v)| (k.clone(), vec![1e30; v.len()])).collect(),
        velocity: zeros,
    };
    let (good, bad) = (honest.encode(), lie.encode());
    let (good_hash, bad_hash) = (*blake3::hash(&good).as_bytes(), *blake3::hash(&bad).as_bytes());
    serving.client.publish_blob(good.clone()).unwrap();
    liar.client.publish_blob(bad.clone()).unwrap();

    // In the next epoch the replicas commit: two the honest hash, the liar its own.
    let t = Instant::now();
    while chain.epoch_info().await.unwrap().0.epoch as u64 <= merged_epoch {
        assert!(t.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (m, hash, size) in [
        (liar, bad_hash, bad.len()),
        (silent, good_hash, good.len()),
        (serving, good_hash, good.len()),
    ] {
        chain.publish_weight_commitment(&m.account, hash, size as u64, 1).await.expect("commit");
    }

    // The joiner: the operator's chain task and a P2P node of its own.
    let handle = ChainHandle::spawn(&node.rpc_url);
    let t = Instant::now();
    let view = loop {
        let v = handle.view();
        if v.epoch == merged_epoch + 1
            && v.previous.as_ref().is_some_and(|(e, _)| *e == merged_epoch)
        {
            break v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the chain task knows the previous assignment: {:?}",
            v.previous
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_s, rx) = watch::channel(NodeStatus::default());
    let (joiner, _jin) = start(Keypair::generate_ed25519(), NetworkConfig::default(), rx).unwrap();
    for m in &miners {
        joiner.dial(m.client.peer_id(), m.addr.clone()).await.unwrap();
    }
    let began = Instant::now();
    let (state, from) = sliver_miner::sync::committed_state(
        &handle,
        &joiner,
        &view,
        sliver,
        merged_epoch,
        &like,
        Duration::from_secs(20),
    )
    .await
    .expect("a verified state");
    println!(
        "synced in {:?} from uid {}",
        began.elapsed(),
        miners.iter().find(|m| m.client.peer_id() == from).unwrap().uid
    );
    assert_eq!(state, honest, "the honest state, not the liar's");
    assert_eq!(from, serving.client.peer_id(), "from the committer that served it");
    // Without commitments for the epoch there is nothing to take.
    let none = sliver_miner::sync::committed_state(
        &handle,
        &joiner,
        &view,
        sliver,
        merged_epoch + 5,
        &like,
        Duration::from_secs(1),
    )
    .await;
    assert!(none.is_err());
}
