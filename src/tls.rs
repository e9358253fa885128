//! TLS as a transport below HTTP: rustls (its `ring` provider, which builds with a C
//! compiler alone on Linux, macOS and Windows), set up from the `ssl_*` settings.
//!
//! The parser and the framing see plaintext either way: a TLS connection decrypts what
//! it reads into the same input buffer and encrypts what the output buffer holds (so
//! `wsgi.file_wrapper` is read and encrypted here, not sent with sendfile). Handshakes run
//! on the reactor like any read: no thread waits for one, and one that stalls is closed
//! within channel_timeout like a slow request head.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Whether clients must present a certificate (`ssl_cert_reqs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertReqs {
    None,
    Optional,
    Required,
}

/// The `ssl_*` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub certfile: String,
    /// None: the key is in the certificate file.
    pub keyfile: Option<String>,
    pub password: Option<String>,
    pub ca_certs: Option<String>,
    pub cert_reqs: CertReqs,
    /// TLS 1.3 only (`ssl_min_version = TLSv1.3`); otherwise TLS 1.2 and 1.3.
    pub tls13_only: bool,
}

/// What the environ says about a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject, RFC 4514 (`SSL_CLIENT_S_DN`).
    pub subject: String,
    /// The certificate, PEM (`SSL_CLIENT_CERT`).
    pub pem: String,
}

/// ring's suites, AES-128-GCM first: its SHA-256 key schedule costs about half of
/// AES-256-GCM's SHA-384 one in a handshake (SHA-256 has instructions of its own on
/// current x86 and ARM processors), and its records take 10 AES rounds instead of 14.
/// The server's order decides (`ignore_client_order`): clients list AES-256 first.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS13_AES_256_GCM_SHA384,
        suite::TLS13_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

fn read_file(path: &str, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(Path::new(path)).map_err(|e| format!("{what} {path:?} cannot be read: {e}"))
}

fn certificates(path: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path, what)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {path:?} is not a valid PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what} {path:?} holds no certificate (PEM, BEGIN CERTIFICATE)"));
    }
    Ok(certs)
}

/// The private key of `path`: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), or an encrypted PKCS#8
/// key opened with `password`.
fn private_key(path: &str, password: Option<&str>) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path, "ssl_keyfile")?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        let Some(password) = password else {
            return Err(format!("ssl_keyfile {path:?} is encrypted: give ssl_keyfile_password"));
        };
        use pkcs8::der::pem::PemLabel as _;
        let (label, doc) = pkcs8::der::SecretDocument::from_pem(&text)
            .map_err(|e| format!("ssl_keyfile {path:?} is not a valid encrypted key: {e}"))?;
        if label != pkcs8::EncryptedPrivateKeyInfo::PEM_LABEL {
            return Err(format!("ssl_keyfile {path:?} is not an encrypted PKCS#8 key"));
        }
        let info = pkcs8::EncryptedPrivateKeyInfo::try_from(doc.as_bytes())
            .map_err(|e| format!("ssl_keyfile {path:?} is not a valid encrypted key: {e}"))?;
        let plain = info.decrypt(password.as_bytes()).map_err(|_| {
            format!("ssl_keyfile {path:?}: wrong ssl_keyfile_password (or an unsupported cipher)")
        })?;
        return Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(plain.as_bytes().to_vec())));
    }
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(format!(
            "ssl_keyfile {path:?} uses the legacy OpenSSL encryption; convert it to an \
             encrypted PKCS#8 key (openssl pkcs8 -topk8) or give it unencrypted"
        ));
    }
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!("ssl_keyfile {path:?} holds no usable private key (PKCS#8, PKCS#1 RSA or SEC1 EC PEM): {e}")
    })
}

/// Builds the TLS configuration; every error names the setting and the file.
pub fn load(s: &Settings) -> Result<Arc<ServerConfig>, String> {
    let chain = certificates(&s.certfile, "ssl_certfile")?;
    let key = private_key(s.keyfile.as_deref().unwrap_or(&s.certfile), s.password.as_deref())?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = if s.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12, &rustls::version::TLS13]
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("ssl_min_version: {e}"))?;
    let builder = match (s.cert_reqs, &s.ca_certs) {
        (CertReqs::None, _) => builder.with_no_client_auth(),
        (_, None) => return Err("ssl_cert_reqs asks for client certificates: give ssl_ca_certs".into()),
        (reqs, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, "ssl_ca_certs")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("ssl_ca_certs {ca:?}: a certificate is not usable: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier =
                if reqs == CertReqs::Optional { verifier.allow_unauthenticated() } else { verifier };
            builder
                .with_client_cert_verifier(verifier.build().map_err(|e| format!("ssl_ca_certs {ca:?}: {e}"))?)
        }
    };
    let keyfile = s.keyfile.as_deref().unwrap_or(&s.certfile);
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("ssl_keyfile {keyfile:?} does not match the certificate of ssl_certfile {:?}", s.certfile)
        }
        e => format!("ssl_certfile {:?} / ssl_keyfile {keyfile:?}: {e}", s.certfile),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The environ's view of a verified client certificate.
pub fn client_cert(der: &[u8]) -> Option<ClientCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(ClientCert { subject: rfc4514(cert.subject()), pem: pem(der) })
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The short names RFC 4514 defines (and `emailAddress`, which OpenSSL shows).
fn attribute_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

/// A distinguished name as RFC 4514 writes it: the last RDN first, `,` between RDNs,
/// `+` inside one, values escaped; a type without a short name as its dotted OID with
/// the value's DER in hex.
pub fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut rdns: Vec<String> = Vec::new();
    for rdn in name.iter_rdn() {
        let mut parts: Vec<String> = Vec::new();
        for atv in rdn.iter() {
            let oid = atv.attr_type().to_id_string();
            let mut part = String::new();
            match (attribute_name(&oid), atv.as_str()) {
                (Some(short), Ok(value)) => {
                    part.push_str(short);
                    part.push('=');
                    escape_value(&mut part, value);
                }
                _ => {
                    part.push_str(&oid);
                    part.push_str("=#");
                    for b in atv.attr_value().as_bytes() {
                        let _ = write!(part, "{b:02x}");
                    }
                }
            }
            parts.push(part);
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    rdns.join(",")
}

fn escape_value(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        let mut s = String::new();
        escape_value(&mut s, " a,b+c\"d\\e<f>g;h# ");
        assert_eq!(s, "\\ a\\,b\\+c\\\"d\\\\e\\<f\\>g\\;h#\\ ");
        let mut s = String::new();
        escape_value(&mut s, "#x");
        assert_eq!(s, "\\#x");
    }

    #[test]
    fn pem_lines_are_64_wide() {
        let text = pem(&[7u8; 100]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(*lines.last().unwrap(), "-----END CERTIFICATE-----");
    }

    #[test]
    fn missing_files_are_named() {
        let s = Settings {
            certfile: "/nonexistent/cert.pem".into(),
            keyfile: None,
            password: None,
            ca_certs: None,
            cert_reqs: CertReqs::None,
            tls13_only: false,
        };
        let e = load(&s).unwrap_err();
        assert!(e.contains("ssl_certfile \"/nonexistent/cert.pem\" cannot be read"), "{e}");
    }
}
