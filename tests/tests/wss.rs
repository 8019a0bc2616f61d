//! The node behind TLS: `wss://` works. A TLS-terminating proxy (this test, rustls, a
//! certificate for `localhost` signed by a CA made here) forwards to a real `sliver-node`;
//! `sliver-miner status` reaches the chain through `wss://localhost:<port>`, trusting the CA
//! through `SSL_CERT_FILE` as an operator would trust their node's certificate. Plain `ws://`
//! to a remote host is refused (see miners.rs).

use std::sync::Arc;
use std::time::Duration;

use sliver_e2e::{miner_args, workspace_binary, DevNode, Proc};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_reaches_its_node_over_wss() {
    let node = DevNode::start().expect("start sliver-node");
    let upstream = node.rpc_url.trim_start_matches("ws://").to_string();
    let tmp = tempfile::tempdir().unwrap();

    // A CA, and a certificate for localhost it signed.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Sliver test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let ca_file = tmp.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    // The proxy: TLS in, plain WebSocket bytes out to the node.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut plain) = TcpStream::connect(&upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });

    let bin = workspace_binary("sliver-miner").unwrap();
    let url = format!("wss://localhost:{port}");
    let dir = tmp.path().join("m");
    let ca = ca_file.display().to_string();
    let mut p = Proc::spawn(
        "status over wss",
        &bin,
        &miner_args(&["status"], &url, &dir, "//Bob"),
        &[("SSL_CERT_FILE", ca.as_str())],
    )
    .unwrap();
    let code = p.wait(Duration::from_secs(60)).unwrap();
    let out = p.log().join("\n");
    println!("{out}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("chain {url}: epoch")), "{out}");

    // Without trusting the CA the certificate is refused: TLS is really checked.
    let mut p = Proc::spawn(
        "status over wss, CA not trusted",
        &bin,
        &miner_args(&["status"], &url, &dir, "//Bob"),
        &[("SSL_CERT_FILE", "/nonexistent")],
    )
    .unwrap();
    assert_eq!(p.wait(Duration::from_secs(60)).unwrap(), 1, "{}", p.log_tail(10));
}
