//! `rediss://`: herald end to end over TLS to a redis-server that serves only
//! TLS, with a certificate authority, a server certificate and a client
//! certificate the test makes; a client that does not trust the authority is
//! refused at once, with an error that says so.

mod helpers;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use helpers::{base_settings, eventually, spawn_redis, Herald, Proc, DURABLE};
use herald::shared::config::{Secret, Settings};
use herald::shared::db::{Db, Durability};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The PEM files of a test authority, a server certificate for 127.0.0.1 and
/// localhost, and a client certificate, all signed by the authority.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn make(dir: &Path) -> Pki {
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "herald redis test authority");
        let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let signed = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, name: &str| {
            let key = KeyPair::generate().expect("a key");
            let mut params = CertificateParams::new(names).expect("params");
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca, &ca_key).expect("a certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = signed(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "redis",
        );
        let (client_cert, client_key) =
            signed(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, "herald");
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write a PEM file");
            path
        };
        Pki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
        }
    }
}

/// A redis-server that listens only for TLS (`--port 0` after the helper's
/// `--port` turns the plain port off), with AOF; killed when dropped.
struct TlsRedis {
    _child: Proc,
    port: u16,
    pki: Pki,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    /// `auth_clients`: `optional` or `yes` (a client certificate is required).
    fn start(auth_clients: &str) -> TlsRedis {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let pki = Pki::make(dir.path());
        let port = herald::operate::embedded_redis::free_port().expect("a free port");
        let path = |p: &Path| p.to_str().expect("a UTF-8 temp path").to_string();
        let (cert, key, ca) = (path(&pki.server_cert), path(&pki.server_key), path(&pki.ca));
        let port_arg = port.to_string();
        let mut args = vec![
            "--port",
            "0",
            "--tls-port",
            &port_arg,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            auth_clients,
        ];
        args.extend_from_slice(DURABLE);
        let child = Proc(spawn_redis(dir.path(), port, &args));
        let redis = TlsRedis {
            _child: child,
            port,
            pki,
            _dir: dir,
        };
        redis.wait_ready();
        redis
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let client = redis::Client::build_with_tls(
            self.url(),
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: std::fs::read(&self.pki.client_cert).expect("client cert"),
                    client_key: std::fs::read(&self.pki.client_key).expect("client key"),
                }),
                root_cert: Some(std::fs::read(&self.pki.ca).expect("CA")),
            },
        )
        .expect("a TLS client");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut conn) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server with TLS on port {} did not answer within 10s (is it built with TLS? Debian's is)",
            self.port
        );
    }

    /// Settings for this server over `rediss://`, trusting the test authority.
    fn settings(&self, data: &Path) -> Settings {
        let mut s = base_settings(data);
        s.redis.url = Secret::new(self.url());
        s.redis.tls_ca_file = self.pki.ca.clone();
        s
    }
}

#[tokio::test]
async fn events_published_over_rediss_are_delivered() {
    let redis = TlsRedis::start("optional");
    let data = tempfile::tempdir().expect("temp dir");
    let mut settings = redis.settings(data.path());
    settings.redis.require_durable = true;
    settings
        .validate()
        .expect("rediss:// with a CA file is valid");
    let app = Herald::start(settings, data, false, None).await;
    assert_eq!(
        app.db
            .check_durability(true)
            .await
            .expect("the durability check runs over TLS"),
        Durability::Durable
    );
    let device = app.register_device("u-1").await;
    app.run_roles();
    let id = app.publish_to("u-1", "over TLS").await;
    eventually(
        "the event reaches the device",
        Duration::from_secs(10),
        || app.delivered_to(&device) == vec![id.clone()],
    )
    .await;
}

#[tokio::test]
async fn a_client_certificate_is_sent_when_the_server_requires_one() {
    let redis = TlsRedis::start("yes");
    let data = tempfile::tempdir().expect("temp dir");
    let mut settings = redis.settings(data.path());
    settings.redis.tls_cert_file = redis.pki.client_cert.clone();
    settings.redis.tls_key_file = redis.pki.client_key.clone();
    settings
        .validate()
        .expect("a client certificate and key are valid");
    let db = Db::connect(&settings)
        .await
        .expect("connects with the client certificate");
    db.ping().await.expect("PING over mutual TLS");
    let mut blocking = db
        .blocking_conn(Duration::from_millis(100))
        .await
        .expect("a blocking reader's connection over mutual TLS");
    let _: String = redis::cmd("PING")
        .query_async(&mut blocking)
        .await
        .expect("PING on the blocking connection");

    // Without the certificate the server ends the handshake: a clear error, soon.
    let mut without = redis.settings(data.path());
    without.redis.command_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let refused = Db::connect(&without)
        .await
        .err()
        .expect("a server that requires a client certificate refuses one without");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused only after {:?}",
        started.elapsed()
    );
    let message = format!("{refused:#}");
    assert!(
        message.contains("cannot reach Redis at rediss://")
            && message.contains("CertificateRequired")
            && message.contains("redis.tls_cert_file"),
        "{message}"
    );
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_servers_authority_is_refused_at_once() {
    let redis = TlsRedis::start("optional");
    let data = tempfile::tempdir().expect("temp dir");
    let mut settings = redis.settings(data.path());
    // The system's certificate store, which does not hold the test authority.
    settings.redis.tls_ca_file = PathBuf::new();
    let started = Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(30), Db::connect(&settings))
        .await
        .expect("refused rather than left hanging")
        .err()
        .expect("a server signed by an unknown authority is refused");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused only after {:?}",
        started.elapsed()
    );
    let message = format!("{refused:#}");
    assert!(
        message.contains("cannot reach Redis at rediss://127.0.0.1")
            && message.contains("invalid peer certificate")
            && message.contains("redis.tls_ca_file"),
        "{message}"
    );
    // A plain redis:// client on the TLS port is refused too, not left waiting.
    let mut plain = base_settings(data.path());
    plain.redis.url = Secret::new(format!("redis://127.0.0.1:{}", redis.port));
    plain.redis.command_timeout = Duration::from_secs(2);
    let refused = tokio::time::timeout(Duration::from_secs(30), Db::connect(&plain))
        .await
        .expect("refused rather than left hanging");
    assert!(refused.is_err(), "plain text is not served on the TLS port");
}
