//! Native TLS (`--tls-cert` / `--tls-key`): rustls with ring, the
//! certificate chain and key read from PEM files, and re-read on SIGHUP.
//!
//! The server config never changes; its certificate comes from a
//! [`CertResolver`] that every handshake asks for the current
//! [`CertifiedKey`]. A reload swaps that `Arc`: handshakes after it get the
//! new certificate, established connections keep the session they have.
//! A reload that fails (missing file, bad PEM, key not matching the
//! certificate) is logged and the old certificate stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::HubConfig;

/// The certificate and key files, and the certificate handshakes get now.
#[derive(Debug)]
pub(crate) struct CertResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a complete `Arc` (the write is one
        // assignment): keep serving it.
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        Some(Arc::clone(&current))
    }
}

impl CertResolver {
    /// Reads both files again; on success new handshakes use them.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let fresh = load(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }
}

/// The acceptor for `config`'s certificate, or `None` when TLS is off.
/// Errors name the file and what is wrong with it.
pub(crate) fn acceptor(
    config: &HubConfig,
) -> Result<Option<(TlsAcceptor, Arc<CertResolver>)>, String> {
    let (Some(cert_path), Some(key_path)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = load(cert_path, key_path, &provider)?;
    let resolver = Arc::new(CertResolver {
        cert_path: cert_path.clone(),
        key_path: key_path.clone(),
        provider: Arc::clone(&provider),
        current: RwLock::new(Arc::new(certified)),
    });
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
    // WebSockets need HTTP/1.1 (the hub speaks nothing else).
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some((TlsAcceptor::from(Arc::new(server)), resolver)))
}

/// Checks that `config`'s certificate and key load, without starting
/// anything: the binary calls it before it announces `listening on`.
pub fn check(config: &HubConfig) -> Result<(), String> {
    acceptor(config).map(|_| ())
}

fn load(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let cert_pem = read(cert_path, "tls_cert (--tls-cert)")?;
    let key_pem = read(key_path, "tls_key (--tls-key)")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "tls_cert {}: not a PEM certificate chain: {e}",
                cert_path.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "tls_cert {}: no CERTIFICATE in it (expected a PEM certificate chain)",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "tls_key {}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            key_path.display()
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "the key does not belong to the (first) certificate".to_owned()
            }
            other => other.to_string(),
        };
        format!(
            "tls_cert {} / tls_key {}: {why}",
            cert_path.display(),
            key_path.display()
        )
    })
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: cannot read it: {e}", path.display()))
}

/// Re-reads the certificate on every SIGHUP until shutdown.
#[cfg(unix)]
pub(crate) fn reload_on_sighup(
    resolver: Arc<CertResolver>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups =
        signal(SignalKind::hangup()).map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                received = hangups.recv() => {
                    if received.is_none() {
                        return;
                    }
                    match resolver.reload() {
                        Ok(()) => tracing::info!(
                            cert = %resolver.cert_path.display(),
                            "SIGHUP: TLS certificate reloaded; new connections use it"
                        ),
                        Err(error) => tracing::error!(
                            %error,
                            "SIGHUP: TLS certificate NOT reloaded, the previous one stays in use"
                        ),
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }))
}

#[cfg(not(unix))]
pub(crate) fn reload_on_sighup(
    _resolver: Arc<CertResolver>,
    _shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    tracing::warn!("no SIGHUP on this platform: the TLS certificate is read once at start");
    Ok(tokio::spawn(async {}))
}
