//! TLS 1.3 for QUIC where a node's ed25519 key is its identity: RFC 7250 raw public keys.
//!
//! Each side presents its public key as a bare SubjectPublicKeyInfo, never a certificate. The
//! client's verifier refuses any server whose key is not the node id it meant to reach; the
//! server's verifier takes any valid ed25519 key and the server reads the client's node id from
//! the handshake. rustls checks the handshake signatures, so a peer proves it holds the key.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature_with_raw_key};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};

use crate::protocol::identity::{Identity, NodeId};

/// The ALPN protocol id of this protocol's first version.
pub const ALPN: &[u8] = b"kaana/1";

/// DER of `SubjectPublicKeyInfo { algorithm: id-Ed25519 (1.3.101.112), BIT STRING (32 bytes) }`
/// up to the key: the only key type this protocol speaks (RFC 8410).
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// DER of a PKCS#8 v1 `OneAsymmetricKey` for Ed25519 up to the 32-byte seed (RFC 8410).
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// The SubjectPublicKeyInfo DER of a node's key.
pub fn spki_of(node: &NodeId) -> Vec<u8> {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(node.as_bytes());
    der
}

/// Parses a SubjectPublicKeyInfo DER as an Ed25519 key. An Ed25519 SPKI has exactly one
/// encoding (44 bytes: the fixed algorithm header, then the key), so comparing the header and
/// length is a full parse; anything else is refused.
pub fn node_of_spki(der: &[u8]) -> Option<NodeId> {
    let key = der.strip_prefix(&ED25519_SPKI_PREFIX)?;
    let bytes: [u8; 32] = key.try_into().ok()?;
    NodeId::from_bytes(bytes).ok()
}

/// ring's provider with AES-128-GCM put first among its TLS 1.3 suites (ring lists AES-256
/// first). Every byte of a push is sealed once and opened once, and AES-128 does 10 rounds to
/// AES-256's 14: a first push of 1 GiB took 1.93 s instead of 2.05 s (by hand, alternating).
/// 128-bit keys are what QUIC itself protects its first packets with. The other suites stay, so
/// a node that prefers another still connects.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

fn certified_key(identity: &Identity) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(&identity.seed());
    let key = rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(pkcs8))?;
    let spki = CertificateDer::from(spki_of(&identity.node_id()));
    Ok(Arc::new(CertifiedKey::new(vec![spki], key)))
}

/// The error a client's verifier gives when the server is another node than expected.
#[derive(Debug)]
pub struct WrongNode {
    /// The node the client meant to reach.
    pub expected: NodeId,
    /// The node that answered.
    pub found: NodeId,
}

impl fmt::Display for WrongNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the server is node {}, not the expected node {}", self.found, self.expected)
    }
}

impl std::error::Error for WrongNode {}

/// What a client's verifier saw, so that a refused handshake can be reported precisely.
#[derive(Debug, Default)]
pub struct SeenServer(Mutex<Option<NodeId>>);

impl SeenServer {
    /// The server's node id, if it presented a valid key.
    pub fn get(&self) -> Option<NodeId> {
        self.0.lock().map(|g| *g).unwrap_or(None)
    }
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn bad_encoding() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
}

fn check_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    node_of_spki(cert).ok_or_else(bad_encoding)?;
    verify_tls13_signature_with_raw_key(message, &SubjectPublicKeyInfoDer::from(cert.as_ref()), dss, algs)
}

/// Client side: the server must be `expected` (any node with a valid key when `None`: a board
/// found on the DHT, known only by its address).
#[derive(Debug)]
struct ExpectNode {
    expected: Option<NodeId>,
    seen: Arc<SeenServer>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ExpectNode {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = node_of_spki(end_entity).filter(|_| intermediates.is_empty()).ok_or_else(bad_encoding)?;
        if let Ok(mut seen) = self.seen.0.lock() {
            *seen = Some(found);
        }
        if let Some(expected) = self.expected.filter(|e| *e != found) {
            let err = WrongNode { expected, found };
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err)))));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Server side: any client with a valid ed25519 key; its id is read after the handshake.
#[derive(Debug)]
struct AnyNode {
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyNode {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        node_of_spki(end_entity).filter(|_| intermediates.is_empty()).ok_or_else(bad_encoding)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// A rustls client config for reaching `expected` (any node when `None`), presenting
/// `identity`'s key.
pub fn client_config(
    identity: &Identity,
    expected: Option<NodeId>,
) -> Result<(rustls::ClientConfig, Arc<SeenServer>), rustls::Error> {
    let seen = Arc::new(SeenServer::default());
    let verifier = ExpectNode { expected, seen: seen.clone(), algs: algorithms() };
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified_key(
            identity,
        )?)));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok((config, seen))
}

/// A rustls server config presenting `identity`'s key and requiring a client key.
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyNode { algs: algorithms() }))
        .with_cert_resolver(Arc::new(rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified_key(identity)?)));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spki_round_trips_and_refuses_other_keys() {
        let id = Identity::from_seed([4; 32]).node_id();
        let der = spki_of(&id);
        assert_eq!(der.len(), 44);
        assert_eq!(node_of_spki(&der), Some(id));
        let mut longer = der.clone();
        longer.push(0);
        assert_eq!(node_of_spki(&longer), None);
        let mut other_alg = der;
        other_alg[8] = 0x71; // id-Ed448's last arc
        assert_eq!(node_of_spki(&other_alg), None);
    }

    #[test]
    fn the_pkcs8_key_is_the_identity() {
        assert!(certified_key(&Identity::from_seed([8; 32])).is_ok());
    }

    /// Runs a TLS 1.3 handshake in memory and returns the suite both sides agreed on.
    fn negotiated(client: rustls::ClientConfig, server: rustls::ServerConfig) -> Option<rustls::CipherSuite> {
        let name = ServerName::try_from("kaana.invalid").ok()?;
        let mut client = rustls::ClientConnection::new(Arc::new(client), name).ok()?;
        let mut server = rustls::ServerConnection::new(Arc::new(server)).ok()?;
        for _ in 0..10 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).ok()?;
            server.read_tls(&mut wire.as_slice()).ok()?;
            server.process_new_packets().ok()?;
            wire.clear();
            server.write_tls(&mut wire).ok()?;
            client.read_tls(&mut wire.as_slice()).ok()?;
            client.process_new_packets().ok()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                let agreed = client.negotiated_cipher_suite()?.suite();
                return (server.negotiated_cipher_suite()?.suite() == agreed).then_some(agreed);
            }
        }
        None
    }

    #[test]
    fn two_nodes_seal_with_aes_128_gcm_and_still_meet_one_that_prefers_another_suite() {
        let (a, b) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let (client, _) = client_config(&a, Some(b.node_id())).unwrap();
        let server = server_config(&b).unwrap();
        assert_eq!(negotiated(client.clone(), server.clone()), Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));

        // A node that offers only AES-256 (older versions put it first) is still served.
        let mut aes_256 = rustls::crypto::ring::default_provider();
        aes_256.cipher_suites.retain(|suite| suite.suite() == rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
        let verifier = ExpectNode { expected: Some(b.node_id()), seen: Arc::default(), algs: algorithms() };
        let key = rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified_key(&a).unwrap());
        let mut older = rustls::ClientConfig::builder_with_provider(Arc::new(aes_256))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(key));
        older.alpn_protocols = vec![ALPN.to_vec()];
        assert_eq!(negotiated(older, server), Some(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
    }

    proptest! {
        #[test]
        fn spki_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = node_of_spki(&bytes);
        }
    }
}
