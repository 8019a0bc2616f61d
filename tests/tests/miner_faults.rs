//! The miner under a chain that goes away, and its earnings: two `sliver-miner` processes
//! (one per sliver) train on a real `sliver-node --dev`; a validator (this test, through subxt)
//! rates them and the epoch's settlement pays them; then the node is killed (SIGKILL) and
//! started again on the same database and port. The miners reconnect, go on merging and
//! committing, and `sliver-miner status` reports what the chain paid them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sliver_chain::{
    account_of, commit_hash, dev_keypair, sliver, Backend, ChainClient, HardwareProfile, Phase,
    Role,
};
use sliver_e2e::{
    corpus, free_port, miner_args, summary, wait_for_phase, workspace_binary, DevNode, MinerRun,
    Proc,
};

const UNIT: u128 = 1_000_000_000_000;
const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miners_survive_a_node_restart_and_see_their_earnings() {
    let base = tempfile::tempdir().unwrap();
    let rpc_port = free_port();
    let mut node = DevNode::start_persistent(base.path(), rpc_port).expect("start sliver-node");
    let client = node.connect().await;
    let bin = workspace_binary("sliver-miner").unwrap();
    let data = corpus();
    let tmp = tempfile::tempdir().unwrap();
    let accounts = ["//Bob", "//Charlie"];
    let dirs: Vec<_> = (0..2).map(|i| tmp.path().join(format!("m{i}"))).collect();
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    for i in 0..2 {
        let addr = format!("/ip4/127.0.0.1/tcp/{}", ports[i]);
        let args =
            miner_args(&["register", "--address", &addr], &node.rpc_url, &dirs[i], accounts[i]);
        let mut p = Proc::spawn("register", &bin, &args, &[]).unwrap();
        assert_eq!(p.wait(Duration::from_secs(60)).unwrap(), 0, "{}", p.log_tail(20));
    }
    let uids: Vec<u16> = {
        let mut v = Vec::new();
        for name in ["bob", "charlie"] {
            let who = account_of(&dev_keypair(name).unwrap());
            v.push(client.uid_of(&who).await.unwrap().expect("registered"));
        }
        v
    };
    // The validator.
    let ferdie = dev_keypair("ferdie").unwrap();
    let hardware = HardwareProfile { backend: Backend::Cpu, memory_mib: 8192, throughput: 1 };
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let addrs = vec!["/ip4/127.0.0.1/tcp/1".to_string()];
    client.register(&ferdie, Role::Validator, &key, &addrs, hardware).await.expect("validator");
    client.bond(&ferdie, 200 * UNIT).await.expect("bond");

    let (info, _) = client.epoch_info().await.unwrap();
    let until = (info.epoch + 6).to_string();
    let miners = MinerRun { rpc: &node.rpc_url, data: &data, until: &until };
    let mut runs: Vec<Proc> =
        (0..2).map(|i| miners.spawn(&bin, &dirs[i], accounts[i], ports[i])).collect();

    // Rate both miners equally in the first epoch in which they are assigned.
    let epoch = wait_for_phase(&client, info.epoch + 1, Phase::Commit, MINUTE).await;
    let weights = vec![u16::MAX, u16::MAX];
    let salt = [3u8; 32];
    let hash = commit_hash(&account_of(&ferdie), epoch, &uids, &weights, &salt);
    client.commit_weights(&ferdie, hash).await.expect("commit");
    wait_for_phase(&client, epoch, Phase::Reveal, MINUTE).await;
    client.reveal_weights(&ferdie, uids.clone(), weights, salt).await.expect("reveal");
    let mut paid: BTreeMap<u16, u128> = BTreeMap::new();
    let mut blocks = client.api().stream_blocks().await.expect("finalized blocks");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut settled = false;
    while !settled {
        assert!(Instant::now() < deadline, "epoch {epoch} not settled\n{}", node.log_tail(20));
        let block = blocks.next().await.expect("stream open").expect("block");
        let events = block.at().await.unwrap().events().fetch().await.unwrap();
        for e in events.find::<sliver::sliver_rewards::events::MinerPaid>() {
            let e = e.unwrap();
            *paid.entry(e.uid).or_default() += e.amount;
        }
        settled = events
            .find::<sliver::sliver_rewards::events::EpochSettled>()
            .any(|e| e.is_ok_and(|e| e.epoch == epoch));
    }
    drop(blocks);
    assert_eq!(paid.len(), 2, "both miners paid: {paid:?}");

    // Kill the node once both miners have committed, and start it again 4 s later.
    let committed = |c: &ChainClient| {
        let c = c.clone();
        let uids = uids.clone();
        async move {
            let mut epochs = Vec::new();
            for u in uids {
                epochs.push(c.weight_commitment(u).await.unwrap().map(|c| c.epoch));
            }
            epochs
        }
    };
    let t = Instant::now();
    while committed(&client).await.iter().any(Option::is_none) {
        assert!(t.elapsed() < Duration::from_secs(60), "no commitments");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let down_in = client.epoch_info().await.unwrap().0.epoch;
    node.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let node = DevNode::start_persistent(base.path(), rpc_port).expect("restart sliver-node");
    let client = node.connect().await;

    let deadline = Instant::now() + Duration::from_secs(300);
    for p in runs.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        let code = p.wait(left).unwrap_or_else(|e| panic!("{e}\n{}", p.log_tail(40)));
        assert_eq!(code, 0, "{}", p.log_tail(40));
    }
    let logs = runs.iter().map(|p| p.log_tail(30)).collect::<Vec<_>>().join("\n");
    let summaries: Vec<_> = runs.iter().map(summary).collect();
    println!("{summaries:#?}\npaid: {paid:?}");
    // Both reconnected and went on committing after the restart.
    for (i, p) in runs.iter().enumerate() {
        let connects = p.log().iter().filter(|l| l.contains("connected to the chain")).count();
        assert!(connects >= 2, "miner {i} reconnected\n{logs}");
        let merges: u64 = summaries[i]["merges"].parse().unwrap();
        let commitments: u64 = summaries[i]["commitments"].parse().unwrap();
        assert!(merges >= 3, "{:?}", summaries[i]);
        assert!(commitments + 1 >= merges, "at most one commitment lost: {:?}", summaries[i]);
    }
    for (u, e) in uids.iter().zip(committed(&client).await) {
        let e = e.expect("a commitment");
        assert!(e > down_in, "uid {u} committed after the restart (epoch {e} > {down_in})");
    }
    // `status` shows what the chain paid, as the miner's ledger saw it.
    for i in 0..2 {
        let args = miner_args(&["status"], &node.rpc_url, &dirs[i], accounts[i]);
        let mut st = Proc::spawn("status", &bin, &args, &[]).unwrap();
        assert_eq!(st.wait(Duration::from_secs(60)).unwrap(), 0, "{}", st.log_tail(20));
        let line = st.log().into_iter().find(|l| l.starts_with("contributed ")).unwrap();
        println!("{}: {line}", accounts[i]);
        let amount = paid[&uids[i]];
        let want = format!("earned {}.{:012} SLV in 1 payouts", amount / UNIT, amount % UNIT);
        assert!(line.contains(&want), "{line:?} should say {want:?}");
    }
}
