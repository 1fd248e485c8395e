//! TLS for `weir proxy`: certificates loaded from PEM files, chosen by SNI, and the
//! rustls server configuration of a frontend.
//!
//! A frontend's `certificates` is a PEM file or a directory of them (`*.pem`, in name
//! order). Each file holds one certificate chain (leaf first) and its private key. The
//! names a certificate serves are its subjectAltName DNS names, or its subject CN when it
//! has none (RFC 6125); `*.example.com` serves one label under example.com. The first
//! certificate is the default: for a client that sends no SNI or a name no certificate
//! has, as HAProxy's first `crt`.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    server::{ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use thiserror::Error;

use crate::config::{FrontendConfig, TlsVersion};

/// TLS 1.2 sessions remembered for resumption by session id (TLS 1.3 uses tickets).
const SESSION_CACHE_SIZE: usize = 4096;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", .path.display())]
    Pem { path: PathBuf, message: String },
    #[error("{}: no certificate in the file", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key in the file (each file holds a certificate chain and its key)", .path.display())]
    NoKey { path: PathBuf },
    #[error("{}: the private key does not match the certificate", .path.display())]
    KeyMismatch { path: PathBuf },
    #[error("{}: {message}", .path.display())]
    BadCertificate { path: PathBuf, message: String },
    #[error("{}: no certificate file (*.pem) in the directory", .path.display())]
    EmptyDirectory { path: PathBuf },
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A certificate chain and key from one file, with the names it serves.
#[derive(Clone)]
pub struct Certificate {
    pub path: PathBuf,
    /// Lower case; wildcards as written (`*.example.com`).
    pub names: Vec<String>,
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("path", &self.path)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// The crypto provider of the proxy: ring, as the https health checks use.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates at `path` (a PEM file, or a directory of `*.pem` files in name order),
/// each checked: a chain, a key that matches its leaf, at least one name.
pub fn load_certificates(path: &Path) -> Result<Vec<Certificate>, TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    if !std::fs::metadata(path).map_err(io)?.is_dir() {
        return Ok(vec![load_certificate(path)?]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    files.retain(|file| file.extension().is_some_and(|e| e == "pem") && file.is_file());
    files.sort();
    if files.is_empty() {
        return Err(TlsError::EmptyDirectory {
            path: path.to_owned(),
        });
    }
    files.iter().map(|file| load_certificate(file)).collect()
}

fn load_certificate(path: &Path) -> Result<Certificate, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })?;
    let pem_error = |e: rustls_pki_types::pem::Error| TlsError::Pem {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(pem_error)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    let key = match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => key,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(pem_error(e)),
    };
    let bad = |message: String| TlsError::BadCertificate {
        path: path.to_owned(),
        message,
    };
    let names = certificate_names(&chain[0]).map_err(bad)?;
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            path: path.to_owned(),
        },
        other => bad(format!("unusable private key: {other}")),
    })?;
    Ok(Certificate {
        path: path.to_owned(),
        names,
        key: Arc::new(key),
    })
}

/// The DNS names a leaf certificate serves: its subjectAltName DNS names, else its CN.
fn certificate_names(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("not a usable X.509 certificate: {e}"))?;
    let mut names: Vec<String> = cert.valid_dns_names().map(normalize).collect();
    if names.is_empty() {
        names.extend(common_name(cert.subject()).map(|cn| normalize(&cn)));
    }
    if names.is_empty() {
        return Err("the certificate names no host (no subjectAltName DNS name, no CN)".into());
    }
    names.dedup();
    Ok(names)
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The commonName of a DER subject (the contents of its Name SEQUENCE): the sequence of
/// SETs of {OID, value}; a string value only.
fn common_name(mut subject: &[u8]) -> Option<String> {
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
    while let Some((_set, set, rest)) = der_next(subject) {
        subject = rest;
        let mut attributes = set;
        while let Some((_seq, attribute, rest)) = der_next(attributes) {
            attributes = rest;
            let Some((0x06, oid, value)) = der_next(attribute) else {
                continue;
            };
            // UTF8String, PrintableString, IA5String.
            if let (true, Some((0x0c | 0x13 | 0x16, text, _))) = (oid == CN_OID, der_next(value)) {
                return std::str::from_utf8(text).ok().map(str::to_owned);
            }
        }
    }
    None
}

/// One DER element: its tag, contents and what follows it.
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let bytes = (first & 0x7f) as usize;
        if bytes == 0 || bytes > 4 || rest.len() < bytes {
            return None;
        }
        let len = rest[..bytes]
            .iter()
            .fold(0usize, |len, b| (len << 8) | *b as usize);
        (len, &rest[bytes..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Picks a frontend's certificate by SNI: an exact name, else a wildcard one label up,
/// else the default (the first certificate).
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// `certificates` must not be empty (loading refuses an empty set). A name served by
    /// two certificates goes to the first.
    pub fn new(certificates: &[Certificate]) -> Option<SniResolver> {
        let default = certificates.first()?.key.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for certificate in certificates {
            for name in &certificate.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    None => (&mut exact, name.as_str()),
                };
                map.entry(key.to_owned())
                    .or_insert_with(|| certificate.key.clone());
            }
        }
        Some(SniResolver {
            exact,
            wildcard,
            default,
        })
    }

    /// The certificate for a client that asked for `server_name`.
    pub fn select(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name.map(normalize) else {
            return &self.default;
        };
        if let Some(key) = self.exact.get(&name) {
            return key;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.select(client_hello.server_name()).clone())
    }
}

