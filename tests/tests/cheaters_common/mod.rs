//! The network the cheater tests run: a real node, four miners of which some cheat (built
//! with the test-only `cheat` feature), and real validators.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sliver_chain::sliver;
use sliver_e2e::{
    corpus, register_miners, register_validator, summary, workspace_binary, DevNode, MinerRun,
    Proc, ValidatorRun,
};

/// Four miners (`cheats`: which of them cheat, and how), `validators` validators; with
/// `restart`, the second validator is killed after its first commit and restarted.
pub async fn network(cheats: &[(usize, &str)], validators: usize, restart: bool) {
    let node = DevNode::start().expect("start sliver-node");
    let client = node.connect().await;
    let miner_bin = workspace_binary("sliver-miner").unwrap();
    let bin = workspace_binary("sliver-validator").unwrap();
    let data = corpus();
    let tmp = tempfile::tempdir().unwrap();
    let accounts = ["//Bob", "//Charlie", "//Dave", "//Eve"];
    let ports = register_miners(&miner_bin, &node.rpc_url, tmp.path(), &accounts);
    let names = ["//Ferdie", "//Alice"];
    let vdirs: Vec<_> = (0..validators).map(|i| tmp.path().join(format!("v{i}"))).collect();
    let vports: Vec<u16> = (0..validators)
        .map(|i| register_validator(&bin, &node.rpc_url, &vdirs[i], names[i], 200))
        .collect();

    let (info, _) = client.epoch_info().await.unwrap();
    let until = (info.epoch + 6).to_string();
    let miners = MinerRun { rpc: &node.rpc_url, data: &data, until: &until };
    let mut runs: Vec<Proc> = (0..4)
        .map(|i| {
            let dir = tmp.path().join(format!("m{i}"));
            let env: Vec<(&str, &str)> =
                cheats.iter().filter(|(m, _)| *m == i).map(|(_, k)| ("SLIVER_CHEAT", *k)).collect();
            miners.spawn_with(&miner_bin, &dir, accounts[i], ports[i], &env)
        })
        .collect();
    let vrun = ValidatorRun { rpc: &node.rpc_url, data: &data, until: &until };
    let mut vals: Vec<Proc> =
        (0..validators).map(|i| vrun.spawn(&bin, &vdirs[i], names[i], vports[i])).collect();

    let mut paid: BTreeMap<u32, BTreeMap<String, u128>> = BTreeMap::new();
    let mut blocks = client.api().stream_blocks().await.expect("finalized blocks");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut killed: Option<(Proc, u32)> = None;
    while vals.iter_mut().any(|v| v.wait(Duration::ZERO).is_err()) {
        assert!(Instant::now() < deadline, "still running after 300 s\n{}", vals[0].log_tail(30));
        // Kill the second validator (as kill -9 would) right after its first commit, and
        // restart it at once: it must still reveal that epoch's weights.
        if restart && killed.is_none() {
            let committed = vals[1].log().into_iter().find(|l| l.contains("weights committed"));
            if let Some(line) = committed {
                let epoch = field(&line, "epoch=").expect("the commit names its epoch");
                vals[1].kill();
                let again = vrun.spawn(&bin, &vdirs[1], names[1], vports[1]);
                killed = Some((std::mem::replace(&mut vals[1], again), epoch));
            }
        }
        let Ok(Some(Ok(block))) = tokio::time::timeout(Duration::from_secs(2), blocks.next()).await
        else {
            continue;
        };
        let events = block.at().await.unwrap().events().fetch().await.unwrap();
        let mut epoch_paid = BTreeMap::new();
        for e in events.find::<sliver::sliver_rewards::events::MinerPaid>() {
            let e = e.unwrap();
            *epoch_paid.entry(e.who.to_string()).or_insert(0u128) += e.amount;
        }
        for e in events.find::<sliver::sliver_rewards::events::EpochSettled>() {
            paid.insert(e.unwrap().epoch, std::mem::take(&mut epoch_paid));
        }
    }
    for p in runs.iter_mut() {
        let _ = p.wait(Duration::from_secs(60));
    }
    let logs: Vec<String> = vals.iter().map(|v| v.log_tail(40)).collect();
    println!("{}\npaid: {paid:#?}", logs.join("\n"));
    for (i, p) in runs.iter().enumerate() {
        if !p.log().iter().any(|l| l.starts_with("SUMMARY")) {
            println!("miner {i} ended without its summary:\n{}", p.log_tail(40));
        }
    }

    // The restarted validator revealed the weights its predecessor committed.
    if restart {
        let (first, epoch) = killed.expect("the second validator committed and was killed");
        assert!(!first.log().iter().any(|l| l.starts_with("SUMMARY")), "it was killed");
        let revealed = vals[1]
            .log()
            .iter()
            .any(|l| l.contains("weights revealed") && field(l, "epoch=") == Some(epoch));
        assert!(revealed, "the restart revealed epoch {epoch}\n{}", vals[1].log_tail(30));
    }

    let uid_of = |i: usize| -> u16 { summary(&runs[i])["uid"].parse().unwrap() };
    let cheaters: Vec<u16> = cheats
        .iter()
        .map(|(i, _)| uid_of(*i))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let cheater_accounts: Vec<String> = cheats
        .iter()
        .map(|(i, _)| {
            let name = accounts[*i].trim_start_matches("//").to_lowercase();
            sliver_chain::account_of(&sliver_chain::dev_keypair(&name).unwrap()).to_string()
        })
        .collect();
    for (i, v) in vals.iter_mut().enumerate() {
        assert_eq!(v.wait(Duration::ZERO).unwrap(), 0, "{}", logs[i]);
        let s = summary(v);
        // Flagged: exactly the cheaters, each in every epoch this validator audited.
        let flagged: BTreeMap<u16, u64> = s["flagged"]
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| {
                let (u, n) = x.split_once(':').unwrap();
                (u.parse().unwrap(), n.parse().unwrap())
            })
            .collect();
        let flagged_uids: Vec<u16> = flagged.keys().copied().collect();
        assert_eq!(flagged_uids, cheaters, "{s:?}\n{}", logs[i]);
        if i == 0 {
            let epochs: u64 = s["epochs"].parse().unwrap();
            assert!(epochs >= 3, "{s:?}");
            // In every audited epoch in which a cheater claimed work, it was flagged.
            for line in v.log().iter().filter(|l| l.starts_with("[validator uid")) {
                for c in &cheaters {
                    let part = line.split(" | ").find(|p| p.starts_with(&format!("uid {c} s")));
                    if let Some(p) = part.filter(|p| !p.contains(": work 0 ")) {
                        assert!(p.ends_with("FLAGGED"), "uid {c} not caught: {line}");
                    }
                }
            }
            for c in &cheaters {
                assert!(flagged[c] >= 2, "caught in several epochs: {s:?}");
            }
        }
    }
    // Cheaters are paid nothing once validators reveal; every honest miner is paid (in the
    // epochs in which it had work: one can be left without upstream for an epoch).
    let paying: Vec<_> = paid.values().filter(|m| !m.is_empty()).collect();
    assert!(paying.len() >= 2, "{paid:?}");
    let honest_paid: std::collections::BTreeSet<&String> = paying
        .iter()
        .flat_map(|m| m.keys())
        .filter(|who| !cheater_accounts.contains(who))
        .collect();
    assert_eq!(honest_paid.len(), 4 - cheater_accounts.len(), "every honest miner paid: {paid:?}");
    for m in &paying {
        let honest: Vec<u128> =
            m.iter().filter(|(who, _)| !cheater_accounts.contains(who)).map(|(_, a)| *a).collect();
        assert!(!honest.is_empty(), "{m:?}");
        let mean = honest.iter().sum::<u128>() / honest.len() as u128;
        for c in &cheater_accounts {
            let got = m.get(c).copied().unwrap_or(0);
            assert!(got * 100 < mean, "a cheater is paid under 1% of an honest miner: {m:?}");
        }
    }
}

/// The number after `name` in a log line (`epoch=7`).
pub fn field(line: &str, name: &str) -> Option<u32> {
    let rest = line.split(name).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}
