//! A hostile miner among honest ones: a real `sliver-node --dev`, three `sliver-miner`
//! processes, and a fourth miner registered on chain but driven by this test. Every epoch it
//! publishes a pseudo-gradient of 1e30 for its sliver and a garbage state, commits the garbage
//! state's hash on chain, claims to serve every sliver and swallows the activations sent to
//! it, sends frames naming a sliver it is not assigned to until it is banned, asks for audits
//! without being a validator, and announces that it leaves a sliver it is not on, for an epoch
//! far in the future. One honest miner is stopped with SIGTERM along the way.
//!
//! The honest miners train on: they exit cleanly, the last sliver's loss falls, their merged
//! weights stay finite, every hostile frame is refused and the hostile peer is banned, its
//! audit requests and its notice are refused or ignored, and the miner given SIGTERM leaves
//! the pipeline cleanly and prints its summary.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use sliver_chain::{Backend, HardwareProfile, Role};
use sliver_e2e::{corpus, register_miners, summary, workspace_binary, DevNode, MinerRun, Proc};
use sliver_engine::merge::{export_flat, Flat};
use sliver_engine::{SliverSpec, SliverTrainer};
use sliver_miner::merge::{encode_flat, merge_name, publish_named, weights_name, State};
use sliver_p2p::{
    start, AuditRequest, Direction, FrameHeader, NetworkConfig, NodeStatus, P2pError, PeerId,
    PresenceNotice,
};
use sliver_wire::WireCodec;
use tokio::sync::watch;

