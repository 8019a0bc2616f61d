//! The Sliver pallets on a real `sliver-node --dev`: a miner and a validator register through
//! subxt (with libp2p ed25519 key proofs), the validator commits and reveals weights in one
//! epoch, and the settlement at the epoch boundary pays both.

use sliver_chain::{
    account_of, commit_hash, dev_keypair, sliver, Backend, ChainClient, HardwareProfile, Phase,
    Role,
};
use sliver_e2e::{wait_for_phase, DevNode};
use std::time::{Duration, Instant};

const UNIT: u128 = 1_000_000_000_000;

fn hardware() -> HardwareProfile {
    HardwareProfile { backend: Backend::Cpu, memory_mib: 8192, throughput: 20_000 }
}

fn peer_key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miner_and_validator_register_commit_reveal_and_are_paid() {
    let node = DevNode::start().expect("start sliver-node");
    let client = ChainClient::connect_with_retry(&node.rpc_url, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", node.log_tail(30)));
    let (bob, charlie) = (dev_keypair("bob").unwrap(), dev_keypair("charlie").unwrap());
    let addrs = vec!["/ip4/127.0.0.1/tcp/40001".to_string()];

    let miner_uid = client
        .register(&bob, Role::Miner, &peer_key(1), &addrs, hardware())
        .await
        .unwrap_or_else(|e| panic!("register miner: {e}\n{}", node.log_tail(20)));
    let validator_uid = client
        .register(&charlie, Role::Validator, &peer_key(2), &addrs, hardware())
        .await
        .expect("register validator");
    assert_ne!(miner_uid, validator_uid);
    client.bond(&charlie, 200 * UNIT).await.expect("bond");

    // The miner is assigned at the next boundary; the validator rates it in that epoch.
    let registered_in = client.epoch_info().await.unwrap().0.epoch;
    let epoch =
        wait_for_phase(&client, registered_in + 1, Phase::Commit, Duration::from_secs(60)).await;
    let (uids, weights, salt) = (vec![miner_uid], vec![u16::MAX], [7u8; 32]);
    let hash = commit_hash(&account_of(&charlie), epoch, &uids, &weights, &salt);
    client.commit_weights(&charlie, hash).await.expect("commit in the Commit phase");
    // The commit took a few blocks to finalize; the Reveal phase follows directly.
    let (info, _) = client.epoch_info().await.unwrap();
    assert_eq!(info.epoch, epoch, "still in the committed epoch");
    let at = wait_for_phase(&client, epoch, Phase::Reveal, Duration::from_secs(30)).await;
    assert_eq!(at, epoch, "reveal phase of the same epoch");
    client.reveal_weights(&charlie, uids, weights, salt).await.expect("reveal");

    // Follow finalized blocks until the epoch is settled, collecting its payouts.
    let mut blocks = client.api().stream_blocks().await.expect("finalized blocks");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut miner_paid, mut validator_paid, mut settled) = (0u128, 0u128, None);
    while settled.is_none() {
        assert!(Instant::now() < deadline, "epoch {epoch} not settled\n{}", node.log_tail(20));
        let block = blocks.next().await.expect("stream open").expect("block");
        let events = block.at().await.unwrap().events().fetch().await.unwrap();
        for e in events.find::<sliver::sliver_rewards::events::MinerPaid>() {
            let e = e.unwrap();
            if e.uid == miner_uid {
                miner_paid += e.amount;
            }
        }
        for e in events.find::<sliver::sliver_rewards::events::ValidatorPaid>() {
            let e = e.unwrap();
            if e.uid == validator_uid {
                validator_paid += e.amount;
            }
        }
        for e in events.find::<sliver::sliver_rewards::events::EpochSettled>() {
            let e = e.unwrap();
            if e.epoch == epoch {
                settled = Some(e);
            }
        }
    }
    let settled = settled.unwrap();
    // One miner with all the consensus weight takes the whole miners' share (80%), the only
    // validator the rest; nothing is lost but rounding dust.
    assert_eq!(settled.emission, 1_000 * UNIT);
    assert_eq!(miner_paid, settled.paid_miners);
    assert_eq!(validator_paid, settled.paid_validators);
    assert!(miner_paid >= 800 * UNIT - 1 && miner_paid <= 800 * UNIT, "miner paid {miner_paid}");
    assert!(validator_paid > 0, "validator earns dividends");
    assert_eq!(settled.emission, miner_paid + validator_paid + settled.dust);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_peer_key_proof_is_rejected_with_a_clear_error() {
    let node = DevNode::start().expect("start sliver-node");
    let client = ChainClient::connect_with_retry(&node.rpc_url, Duration::from_secs(30))
        .await
        .expect("connect");
    let dave = dev_keypair("dave").unwrap();
    // Dave claims Eve's PeerId: the key is Eve's, but Dave cannot sign with it, so he signs
    // the registration message with his own key and passes Eve's public key.
    let eve_key = peer_key(5);
    let dave_key = peer_key(4);
    let who = account_of(&dave);
    let nonce = client.registration_nonce(&who).await.unwrap();
    use ed25519_dalek::Signer;
    let forged =
        dave_key.sign(&sliver_chain::registration_message(&who, client.genesis_hash(), nonce));
    let call = sliver::tx().sliver_registry().register(
        Role::Miner,
        eve_key.verifying_key().to_bytes(),
        forged.to_bytes(),
        sliver::runtime_types::bounded_collections::bounded_vec::BoundedVec(vec![
            sliver::runtime_types::bounded_collections::bounded_vec::BoundedVec(
                b"/ip4/127.0.0.1/tcp/1".to_vec(),
            ),
        ]),
        hardware(),
    );
    let err = client
        .submit_and_finalize(&call, &dave, "sliver_registry.register")
        .await
        .expect_err("a forged proof must fail");
    assert!(err.to_string().contains("InvalidPeerSignature"), "{err}");
    assert_eq!(client.uid_of(&who).await.unwrap(), None, "nothing registered");
}
