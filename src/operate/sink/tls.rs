//! The sink's HTTPS: a certificate authority made at start, and a certificate
//! for `127.0.0.1` and `localhost` signed by it. herald trusts the authority
//! through `push.extra_ca_file` (the sink writes it with `--tls-ca-out`), as
//! it would a TLS-inspecting middlebox's. ALPN offers HTTP/2 and HTTP/1.1.

use std::sync::Arc;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// What serving HTTPS takes, and the authority a client must trust.
pub struct SinkTls {
    pub acceptor: TlsAcceptor,
    /// The authority's certificate, PEM.
    pub ca_pem: String,
}

impl SinkTls {
    pub fn generate() -> anyhow::Result<SinkTls> {
        let ca_key = KeyPair::generate().context("cannot make the sink's CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "herald sink test authority");
        let ca = ca_params
            .self_signed(&ca_key)
            .context("cannot sign the sink's CA certificate")?;
        let key = KeyPair::generate().context("cannot make the sink's key")?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "herald sink");
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .context("cannot sign the sink's certificate")?;
        let chain = vec![cert.der().clone(), CertificateDer::from(ca.der().to_vec())];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .context("the sink's certificate")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(SinkTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            ca_pem: ca.pem(),
        })
    }
}