/// What the hostile miner saw happen to its attacks.
#[derive(Debug, Default)]
struct Outcome {
    refused: Vec<String>,
    banned: usize,
    audit_errors: Vec<String>,
    commitments: usize,
    poisoned_epochs: Vec<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_miner_cannot_stop_the_honest_ones() {
    let node = DevNode::start().expect("start sliver-node");
    let chain = node.connect().await;
    let bin = workspace_binary("sliver-miner").unwrap();
    let data = corpus();
    let tmp = tempfile::tempdir().unwrap();
    let accounts = ["//Bob", "//Charlie", "//Dave"];
    let ports = register_miners(&bin, &node.rpc_url, tmp.path(), &accounts);
    // The hostile miner: registered with its own libp2p key, driven from here.
    let eve = sliver_chain::dev_keypair("eve").unwrap();
    let key = Keypair::generate_ed25519();
    let (status_tx, status_rx) = watch::channel(NodeStatus::default());
    let (hostile, mut hostile_in) =
        start(key.clone(), NetworkConfig::default(), status_rx).unwrap();
    let addr = hostile.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    let sign = |m: &[u8]| sliver_p2p::keys::sign_ownership(&key, m).unwrap();
    let hw = HardwareProfile { backend: Backend::Cpu, memory_mib: 8192, throughput: 5000 };
    let peer_key = sliver_p2p::keys::ed25519_public(&key).unwrap();
    let hostile_uid = chain
        .register_signed(&eve, Role::Miner, peer_key, sign, &[addr.to_string()], hw)
        .await
        .expect("register the hostile miner");

    let run = chain.training_run().await.unwrap().expect("a training run");
    let model = sliver_miner::run::model_of(&run).unwrap();
    let device = sliver_engine::default_device();
    let likes: Vec<Flat> = SliverSpec::split(model.n_layer, run.num_slivers as usize)
        .unwrap()
        .into_iter()
        .map(|spec| {
            let mut t =
                SliverTrainer::new(&model, spec, None, Default::default(), &device).unwrap();
            export_flat(&mut t.sliver)
        })
        .collect();

    let (info, _) = chain.epoch_info().await.unwrap();
    let until = (info.epoch + 6).to_string();
    let start_miner = |i: usize| {
        let dir = tmp.path().join(format!("m{i}"));
        MinerRun { rpc: &node.rpc_url, data: &data, until: &until }.spawn(
            &bin,
            &dir,
            accounts[i],
            ports[i],
        )
    };
    let mut runs: Vec<Proc> = (0..3).map(start_miner).collect();

    // The hostile miner's loop, until the honest miners are done.
    let (stop_tx, mut stop) = watch::channel(false);
    let slivers = likes.len() as u16;
    let attack = {
        let chain = chain.clone();
        let hostile = hostile.clone();
        let run_id = run.id as u64;
        tokio::spawn(async move {
            let mut out = Outcome::default();
            let mut last_epoch = None;
            let mut step = 1u64;
            loop {
                tokio::select! {
                    _ = stop.changed() => return out,
                    // Swallow whatever is routed here: a black hole for activations.
                    _ = hostile_in.frames.recv() => continue,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                let Ok((info, assignments)) = chain.epoch_and_assignments().await else { continue };
                let epoch = info.epoch as u64;
                if last_epoch == Some(epoch) {
                    continue;
                }
                let Some(mine) =
                    assignments.iter().find(|(u, _)| *u == hostile_uid).map(|(_, s)| *s)
                else {
                    continue;
                };
                last_epoch = Some(epoch);
                // Poison for this epoch's merge, garbage for whoever syncs, its hash on chain.
                let like = &likes[mine as usize];
                let huge: Flat =
                    like.iter().map(|(k, v)| (k.clone(), vec![1e30; v.len()])).collect();
                let h = hostile.publish_blob(encode_flat(&huge, WireCodec::Bf16)).unwrap();
                publish_named(&status_tx, &hostile, merge_name(mine, epoch), h, epoch);
                let garbage = State { weights: huge.clone(), velocity: huge.clone() }.encode();
                let g = hostile.publish_blob(garbage.clone()).unwrap();
                publish_named(
                    &status_tx,
                    &hostile,
                    weights_name(mine, epoch.saturating_sub(1)),
                    g,
                    epoch,
                );
                status_tx.send_modify(|s| {
                    s.run = run_id;
                    s.epoch = epoch;
                    s.slivers = (0..likes.len() as u16).collect();
                });
                if chain
                    .publish_weight_commitment(&eve, g, garbage.len() as u64, step)
                    .await
                    .is_ok()
                {
                    out.commitments += 1;
                    step += 1;
                }
                out.poisoned_epochs.push(epoch);
                // Frames for a sliver it is not on, to every honest miner, until banned (once
                // the honest miners have moved into the epoch: frames of an epoch a miner is
                // not in yet are refused without a strike).
                tokio::time::sleep(Duration::from_secs(6)).await;
                let Ok(participants) = chain.participants().await else { continue };
                for p in participants.iter().filter(|p| p.uid != hostile_uid) {
                    let Some(peer) = sliver_p2p::keys::peer_id_of(&p.peer_key) else { continue };
                    for a in p.addresses.iter().filter_map(|a| a.parse().ok()) {
                        let _ = hostile.dial(peer, a).await;
                    }
                    // Audits and notices first: after the ban nothing gets through.
                    let req =
                        AuditRequest { run: run_id, epoch, route: 0, step: 0, micro_batch: 0 };
                    if let Err(e) = hostile.audit(peer, req).await {
                        out.audit_errors.push(e.to_string());
                    }
                    let notice = PresenceNotice {
                        run: run_id,
                        epoch: epoch + 1000,
                        sliver: (mine + 1) % likes.len() as u16,
                        available: false,
                        merge: Some(h),
                    };
                    let _ = hostile.announce(peer, notice).await;
                    for mb in 0..6u64 {
                        let payload = sliver_wire::encode(
                            WireCodec::Bf16,
                            &[4, 64, 128],
                            &vec![0.5; 4 * 64 * 128],
                        );
                        let h = FrameHeader::for_payload(
                            run_id,
                            epoch,
                            0,
                            mb,
                            0,
                            9,
                            Direction::Activation,
                            &payload,
                        )
                        .unwrap();
                        match hostile.send_frame(peer, &h, &payload).await {
                            Ok(_) => panic!("a frame for sliver 9 was accepted"),
                            Err(P2pError::Refused { reason, .. }) => out.refused.push(reason),
                            Err(_) if mb == 5 => out.banned += 1,
                            Err(_) => {}
                        }
                    }
                }
            }
        })
    };

    // SIGTERM one honest miner after three epochs.
    let deadline = Instant::now() + Duration::from_secs(360);
    let mut terminated = false;
    loop {
        let running =
            runs.iter_mut().map(|p| p.wait(Duration::ZERO).is_err()).filter(|r| *r).count();
        if running == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "miners still running\n{}",
            runs.iter().map(|p| p.log_tail(20)).collect::<Vec<_>>().join("\n")
        );
        let (now, _) = chain.epoch_info().await.unwrap();
        if !terminated && now.epoch >= info.epoch + 3 {
            runs[0].terminate().unwrap();
            terminated = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop_tx.send_replace(true);
    let out = attack.await.unwrap();
    let logs = runs.iter().map(|p| p.log_tail(30)).collect::<Vec<_>>().join("\n");
    println!("hostile outcome: {} refusals, banned by {} miners, audit errors {:?}, {} commitments, poisoned epochs {:?}", out.refused.len(), out.banned, out.audit_errors.iter().take(1).collect::<Vec<_>>(), out.commitments, out.poisoned_epochs);
    for p in runs.iter_mut() {
        assert_eq!(p.wait(Duration::ZERO).unwrap(), 0, "an honest miner failed\n{logs}");
    }
    let summaries: Vec<BTreeMap<String, String>> = runs.iter().map(summary).collect();
    println!("{summaries:#?}");
    assert!(summaries.iter().all(|s| !s.is_empty()), "every miner printed its summary\n{logs}");

    // SIGTERM left the pipeline cleanly.
    let has = |p: &Proc, what: &str| p.log().iter().any(|l| l.contains(what));
    assert!(has(&runs[0], "stopping on request"), "{}", runs[0].log_tail(30));

    // The honest miners trained: the last sliver's loss falls.
    let loss = |s: &BTreeMap<String, String>, k: &str| s.get(k).and_then(|v| v.parse::<f32>().ok());
    let first = summaries.iter().filter_map(|s| loss(s, "first_loss")).fold(0.0f32, f32::max);
    let lasts: Vec<f32> = summaries.iter().filter_map(|s| loss(s, "last_loss")).collect();
    assert!(first > 4.5 && !lasts.is_empty(), "{summaries:?}");
    // With two replicas per sliver and the liar one of them, a miner moved into the liar's
    // sliver finds no majority to sync from and starts from its own weights: not every last
    // sliver's loss falls as far, but the best does, and none is worse than untrained.
    let best = lasts.iter().copied().fold(f32::MAX, f32::min);
    assert!(
        best < first - 0.5,
        "the loss falls from {first} despite the hostile miner: {summaries:?}"
    );
    assert!(lasts.iter().all(|l| l.is_finite() && *l < first + 0.1), "{summaries:?}");
    // Their merged weights stayed finite (the local checkpoints are the merged weights).
    for i in 0..3 {
        for s in 0..slivers {
            let path = sliver_miner::training::checkpoint_path(
                &tmp.path().join(format!("m{i}")),
                run.id,
                s,
            );
            if let Ok((_, flat)) = sliver_engine::checkpoint::read(&path) {
                assert!(flat.values().flatten().all(|v| v.is_finite()), "{}", path.display());
                let largest = flat.values().flatten().fold(0f32, |m, v| m.max(v.abs()));
                assert!(largest < 100.0, "miner {i} sliver {s}: a weight of {largest}");
            }
        }
    }
    assert!(!runs.iter().any(|p| has(p, "would not be finite")), "no merge was discarded\n{logs}");
    // Its attacks were refused: frames, bans, audits, the notice.
    assert!(out.poisoned_epochs.len() >= 3, "{out:?}");
    assert!(
        out.refused.iter().any(|r| r.contains("an activation of sliver 9")),
        "refused by the gates: {:?}",
        out.refused
    );
    assert!(out.banned >= 1, "five strikes ban the hostile miner: {out:?}");
    assert!(out.audit_errors.iter().any(|e| e.contains("validators only")), "{out:?}");
    let hostile_id: PeerId = hostile.peer_id();
    for p in &runs {
        assert!(
            !p.log()
                .iter()
                .any(|l| l.contains("is leaving the pipeline")
                    && l.contains(&hostile_id.to_string())),
            "a notice for another sliver and a far epoch was ignored"
        );
    }
}
