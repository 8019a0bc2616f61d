//! The validator end to end: a real `sliver-node --dev`, four honest `sliver-miner` processes
//! (two slivers, two miners each) and one `sliver-validator` over loopback. The validator reads
//! every miner's audit index, replays a sample of each one's micro-batches bit for bit, and
//! commits and reveals weights; the chain pays the miners by them. No honest miner is flagged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sliver_chain::sliver;
use sliver_e2e::{
    corpus, register_miners, register_validator, summary, workspace_binary, DevNode, MinerRun,
    Proc, ValidatorRun,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_audits_honest_miners_and_they_are_paid() {
    let node = DevNode::start().expect("start sliver-node");
    let client = node.connect().await;
    let miner_bin = workspace_binary("sliver-miner").unwrap();
    let bin = workspace_binary("sliver-validator").unwrap();
    let data = corpus();
    let tmp = tempfile::tempdir().unwrap();
    let accounts = ["//Bob", "//Charlie", "//Dave", "//Eve"];
    let ports = register_miners(&miner_bin, &node.rpc_url, tmp.path(), &accounts);

    // The validator registers with its stake.
    let vdir = tmp.path().join("v");
    let vport = register_validator(&bin, &node.rpc_url, &vdir, "//Ferdie", 200);

    let (info, _) = client.epoch_info().await.unwrap();
    // SLIVER_E2E_EPOCHS=20 runs longer (the false-positive count in docs/validator.md).
    let epochs: u32 =
        std::env::var("SLIVER_E2E_EPOCHS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let until = (info.epoch + epochs).to_string();
    // The validator serves relay circuits (`--relay`); one miner listens through it as a
    // miner behind NAT would (and directly too, so training does not depend on it).
    let mut validator = ValidatorRun { rpc: &node.rpc_url, data: &data, until: &until }.spawn_with(
        &bin,
        &vdir,
        "//Ferdie",
        vport,
        &[("SLIVER_SERVE_RELAY", "true")],
    );
    let started = Instant::now();
    let vpeer = loop {
        let line =
            validator.log().into_iter().find(|l| l.contains(" listening") && l.contains("peer="));
        if let Some(l) = line {
            break l.split("peer=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{}", validator.log_tail(20));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let relay = format!("/ip4/127.0.0.1/tcp/{vport}/p2p/{vpeer}");
    let mut runs: Vec<Proc> = (0..4)
        .map(|i| {
            let dir = tmp.path().join(format!("m{i}"));
            let env: Vec<(&str, &str)> =
                if i == 3 { vec![("SLIVER_RELAY", relay.as_str())] } else { Vec::new() };
            MinerRun { rpc: &node.rpc_url, data: &data, until: &until }.spawn_with(
                &miner_bin,
                &dir,
                accounts[i],
                ports[i],
                &env,
            )
        })
        .collect();

    // Payouts by epoch while everything runs.
    let mut paid: BTreeMap<u32, BTreeMap<String, u128>> = BTreeMap::new();
    let mut validator_paid = 0u128;
    let mut blocks = client.api().stream_blocks().await.expect("finalized blocks");
    let deadline = Instant::now() + Duration::from_secs(60 + 40 * epochs as u64);
    let mut settled_epochs = Vec::new();
    while validator.wait(Duration::ZERO).is_err() {
        assert!(
            Instant::now() < deadline,
            "still running after {} s\n{}\n{}",
            60 + 40 * epochs,
            validator.log_tail(30),
            runs.iter().map(|p| p.log_tail(10)).collect::<Vec<_>>().join("\n")
        );
        let Ok(Some(Ok(block))) = tokio::time::timeout(Duration::from_secs(5), blocks.next()).await
        else {
            continue;
        };
        let events = block.at().await.unwrap().events().fetch().await.unwrap();
        let mut epoch_paid = BTreeMap::new();
        for e in events.find::<sliver::sliver_rewards::events::MinerPaid>() {
            let e = e.unwrap();
            *epoch_paid.entry(e.who.to_string()).or_insert(0u128) += e.amount;
        }
        for e in events.find::<sliver::sliver_rewards::events::ValidatorPaid>() {
            validator_paid += e.unwrap().amount;
        }
        for e in events.find::<sliver::sliver_rewards::events::EpochSettled>() {
            let e = e.unwrap();
            settled_epochs.push((e.epoch, e.paid_miners));
            paid.insert(e.epoch, std::mem::take(&mut epoch_paid));
        }
    }
    for p in runs.iter_mut() {
        let _ = p.wait(Duration::from_secs(60));
    }
    let vlog = validator.log_tail(60);
    println!("{vlog}");
    println!("settled: {settled_epochs:?}\npaid: {paid:#?}");
    assert_eq!(validator.wait(Duration::ZERO).unwrap(), 0, "{vlog}");
    let s = summary(&validator);
    let n = |k: &str| s[k].parse::<u64>().unwrap();
    assert!(n("epochs") >= 3, "audited at least three epochs: {s:?}");
    assert!(n("replayed") >= 12, "several micro-batches per miner replayed: {s:?}");
    assert_eq!(n("passed"), n("replayed"), "every replay of honest work matched: {s:?}\n{vlog}");
    assert_eq!((n("failed"), n("unanswered")), (0, 0), "{s:?}\n{vlog}");
    assert_eq!(s["flagged"], "", "no honest miner flagged: {s:?}");
    assert!(n("reveals") >= 2, "{s:?}");
    // The validator granted the NATed miner a relay reservation.
    assert!(
        runs[3].log().iter().any(|l| l.contains("listening through the relay")),
        "{}",
        runs[3].log_tail(30)
    );
    // Each epoch it evaluated the merged model (the committed states) on held-out text.
    let held_out: Vec<f32> = validator
        .log()
        .iter()
        .filter(|l| l.starts_with("[validator uid"))
        .filter_map(|l| l.rsplit("held-out loss of the merged model it started from ").next())
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    println!("held-out loss by epoch: {held_out:?}");
    // And it found each miner's first weights of an epoch among those the chain allows.
    let tied: u64 = validator
        .log()
        .iter()
        .filter_map(|l| l.split("first weights tied to the chain ").nth(1))
        .filter_map(|v| v.split('/').next()?.parse::<u64>().ok())
        .sum();
    assert!(tied >= 4, "first weights checked against the commitments: {tied}\n{vlog}");
    assert!(held_out.len() >= 2, "evaluated in several epochs: {held_out:?}\n{vlog}");
    assert!(held_out.iter().all(|l| l.is_finite() && *l > 0.0), "{held_out:?}");
    // An untrained byte-level model scores ln 256 = 5.55; the merged one has learned.
    let best = held_out.iter().copied().fold(f32::INFINITY, f32::min);
    assert!(best < 4.5, "the merged model learned: held-out loss {held_out:?}");
    // The chain paid miners by the validator's weights, and the validator its dividend.
    let paying: Vec<_> = paid.iter().filter(|(_, m)| !m.is_empty()).collect();
    assert!(paying.len() >= 2, "at least two epochs paid miners: {paid:?}");
    let every_miner_paid = paying.iter().any(|(_, m)| m.len() >= 3);
    assert!(every_miner_paid, "most miners paid in one epoch: {paid:?}");
    assert!(validator_paid > 0, "the validator earned its dividend");
}