/// What stays the same across certificate reloads, so that resumption keeps working.
#[derive(Debug, Clone)]
pub struct Resumption {
    /// Session tickets (TLS 1.2 and 1.3), with keys rotated every 6 hours.
    ticketer: Arc<dyn ProducesTickets>,
    /// TLS 1.2 session ids.
    cache: Arc<ServerSessionMemoryCache>,
}

impl Resumption {
    pub fn new() -> Result<Resumption, TlsError> {
        Ok(Resumption {
            ticketer: rustls::crypto::ring::Ticketer::new()?,
            cache: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
        })
    }
}

/// The rustls configuration of `frontend` with `certificates`.
pub fn server_config(
    frontend: &FrontendConfig,
    certificates: &[Certificate],
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver = SniResolver::new(certificates).ok_or_else(|| TlsError::NoCertificate {
        path: frontend.certificates.clone(),
    })?;
    let versions: &[&rustls::SupportedProtocolVersion] = match frontend.min_tls {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = frontend
        .alpn
        .iter()
        .map(|p| p.as_str().as_bytes().to_vec())
        .collect();
    config.ticketer = resumption.ticketer.clone();
    config.session_storage = resumption.cache.clone();
    Ok(Arc::new(config))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names` (ECDSA P-256), as one PEM text with its key.
    pub fn self_signed(names: &[&str]) -> String {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names).expect("rcgen");
        format!(
            "{}{}",
            certified.cert.pem(),
            certified.key_pair.serialize_pem()
        )
    }

    /// A certificate for `names` followed by the key of another one.
    pub fn with_foreign_key(names: &[&str]) -> String {
        let own = self_signed(names);
        let other = self_signed(names);
        let cert_end = own.find("-----END CERTIFICATE-----").expect("pem") + 26;
        let key_start = other.find("-----BEGIN PRIVATE KEY-----").expect("pem");
        format!("{}{}", &own[..cert_end], &other[key_start..])
    }

    /// A certificate with only a subject CN (no subjectAltName).
    fn cn_only(cn: &str) -> String {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        format!("{}{}", cert.pem(), key.serialize_pem())
    }

    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(label: &str) -> TempDir {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("weir-tls-{label}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }

        pub fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).expect("write");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn load(dir: &TempDir) -> Vec<Certificate> {
        load_certificates(&dir.0).expect("loads")
    }

    #[test]
    fn names_come_from_san_else_cn() {
        let dir = TempDir::new("names");
        dir.write(
            "a.pem",
            &self_signed(&["WWW.Example.com.", "*.example.org"]),
        );
        dir.write("b.pem", &cn_only("legacy.example.net"));
        dir.write("ignored.txt", "not a certificate");
        let certs = load(&dir);
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].names, ["www.example.com", "*.example.org"]);
        assert_eq!(certs[1].names, ["legacy.example.net"]);
    }

    #[test]
    fn sni_selects_exact_then_wildcard_then_default() {
        let dir = TempDir::new("sni");
        dir.write("1-default.pem", &self_signed(&["default.test"]));
        dir.write("2-www.pem", &self_signed(&["www.example.com"]));
        dir.write("3-wild.pem", &self_signed(&["*.example.com"]));
        let certs = load(&dir);
        let resolver = SniResolver::new(&certs).expect("resolver");
        let pick = |name: Option<&str>| {
            let chosen = resolver.select(name);
            certs
                .iter()
                .position(|c| Arc::ptr_eq(&c.key, chosen))
                .expect("one of them")
        };
        assert_eq!(pick(None), 0);
        assert_eq!(pick(Some("unknown.test")), 0);
        assert_eq!(pick(Some("www.example.com")), 1);
        assert_eq!(pick(Some("WWW.EXAMPLE.COM")), 1);
        assert_eq!(pick(Some("api.example.com")), 2);
        // A wildcard covers exactly one label.
        assert_eq!(pick(Some("a.b.example.com")), 0);
        assert_eq!(pick(Some("example.com")), 0);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let dir = TempDir::new("bad");
        let pem = self_signed(&["one.test"]);
        let cert_end = pem.find("-----END CERTIFICATE-----").expect("pem") + 26;
        let key_start = pem.find("-----BEGIN PRIVATE KEY-----").expect("pem");
        let mismatch = dir.write("mismatch.pem", &with_foreign_key(&["one.test"]));
        let no_key = dir.write("nokey.pem", &pem[..cert_end]);
        let no_cert = dir.write("nocert.pem", &pem[key_start..]);
        let message = |path: &Path| load_certificates(path).expect_err("refused").to_string();
        assert!(
            message(&mismatch).contains("does not match"),
            "{}",
            message(&mismatch)
        );
        assert!(message(&no_key).contains("no private key"));
        assert!(message(&no_cert).contains("no certificate"));
        assert!(message(&dir.0.join("absent.pem")).contains("cannot read"));
        let empty = TempDir::new("empty");
        assert!(message(&empty.0).contains("no certificate file"));
    }

    #[test]
    fn der_reader_stops_at_truncated_input() {
        assert_eq!(der_next(&[0x30, 0x02, 0x01]), None);
        assert_eq!(der_next(&[0x30, 0x81]), None);
        assert_eq!(
            der_next(&[0x30, 0x01, 0xaa, 0xbb]),
            Some((0x30, &[0xaa][..], &[0xbb][..]))
        );
        assert_eq!(common_name(&[0x31, 0x05, 0x30]), None);
    }
}
