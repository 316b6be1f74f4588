//! TLS for STARTTLS and implicit-TLS listeners.
//!
//! With `tls.cert_file`/`tls.key_file` set, those PEM files are used. With
//! neither, a self-signed certificate for `server.hostname` (and
//! `localhost`, `127.0.0.1`, `::1`) is generated at first start into
//! `data_dir/tls/{cert,key}.pem` and reused afterwards, so clients that
//! pinned it keep working across restarts. [`client`] holds the client side
//! of opportunistic TLS.

#![warn(missing_docs)]

pub mod client;

use std::path::PathBuf;
use std::sync::Arc;

use posthorn_config::Config;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// TLS set-up errors (they stop the start of a tier: a listener without its
/// certificate is a configuration error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// PEM or certificate content is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// Paths of the certificate chain and key in use; generates the
/// self-signed pair on first use when none is configured.
pub fn certificate_paths(cfg: &Config) -> Result<(PathBuf, PathBuf), Error> {
    if !cfg.tls.cert_file.is_empty() {
        return Ok((
            PathBuf::from(&cfg.tls.cert_file),
            PathBuf::from(&cfg.tls.key_file),
        ));
    }
    let dir = cfg.server.data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    // Several tier processes may share the data directory and start at the
    // same time: one generates (holding `generating.lock`, created with
    // O_EXCL), the others wait for it. `cert.pem` is renamed into place
    // last, so its presence means the pair is complete.
    let lock = dir.join("generating.lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if cert.exists() && key.exists() {
            return Ok((cert, key));
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => {
                let res = generate(cfg, &dir, &cert, &key);
                let _ = std::fs::remove_file(&lock);
                res?;
                return Ok((cert, key));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if std::time::Instant::now() > deadline {
                    // A generator died holding the lock: take over.
                    let _ = std::fs::remove_file(&lock);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => {
                return Err(Error::Io {
                    path: lock.display().to_string(),
                    source: e,
                });
            }
        }
    }
}

fn generate(
    cfg: &Config,
    dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(), Error> {
    let mut names = vec![cfg.server.hostname.clone()];
    for n in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    }
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::Invalid(format!("cannot generate a certificate: {e}")))?;
    let key_tmp = dir.join("key.pem.tmp");
    let cert_tmp = dir.join("cert.pem.tmp");
    write_private(&key_tmp, generated.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_tmp, generated.cert.pem()).map_err(|e| Error::Io {
        path: cert_tmp.display().to_string(),
        source: e,
    })?;
    std::fs::rename(&key_tmp, key).map_err(|e| Error::Io {
        path: key.display().to_string(),
        source: e,
    })?;
    std::fs::rename(&cert_tmp, cert).map_err(|e| Error::Io {
        path: cert.display().to_string(),
        source: e,
    })?;
    tracing::info!(cert = %cert.display(), "generated a self-signed certificate (set tls.cert_file/tls.key_file for a real one)");
    Ok(())
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    f.write_all(bytes).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })
}

/// The acceptor for STARTTLS and implicit-TLS listeners. With no
/// configured certificate, a failure to generate one only disables TLS
/// (logged, `None`); a configured certificate that cannot be loaded is an
/// error (a listener without its certificate is a misconfiguration).
pub fn acceptor(cfg: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, Error> {
    match server_config(cfg) {
        Ok(c) => Ok(Some(tokio_rustls::TlsAcceptor::from(c))),
        Err(e) if cfg.tls.cert_file.is_empty() => {
            tracing::warn!(error = %e, "no TLS: STARTTLS and implicit-TLS listeners disabled");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// "TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384", for `Received:` lines and logs.
pub fn describe(conn: &rustls::ServerConnection) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "TLS".to_string(),
    };
    match conn.negotiated_cipher_suite() {
        Some(cs) => format!("{version} with cipher {:?}", cs.suite()),
        None => version,
    }
}

/// A rustls server configuration from the configured or generated files.
pub fn server_config(cfg: &Config) -> Result<Arc<rustls::ServerConfig>, Error> {
    let (cert, key) = certificate_paths(cfg)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| Error::Invalid(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Invalid(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| Error::Invalid(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Invalid(format!("certificate and key do not match: {e}")))?;
    Ok(Arc::new(sc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_generation_yields_one_matching_pair() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.server.data_dir = dir.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let cfg = cfg.clone();
                std::thread::spawn(move || {
                    server_config(&cfg).map(|_| ()).map_err(|e| e.to_string())
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        server_config(&cfg).unwrap();
        assert!(!dir.path().join("tls/generating.lock").exists());
    }

    #[test]
    fn generates_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.server.data_dir = dir.path().to_path_buf();
        let (c1, _) = certificate_paths(&cfg).unwrap();
        let first = std::fs::read(&c1).unwrap();
        server_config(&cfg).unwrap();
        let (c2, _) = certificate_paths(&cfg).unwrap();
        assert_eq!(first, std::fs::read(c2).unwrap());
    }
}
