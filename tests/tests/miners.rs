//! The miner end to end: four `sliver-miner` processes (two slivers, two miners each) register
//! on a real `sliver-node --dev`, are assigned slivers by the chain's clock, train the run's
//! model over libp2p on loopback, merge with their replicas at every epoch boundary and publish
//! their weight commitments on chain. One is killed and restarted, another pauses (its window
//! ends) and rejoins. Bad configurations fail with the documented errors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sliver_chain::sliver;
use sliver_e2e::{
    corpus, free_port, miner_args as miner, register_miners, summary, workspace_binary, DevNode,
    MinerRun, Proc,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_miners_train_two_slivers_and_commit_weights_every_epoch() {
    let node = DevNode::start().expect("start sliver-node");
    let client = node.connect().await;
    let bin = workspace_binary("sliver-miner").unwrap();
    let data = corpus();
    let tmp = tempfile::tempdir().unwrap();
    let accounts = ["//Bob", "//Charlie", "//Dave", "//Eve"];

    let ports = register_miners(&bin, &node.rpc_url, tmp.path(), &accounts);

    // Everyone stops at the same boundary: three epochs after the one in which all are
    // assigned (registrations land in this epoch; assignments follow at the next boundary).
    let (info, _) = client.epoch_info().await.unwrap();
    let until = (info.epoch + 5).to_string();
    let start = |i: usize| {
        let dir = tmp.path().join(format!("m{i}"));
        MinerRun { rpc: &node.rpc_url, data: &data, until: &until }.spawn(
            &bin,
            &dir,
            accounts[i],
            ports[i],
        )
    };
    let mut runs: Vec<Proc> = (0..4).map(start).collect();
    let mut killed: Option<Proc> = None;
    let pause = tmp.path().join("m1").join("pause");
    let mut paused: Option<Instant> = None;
    let mut killed_at: Option<Instant> = None;
    let mut left_at: Option<Instant> = None;

    // Watch finalized blocks for weight commitments while the miners train.
    let mut commitments: BTreeMap<u16, BTreeSet<u32>> = BTreeMap::new();
    let mut blocks = client.api().stream_blocks().await.expect("finalized blocks");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let running =
            runs.iter_mut().map(|p| p.wait(Duration::ZERO).is_err()).filter(|r| *r).count();
        if running == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "miners still running after 300 s\n{}",
            runs.iter().map(|p| p.log_tail(15)).collect::<Vec<_>>().join("\n")
        );
        let Ok(Some(Ok(block))) = tokio::time::timeout(Duration::from_secs(5), blocks.next()).await
        else {
            continue;
        };
        let events = block.at().await.unwrap().events().fetch().await.unwrap();
        for e in events.find::<sliver::sliver_rewards::events::WeightCommitmentPublished>() {
            let e = e.unwrap();
            commitments.entry(e.uid).or_default().insert(e.epoch);
        }
        // Once every miner has committed, kill one (as kill -9 would) and restart it, and
        // pause another (its availability window ends) for 12 s.
        if killed.is_none() && commitments.len() == 4 {
            runs[3].kill();
            killed_at = Some(Instant::now());
            tokio::time::sleep(Duration::from_secs(2)).await;
            killed = Some(std::mem::replace(&mut runs[3], start(3)));
        }
        if paused.is_none() && killed_at.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
            std::fs::write(&pause, b"").unwrap();
            paused = Some(Instant::now());
        }
        // The pause lasts 12 s from the moment the miner left (it may be waiting for its new
        // sliver's weights, not training, when the file appears), or 40 s at most.
        if pause.exists() {
            let since = paused.map(|t| t.elapsed()).unwrap_or_default();
            if left_at.is_none() && runs[1].log().iter().any(|l| l.contains("left the pipeline")) {
                left_at = Some(Instant::now());
            }
            if left_at.is_some_and(|t| t.elapsed() > Duration::from_secs(12))
                || since > Duration::from_secs(40)
            {
                std::fs::remove_file(&pause).unwrap();
            }
        }
    }
    let logs = runs.iter().map(|p| p.log_tail(25)).collect::<Vec<_>>().join("\n");
    // SLIVER_E2E_LOGS=dir keeps every miner's whole log for a look after the test.
    if let Some(dir) = std::env::var_os("SLIVER_E2E_LOGS") {
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        for (i, p) in runs.iter().enumerate() {
            let _ = std::fs::write(dir.join(format!("miner-{i}.log")), p.log().join("\n"));
        }
    }
    for p in runs.iter_mut() {
        assert_eq!(p.wait(Duration::ZERO).unwrap(), 0, "a miner failed\n{logs}");
    }
    let summaries: Vec<_> = runs.iter().map(summary).collect();
    let restarted_uid: u16 = summaries[3]["uid"].parse().unwrap();
    println!("{summaries:#?}\ncommitments by uid: {commitments:?}");

    // Two miners on each sliver.
    let mut per_sliver: BTreeMap<String, usize> = BTreeMap::new();
    for s in &summaries {
        *per_sliver.entry(s["sliver"].clone()).or_default() += 1;
    }
    assert_eq!(per_sliver, BTreeMap::from([("0".into(), 2), ("1".into(), 2)]), "{logs}");
    // The loss the last sliver computes falls. Slivers are reshuffled every epoch, so the
    // miner that saw the untrained model first need not be the one that ends on the last
    // sliver.
    let loss = |s: &BTreeMap<String, String>, k: &str| s[k].parse::<f32>().ok();
    let first = summaries.iter().filter_map(|s| loss(s, "first_loss")).fold(0.0f32, f32::max);
    // (A first loss is the mean of a miner's first five steps; on the repetitive text the test
    // falls back to without ../shared, the loss already drops within them.)
    assert!(first > 4.0, "an untrained byte model starts near ln 256 = 5.55: {summaries:?}");
    // (A summary's sliver is the assignment of the epoch the run stopped at, so it does not
    // say which miners trained the last sliver; those that did report a loss.)
    let lasts: Vec<f32> = summaries.iter().filter_map(|s| loss(s, "last_loss")).collect();
    assert!(lasts.len() >= 2, "at least two miners trained the last sliver: {summaries:?}");
    for last in lasts {
        assert!(last < first - 0.5, "the loss falls from {first}: {summaries:?}");
    }
    // The restarted miner rejoined from the merged weights (or its checkpoint) and trained.
    let killed = killed.expect("a miner was killed");
    assert!(!killed.log().iter().any(|l| l.starts_with("SUMMARY")), "it was killed mid-run");
    let rejoined = runs[3].log();
    assert!(
        rejoined.iter().any(|l| l.contains("weights synced from a replica")
            || l.contains("resumed from the local checkpoint")),
        "{}",
        runs[3].log_tail(40)
    );
    let steps: u64 = summaries[3]["steps"].parse().unwrap();
    assert!(steps > 0, "the restarted miner trained: {:?}", summaries[3]);
    // The paused miner left the pipeline cleanly (its neighbours and replicas were told) and
    // came back.
    let has = |p: &Proc, what: &str| p.log().iter().any(|l| l.contains(what));
    assert!(has(&runs[1], "left the pipeline"), "{}", runs[1].log_tail(40));
    assert!(has(&runs[1], "rejoined the pipeline"), "{}", runs[1].log_tail(40));
    let told = [0, 2, 3].iter().filter(|&&i| has(&runs[i], "is leaving the pipeline")).count();
    assert!(told >= 1, "the others heard it leave\n{logs}");
    let left = runs[1].log().into_iter().find(|l| l.contains("left the pipeline")).unwrap();
    println!("{left}");
    if !left.contains("handed_to=0") {
        let took = [0, 2, 3].iter().any(|&i| has(&runs[i], "took over a leaving replica"));
        assert!(took, "a replica fetched the handed-over pseudo-gradient\n{logs}");
    }
    // Each miner keeps an audit log of at most two epochs, and status shows its hours.
    let run_id = client.training_run().await.unwrap().expect("a training run").id;
    // (A miner can be left without work for an epoch, so not every log need hold snapshots.)
    let mut audit_logs = Vec::new();
    for i in 0..4 {
        let dir = tmp.path().join(format!("m{i}/audit/run-{run_id}"));
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().metadata().unwrap().len())
            .collect();
        assert!((1..=2).contains(&files.len()), "miner {i}: {files:?}");
        audit_logs.push(files);
    }
    let with_snapshots = audit_logs.iter().filter(|f| f.iter().any(|&n| n > 1 << 20)).count();
    assert!(with_snapshots >= 2, "weights snapshots recorded: {audit_logs:?}");
    println!("audit log bytes per miner: {audit_logs:?}");
    let dir = tmp.path().join("m0");
    let mut st =
        Proc::spawn("status", &bin, &miner(&["status"], &node.rpc_url, &dir, accounts[0]), &[])
            .unwrap();
    assert_eq!(st.wait(Duration::from_secs(60)).unwrap(), 0, "{}", st.log_tail(20));
    let line = st.log().into_iter().find(|l| l.starts_with("contributed ")).unwrap_or_default();
    println!("status: {line}");
    let secs: f64 = line
        .split_once('(')
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1.0);
    let trained: f64 = summaries[0]["trained_secs"].parse().unwrap();
    assert!(
        trained > 0.0 && (secs - trained).abs() <= 1.0,
        "status: {line:?}, summary: {trained} s"
    );
    assert!(line.contains("earned") && line.contains("SLV"), "{line}");
    // Every miner merged and committed its weights in each of the epochs it trained through.
    for s in &summaries {
        let merges: u64 = s["merges"].parse().unwrap();
        assert!(merges >= 1, "{s:?}\n{logs}");
        assert_eq!(s["commitments"], s["merges"], "a commitment after each merge: {s:?}");
    }
    // Commitments appear on chain in every epoch of the run, and every miner made several. (A
    // miner can miss an epoch: the one killed, and a neighbour left without work while its
    // upstream was gone.)
    assert_eq!(commitments.len(), 4, "{commitments:?}");
    let all: BTreeSet<u32> = commitments.values().flatten().copied().collect();
    let (lo, hi) = (*all.first().unwrap(), *all.last().unwrap());
    assert!(hi >= lo + 3, "at least four epochs with commitments: {commitments:?}");
    for e in lo..=hi {
        let n = commitments.values().filter(|s| s.contains(&e)).count();
        assert!(n >= 2, "epoch {e}: {n} commitments: {commitments:?}");
    }
    for (uid, epochs) in &commitments {
        assert!(epochs.len() >= 2 || *uid == restarted_uid, "uid {uid}: {commitments:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_fail_with_clear_errors() {
    let bin = workspace_binary("sliver-miner").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let run = |args: &[&str], rpc: &str, account: &str| {
        let mut p = Proc::spawn("miner", &bin, &miner(args, rpc, &dir, account), &[]).unwrap();
        let code = p.wait(Duration::from_secs(60)).unwrap();
        (code, p.log().join("\n"))
    };
    // No node at the URL.
    let dead = format!("ws://127.0.0.1:{}", free_port());
    let (code, out) = run(&["status"], &dead, "//Bob");
    assert_eq!(code, 1);
    assert!(
        out.contains("cannot reach a Sliver node at") && out.contains("sliver-node --dev"),
        "{out}"
    );
    // A node on another machine over plain ws:// is refused before anything is sent to it.
    let (code, out) = run(&["status"], "ws://10.0.0.1:9944", "//Bob");
    assert_eq!(code, 1);
    assert!(out.contains("refusing plain ws://") && out.contains("--insecure-rpc"), "{out}");
    // No account anywhere.
    let (code, out) = run(&["status"], &dead, "");
    assert_eq!(code, 1);
    assert!(out.contains("no account") && out.contains("keys --generate"), "{out}");

    let node = DevNode::start().expect("start sliver-node");
    // Not registered.
    let (code, out) = run(&["run", "--no-mdns", "--metrics-port", "0"], &node.rpc_url, "//Ferdie");
    assert_eq!(code, 1);
    assert!(out.contains("is not registered") && out.contains("sliver-miner register"), "{out}");
    // Unfunded account.
    let (code, out) = run(&["register"], &node.rpc_url, "//NobodyHasFunds");
    assert_eq!(code, 1);
    assert!(out.contains("has no funds"), "{out}");
    // Registered, but the dataset is missing.
    let (code, out) =
        run(&["register", "--address", "/ip4/127.0.0.1/tcp/1"], &node.rpc_url, "//Ferdie");
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["run", "--no-mdns", "--metrics-port", "0"], &node.rpc_url, "//Ferdie");
    assert_eq!(code, 1);
    assert!(out.contains("dataset missing") && out.contains("--data"), "{out}");
    let (code, out) = run(
        &["run", "--no-mdns", "--metrics-port", "0", "--data", "/nonexistent/text"],
        &node.rpc_url,
        "//Ferdie",
    );
    assert_eq!(code, 1);
    assert!(out.contains("dataset missing: /nonexistent/text does not exist"), "{out}");
    // A typo in the configuration file.
    let cfg = tmp.path().join("miner.toml");
    std::fs::write(&cfg, "rpc_ur = \"x\"\n").unwrap();
    let (code, out) =
        run(&["--config", cfg.to_str().unwrap(), "status"], &node.rpc_url, "//Ferdie");
    assert_eq!(code, 1);
    assert!(out.contains("unknown field `rpc_ur`"), "{out}");
}
