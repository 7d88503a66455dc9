//! DICOM TLS (PS3.15 Annex B, the BCP 195 profile): rustls configurations built from PEM files,
//! and the socket both sides use, plain TCP or TLS over it. After its handshake the server opens
//! and seals its records itself ([`record`]), on the keys rustls hands over.
//!
//! Policy: TLS 1.2 and 1.3 only, and AEAD suites with ECDHE key exchange only (the RFC 9325
//! §4.2 recommendations BCP 195 names); no weaker suite can be negotiated. rustls bounds each handshake message to 64 KiB and each record to 16 KiB,
//! so a handshake costs a bounded amount of memory whatever the peer sends.

use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::{UnbufferedServerConnection, WebPkiClientVerifier};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::connection::read_timeout::{self, ReadTimeout};
use crate::error::Error;
use record::{Opened, RecordLayer, Refused, MAX_RECORD};

pub(crate) mod record;

/// Encrypted bytes the client reads from the socket at once: rustls asks for at most 4 KiB per
/// read, which would be a system call each. More (the plain path reads 256 KiB ahead) would
/// save a few calls per instance but is allocated for each handshake, before the peer has
/// proved anything.
const SOCKET_READ_AHEAD: usize = 64 * 1024;

/// The server's buffer for encrypted bytes, read straight from the socket and decrypted in it:
/// room for the largest handshake message rustls takes (64 KiB, in records of their own). A
/// peer's message that does not fit is refused, so this bounds the memory a handshake costs.
/// Afterwards it holds at most a record or two: the records of large reads are received
/// straight into the reader's buffer.
const SERVER_INCOMING: usize = 80 * 1024;

/// Server side: our certificate chain and key, the CA certificates a client certificate
/// must chain to (then one is required: mutual TLS), and the revocation lists of those CAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
    /// CRLs (PEM) of the CAs in `ca`: a client certificate they revoke is refused, and so is
    /// one whose issuer has no CRL here (its status cannot be told).
    pub crl: Option<PathBuf>,
}

/// Client side: the CA certificates the server's must chain to (None: the system's trust
/// store), whether its name must match the host we connect to, and our own certificate and
/// key for a server that asks for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFiles {
    pub ca: Option<PathBuf>,
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
    pub verify_hostname: bool,
}

/// The ring provider with its suites in our order of preference: all AEAD with ECDHE (the
/// RFC 9325 §4.2 recommendations), AES-128-GCM first, the fastest with AES instructions and
/// the suite BCP 195 names first.
fn provider() -> Arc<CryptoProvider> {
    use ring::cipher_suite::*;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..ring::default_provider()
    })
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn invalid(what: &str, path: &Path, why: impl fmt::Display) -> Error {
    Error::InvalidConfig(format!("TLS {what} {}: {why}", path.display()))
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(what, path, e))?;
    if certs.is_empty() {
        return Err(invalid(what, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn revocation_lists(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid("CRL file", path, e))?;
    if crls.is_empty() {
        return Err(invalid("CRL file", path, "no PEM X509 CRL in it"));
    }
    Ok(crls)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| invalid("key", path, e))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, Error> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path, "CA file")? {
        store.add(cert).map_err(|e| invalid("CA file", path, e))?;
    }
    Ok(Arc::new(store))
}

/// The operating system's trust store (e.g. /etc/ssl/certs), where a site installs its CA.
fn system_roots() -> Result<Arc<RootCertStore>, Error> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(Error::InvalidConfig(
            "TLS: no CA certificate in the system trust store; name one with tls_ca".into(),
        ));
    }
    Ok(Arc::new(store))
}

/// The subject and the end of validity of the certificate a server presents, what an
/// operator watches to renew it in time, and when its revocation lists are due again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedCertificate {
    pub subject: String,
    /// notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
    /// The earliest nextUpdate of the CRLs (seconds since the epoch): past it, a CRL still
    /// applies but may miss certificates revoked since (None: no CRL, or none tells).
    pub crl_next_update: Option<i64>,
}

fn served_certificate(cert: &CertificateDer<'_>, path: &Path) -> Result<ServedCertificate, Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| invalid("certificate file", path, e))?;
    Ok(ServedCertificate {
        subject: parsed.subject().to_string(),
        not_after: parsed.validity().not_after.timestamp(),
        crl_next_update: None,
    })
}

/// The earliest nextUpdate among `crls` (webpki has checked they parse).
fn next_update(crls: &[CertificateRevocationListDer<'_>]) -> Option<i64> {
    crls.iter()
        .filter_map(|crl| x509_parser::parse_x509_crl(crl).ok())
        .filter_map(|(_, crl)| crl.next_update())
        .map(|time| time.timestamp())
        .min()
}

/// The rustls server configuration for these files, and what its certificate (the first of
/// the chain) says.
pub fn server_config(files: &ServerFiles) -> Result<(Arc<ServerConfig>, ServedCertificate), Error> {
    let chain = certificates(&files.cert, "certificate file")?;
    let mut leaf = served_certificate(&chain[0], &files.cert)?;
    let key = private_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| Error::InvalidConfig(format!("TLS: {e}")))?;
    let builder = match (&files.ca, &files.crl) {
        (None, None) => builder.with_no_client_auth(),
        (None, Some(_)) => {
            return Err(Error::InvalidConfig(
                "TLS: a CRL file needs the CA file whose client certificates it revokes".into(),
            ))
        }
        (Some(ca), crl) => {
            let mut verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider());
            if let Some(crl) = crl {
                let crls = revocation_lists(crl)?;
                leaf.crl_next_update = next_update(&crls);
                // The client's own certificate is what a site revokes (a retired modality);
                // an intermediate CA's status would need its issuer's CRL too.
                verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
            }
            let verifier = verifier.build().map_err(|e| match crl {
                Some(crl) if matches!(e, rustls::server::VerifierBuilderError::InvalidCrl(_)) => {
                    invalid("CRL file", crl, e)
                }
                _ => invalid("CA file", ca, e),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid("certificate and key", &files.cert, e))?;
    // Our preference, not the client's: OpenSSL clients (DCMTK) list AES-256 first.
    config.ignore_client_order = true;
    // Our record layer takes over from rustls after the handshake (record.rs).
    config.enable_secret_extraction = true;
    Ok((Arc::new(config), leaf))
}

/// A server's TLS configuration and the files it came from, read again on request:
/// certificates are renewed while a gateway runs. Handshakes that begin after a reload use the
/// new files; those under way and the associations established keep what they started with.
#[derive(Debug)]
pub struct ServerCredentials {
    files: ServerFiles,
    current: RwLock<(Arc<ServerConfig>, ServedCertificate)>,
}

impl ServerCredentials {
    pub fn load(files: ServerFiles) -> Result<ServerCredentials, Error> {
        let current = RwLock::new(server_config(&files)?);
        Ok(ServerCredentials { files, current })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (Arc<ServerConfig>, ServedCertificate)> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration a new connection's handshake uses.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.read().0)
    }

    /// What the certificate served now says.
    pub fn certificate(&self) -> ServedCertificate {
        self.read().1.clone()
    }

    /// Read the files again. An unusable file (half-written, a key that does not match)
    /// leaves the configuration as it was.
    pub fn reload(&self) -> Result<(), Error> {
        let loaded = server_config(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }
}

/// The rustls client configuration for these files.
pub fn client_config(files: &ClientFiles) -> Result<Arc<ClientConfig>, Error> {
    let roots = match &files.ca {
        Some(ca) => roots(ca)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| Error::InvalidConfig(format!("TLS: {e}")))?;
    let builder = if files.verify_hostname {
        builder.with_root_certificates(roots)
    } else {
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| Error::InvalidConfig(format!("TLS CA certificates: {e}")))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(inner)))
    };
    let config = match &files.cert_and_key {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert, "certificate file")?, private_key(key)?)
            .map_err(|e| invalid("certificate and key", cert, e))?,
    };
    Ok(Arc::new(config))
}

/// Verifies the server's chain like rustls does, but accepts a certificate issued for another
/// name: for sites whose DICOM nodes are reached by addresses their certificates do not name.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A TCP socket whose reads, while a deadline is set, each wait only for what is left of it,
/// so a peer trickling bytes cannot stretch the deadline.
pub struct Socket {
    tcp: TcpStream,
    due: Option<Instant>,
    /// The read timeout the socket has, so a read sets it only when it must change.
    timeout: ReadTimeout,
}

impl Socket {
    fn new(tcp: TcpStream, due: Option<Instant>) -> Socket {
        Socket {
            tcp,
            due,
            timeout: ReadTimeout::default(),
        }
    }

    /// Set the deadline for the reads that follow; None waits as long as it takes.
    fn set_due(&mut self, due: Option<Instant>) -> io::Result<()> {
        self.due = due;
        if due.is_none() && self.timeout != ReadTimeout::Set(None) {
            self.tcp.set_read_timeout(None)?;
            self.timeout = ReadTimeout::Set(None);
        }
        Ok(())
    }
}

impl Socket {
    /// Read what has arrived into `buf` (not empty). The end of the stream is an error: it
    /// cuts a TLS record or handshake short. An interrupted read gives 0.
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.read(buf) {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.due {
            // No deadline of ours: the socket's own timeout (the SCU's, say) applies.
            None => self.tcp.read(buf),
            Some(_) => read_timeout::read_by(&self.tcp, &mut self.timeout, self.due, buf),
        }
    }
}

/// The client's socket under TLS: encrypted bytes read ahead ([`SOCKET_READ_AHEAD`]), writes
/// direct. rustls encrypts a write 64 KiB at a time (the records it holds by default) and
/// hands them over in one vectored write; holding more would save system calls but cost more
/// than they do: glibc gives the freed records' pages back and faults them in again, tripling
/// the CPU per byte encrypted (`benches/tls_cost.rs`).
pub struct Buffered(BufReader<Socket>);

impl Read for Buffered {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Buffered {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.get_mut().tcp.write(buf)
    }

    /// rustls hands over its queued records at once: one system call for all of them.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.get_mut().tcp.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The client side of TLS: rustls's buffered connection, whose records leave in vectored
/// writes without another copy.
pub type ClientTls = rustls::StreamOwned<ClientConnection, Buffered>;

/// What [`Stream`] needs of a TLS connection besides reading and writing.
pub trait Tls: Read + Write {
    fn socket(&self) -> &Socket;
    fn socket_mut(&mut self) -> &mut Socket;
    /// Send a close_notify alert.
    fn close_notify(&mut self) -> io::Result<()>;
}

impl Tls for ClientTls {
    fn socket(&self) -> &Socket {
        self.sock.0.get_ref()
    }

    fn socket_mut(&mut self) -> &mut Socket {
        self.sock.0.get_mut()
    }

    fn close_notify(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush()
    }
}

/// The server side of TLS. rustls makes the handshake on its unbuffered API ([`Handshaking`]);
/// then our record layer ([`record`]) takes over with the keys rustls extracted. A read big
/// enough for a whole record receives straight into the caller's buffer and opens the records
/// there, so the bytes of a P-DATA body are received into the PDU buffer and decrypted where
/// they lie, with no copy. Smaller reads are served from our own buffer, where records are
/// opened in place.
pub struct ServerTls {
    sock: Socket,
    records: RecordLayer,
    /// Encrypted bytes received and not yet opened: `incoming[start..received]`; plaintext
    /// opened and not yet read: `incoming[plain]`, before them.
    incoming: Vec<u8>,
    start: usize,
    received: usize,
    plain: Range<usize>,
    /// Records to send (our PDUs sealed, a KeyUpdate, alerts).
    outgoing: Vec<u8>,
    peer_closed: bool,
}

/// A server connection during its handshake: encrypted bytes are read from the socket
/// straight into our buffer ([`SERVER_INCOMING`]), where rustls decrypts them.
struct Handshaking {
    conn: UnbufferedServerConnection,
    sock: Socket,
    /// Encrypted bytes received and not yet processed: `incoming[start..received]`.
    incoming: Vec<u8>,
    start: usize,
    received: usize,
    /// Application data rustls decrypted together with the client's last handshake records.
    early: Vec<u8>,
    /// Records to send (handshake flights, alerts).
    outgoing: Vec<u8>,
    peer_closed: bool,
}

/// What to do after one state of [`Handshaking::advance`].
enum Next {
    /// Process on: there may be more records, or rustls has more to send.
    Process,
    /// Nothing more without bytes from the peer.
    Receive,
    /// Application data may be sent.
    Traffic,
}

/// The length of the whole record at `bytes`' start, if it is all there.
fn whole_record(records: &RecordLayer, bytes: &[u8]) -> Result<Option<usize>, Refused> {
    Ok(records.record_len(bytes)?.filter(|&len| len <= bytes.len()))
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Handshaking {
    /// Drive the handshake to its end, reading from the socket whenever rustls needs more.
    fn run(&mut self) -> io::Result<()> {
        while !self.advance()? {
            if self.incoming.len() - self.received < MAX_RECORD || self.start == self.received {
                self.incoming.copy_within(self.start..self.received, 0);
                (self.start, self.received) = (0, self.received - self.start);
            }
            if self.received == self.incoming.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS message larger than the receive buffer",
                ));
            }
            self.received += self.sock.read_some(&mut self.incoming[self.received..])?;
        }
        Ok(())
    }

    /// Process what was received, sending what rustls asks to send, until the handshake is
    /// done (true) or more must be received (false).
    fn advance(&mut self) -> io::Result<bool> {
        loop {
            let UnbufferedStatus { mut discard, state } = self
                .conn
                .process_tls_records(&mut self.incoming[self.start..self.received]);
            let next = match state {
                Err(e) => {
                    self.send_alert(discard);
                    return Err(tls_error(e));
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        self.early.extend_from_slice(record.payload);
                    }
                    Next::Process
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let required = match encode.encode(&mut []) {
                        Err(EncodeError::InsufficientSize(size)) => size.required_size,
                        other => other.map_err(io::Error::other)?,
                    };
                    let start = self.outgoing.len();
                    self.outgoing.resize(start + required, 0);
                    let n = encode
                        .encode(&mut self.outgoing[start..])
                        .map_err(io::Error::other)?;
                    self.outgoing.truncate(start + n);
                    Next::Process
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    self.sock.tcp.write_all(&self.outgoing)?;
                    self.outgoing.clear();
                    transmit.done();
                    Next::Process
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Next::Process
                }
                Ok(ConnectionState::BlockedHandshake) => Next::Receive,
                Ok(ConnectionState::WriteTraffic(_)) => Next::Traffic,
                Ok(ConnectionState::Closed) => return Err(io::ErrorKind::BrokenPipe.into()),
                // Early data is off (rustls's default), so nothing else is expected.
                Ok(other) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected TLS state {other:?}"),
                    ))
                }
            };
            self.start += discard;
            let done = match next {
                Next::Process => continue,
                Next::Receive => false,
                // A TLS 1.3 server may send before the client's Finished: the handshake (the
                // client's certificate above all) is not done until that is read.
                Next::Traffic => !self.conn.is_handshaking(),
            };
            if !self.outgoing.is_empty() {
                self.sock.tcp.write_all(&self.outgoing)?;
                self.outgoing.clear();
            }
            return Ok(done);
        }
    }

    /// After an error, send the alert rustls queued to tell the peer why (best effort). The
    /// error's discard must be done first: rustls's deframer keeps positions in the buffer.
    fn send_alert(&mut self, discard: usize) {
        self.start += discard;
        let status = self
            .conn
            .process_tls_records(&mut self.incoming[self.start..self.received]);
        // The queued alert comes first, before anything received is looked at.
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
            let mut record = [0u8; 64];
            if let Ok(n) = encode.encode(&mut record) {
                self.outgoing.extend_from_slice(&record[..n]);
            }
        }
        let _ = self.sock.tcp.write_all(&self.outgoing);
        self.outgoing.clear();
    }
}

impl ServerTls {
    fn accept(
        tcp: TcpStream,
        config: &Arc<ServerConfig>,
        due: Option<Instant>,
    ) -> Result<ServerTls, Handshake> {
        let conn = UnbufferedServerConnection::new(Arc::clone(config)).map_err(Handshake::Tls)?;
        let mut handshake = Handshaking {
            conn,
            sock: Socket::new(tcp, due),
            incoming: vec![0; SERVER_INCOMING],
            start: 0,
            received: 0,
            early: Vec::new(),
            outgoing: Vec::new(),
            peer_closed: false,
        };
        handshake.run().map_err(Handshake::from)?;
        let Handshaking {
            conn,
            mut sock,
            mut incoming,
            start,
            received,
            early,
            peer_closed,
            ..
        } = handshake;
        // Every record rustls was given is processed and every record it made is sent, as
        // the handover asks.
        let (secrets, kernel) = conn
            .dangerous_into_kernel_connection()
            .map_err(Handshake::Tls)?;
        let records = RecordLayer::from_rustls(secrets, kernel)
            .map_err(|refused| Handshake::Tls(rustls::Error::General(refused.why)))?;
        // The early plaintext, then the start of the next record, at the buffer's front.
        let kept = early.len() + received - start;
        if kept > incoming.len() {
            incoming.resize(kept, 0);
        }
        incoming.copy_within(start..received, early.len());
        incoming[..early.len()].copy_from_slice(&early);
        // The caller sets the socket's timeouts for what follows.
        sock.due = None;
        Ok(ServerTls {
            sock,
            records,
            start: early.len(),
            received: kept,
            plain: 0..early.len(),
            incoming,
            outgoing: Vec::new(),
            peer_closed,
        })
    }

    /// Act on what a record held: application data is `Some` of its length.
    fn opened(&mut self, opened: Result<Opened, Refused>) -> io::Result<Option<usize>> {
        match opened {
            Ok(Opened::Data(n)) => Ok(Some(n)),
            Ok(Opened::Nothing) => Ok(None),
            Ok(Opened::Closed) => {
                self.peer_closed = true;
                Ok(None)
            }
            Err(refused) => Err(self.fail(refused)),
        }
    }

    /// Open the record at the front of our buffer in place, if it is all there.
    fn open_buffered(&mut self) -> io::Result<bool> {
        let len = match whole_record(&self.records, &self.incoming[self.start..self.received]) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(false),
            Err(refused) => return Err(self.fail(refused)),
        };
        let start = self.start;
        let opened = self
            .records
            .open(&mut self.incoming, start, start, len, &mut self.outgoing);
        if let Some(n) = self.opened(opened)? {
            self.plain = start..start + n;
        }
        self.start += len;
        self.send_outgoing()?;
        Ok(true)
    }

    /// Receive into `buf` and open the records there, their plaintext moved to its front;
    /// `buf` holds a whole record. What was left of one in our buffer goes first. Room is kept
    /// to finish the last record received in `buf`: a record left over goes back to our
    /// buffer and is copied twice (a quarter of the bytes on 256 KiB PDUs).
    fn read_direct(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let carried = self.received - self.start;
        let first = if buf.len() >= carried + 2 * MAX_RECORD {
            buf.len() - MAX_RECORD
        } else {
            buf.len()
        };
        // Received first, so an error (a timeout) leaves the carried bytes where they were.
        let mut filled = carried + self.sock.read_some(&mut buf[carried..first])?;
        buf[..carried].copy_from_slice(&self.incoming[self.start..self.received]);
        let (mut read, mut written) = (0, 0);
        let mut failed = None;
        while !self.peer_closed {
            let len = match self.records.record_len(&buf[read..filled]) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(refused) => return Err(self.fail(refused)),
            };
            if read + len > filled {
                if read + len > buf.len() {
                    break;
                }
                match self.sock.read_some(&mut buf[filled..read + len]) {
                    Ok(n) => filled += n,
                    Err(e) => failed = Some(e),
                }
                if failed.is_some() {
                    break;
                }
                continue;
            }
            let opened = self
                .records
                .open(buf, written, read, len, &mut self.outgoing);
            read += len;
            if let Some(n) = self.opened(opened)? {
                written += n;
            }
        }
        if self.peer_closed {
            // Nothing after close_notify counts.
            read = filled;
        }
        let rest = filled - read;
        self.incoming[..rest].copy_from_slice(&buf[read..filled]);
        (self.start, self.received) = (0, rest);
        self.send_outgoing()?;
        match failed {
            // The plaintext goes to the reader; the next read meets the error again.
            Some(e) if written == 0 => Err(e),
            _ => Ok(written),
        }
    }

    /// Receive more of the record at the front of our buffer, and nothing past it: records
    /// received ahead into our buffer would be copied out, where a large read takes them
    /// straight.
    fn receive(&mut self) -> io::Result<()> {
        let want = match self
            .records
            .record_len(&self.incoming[self.start..self.received])
        {
            Ok(Some(len)) => len,
            Ok(None) => MAX_RECORD,
            Err(refused) => return Err(self.fail(refused)),
        };
        if self.incoming.len() - self.start < want {
            self.incoming.copy_within(self.start..self.received, 0);
            (self.start, self.received) = (0, self.received - self.start);
        }
        self.received += self
            .sock
            .read_some(&mut self.incoming[self.received..self.start + want])?;
        Ok(())
    }

    fn send_outgoing(&mut self) -> io::Result<()> {
        if !self.outgoing.is_empty() {
            self.sock.tcp.write_all(&self.outgoing)?;
            self.outgoing.clear();
        }
        Ok(())
    }

    /// The connection cannot go on: tell the peer why (best effort) and give the error.
    fn fail(&mut self, refused: Refused) -> io::Error {
        if let Some(alert) = refused.alert {
            self.outgoing.clear();
            if self.records.seal_alert(alert, &mut self.outgoing).is_ok() {
                let _ = self.send_outgoing();
            }
        }
        io::Error::new(io::ErrorKind::InvalidData, refused.why)
    }
}

impl Read for ServerTls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.plain.is_empty() {
                let n = self.plain.len().min(buf.len());
                buf[..n].copy_from_slice(&self.incoming[self.plain.start..][..n]);
                self.plain.start += n;
                return Ok(n);
            }
            if buf.is_empty() || self.peer_closed {
                return Ok(0);
            }
            if self.open_buffered()? {
                continue;
            }
            if buf.len() >= MAX_RECORD {
                match self.read_direct(buf)? {
                    0 => continue,
                    n => return Ok(n),
                }
            }
            self.receive()?;
        }
    }
}

impl Write for ServerTls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Err(refused) = self.records.seal_data(buf, &mut self.outgoing) {
            return Err(self.fail(refused));
        }
        self.send_outgoing()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Tls for ServerTls {
    fn socket(&self) -> &Socket {
        &self.sock
    }

    fn socket_mut(&mut self) -> &mut Socket {
        &mut self.sock
    }

    fn close_notify(&mut self) -> io::Result<()> {
        if let Err(refused) = self.records.seal_close_notify(&mut self.outgoing) {
            return Err(self.fail(refused));
        }
        self.send_outgoing()
    }
}

/// One association's byte stream: plain TCP, or TLS over TCP with `T` our side's TLS
/// connection. Reads and writes of the plain variant go straight to the socket.
pub enum Stream<T> {
    Plain(Socket),
    Tls(Box<T>),
}

pub type ServerStream = Stream<ServerTls>;
pub type ClientStream = Stream<ClientTls>;

impl<T: Tls> Stream<T> {
    pub fn plain(tcp: TcpStream) -> Stream<T> {
        Stream::Plain(Socket::new(tcp, None))
    }

    /// The TCP socket under it, for its options.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(socket) => &socket.tcp,
            Stream::Tls(tls) => &tls.socket().tcp,
        }
    }

    /// Let the reads that follow wait until `due` at most (None: no limit).
    pub fn set_due(&mut self, due: Option<Instant>) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.set_due(due),
            Stream::Tls(tls) => tls.socket_mut().set_due(due),
        }
    }

    /// End our sending side: a TLS close_notify alert, then a TCP half-close.
    pub fn close_write(&mut self) -> io::Result<()> {
        if let Stream::Tls(tls) = self {
            tls.close_notify()?;
        }
        self.tcp().shutdown(Shutdown::Write)
    }

    /// Read and discard what the peer still sends, up to `limit` bytes, until it closes or a
    /// read fails (e.g. its timeout): lets the peer read our last PDU before we close.
    pub fn drain(&mut self, limit: usize) {
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < limit {
            match self.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    }
}

impl ServerStream {
    /// Accept a TLS connection on `tcp`, the handshake finished by `due`.
    pub fn accept(
        tcp: TcpStream,
        config: &Arc<ServerConfig>,
        due: Option<Instant>,
    ) -> Result<Self, Handshake> {
        ServerTls::accept(tcp, config, due).map(|tls| Stream::Tls(Box::new(tls)))
    }
}

impl ClientStream {
    /// Open TLS on `tcp` to `host`, whose certificate must name it (unless the configuration
    /// says otherwise), every handshake read done by `due`.
    pub fn connect(
        tcp: TcpStream,
        config: &Arc<ClientConfig>,
        host: &str,
        due: Option<Instant>,
    ) -> Result<Self, Handshake> {
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            Handshake::Tls(rustls::Error::General(format!("bad host name {host:?}")))
        })?;
        let mut conn = ClientConnection::new(Arc::clone(config), name).map_err(Handshake::Tls)?;
        let mut sock = Buffered(BufReader::with_capacity(
            SOCKET_READ_AHEAD,
            Socket::new(tcp, due),
        ));
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).map_err(Handshake::from)?;
        }
        // The caller sets the socket's timeouts for what follows.
        sock.0.get_mut().due = None;
        Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, sock))))
    }
}

impl<T: Tls> Read for Stream<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl<T: Tls> Write for Stream<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    /// Sends what TLS still holds; nothing to do for plain TCP.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(tls) => tls.flush(),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.tcp.write_all(buf),
            Stream::Tls(tls) => {
                tls.write_all(buf)?;
                tls.flush()
            }
        }
    }
}

/// Why a TLS handshake failed.
#[derive(Debug)]
pub enum Handshake {
    /// The peer sent something TLS refuses, or we did (e.g. its certificate is not trusted).
    Tls(rustls::Error),
    /// No complete handshake by the deadline.
    TimedOut,
    /// The connection failed or closed.
    Io(io::Error),
}

impl From<io::Error> for Handshake {
    fn from(e: io::Error) -> Handshake {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            return Handshake::TimedOut;
        }
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => Handshake::Tls(tls.clone()),
            None => Handshake::Io(e),
        }
    }
}

impl fmt::Display for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Handshake::Tls(rustls::Error::InvalidMessage(_)) => {
                f.write_str("the peer does not speak TLS (plain DICOM on the TLS port?)")
            }
            Handshake::Tls(rustls::Error::InvalidCertificate(why)) => {
                write!(f, "certificate refused: {}", certificate_words(why))
            }
            Handshake::Tls(rustls::Error::NoCertificatesPresented) => {
                f.write_str("the client sent no certificate, and one is required")
            }
            Handshake::Tls(rustls::Error::AlertReceived(alert)) => {
                write!(f, "the peer refused the handshake (alert {alert:?})")
            }
            Handshake::Tls(e) => write!(f, "{e}"),
            Handshake::TimedOut => f.write_str("no complete handshake within acse_timeout"),
            Handshake::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                f.write_str("the peer closed the connection during the handshake")
            }
            Handshake::Io(e) => write!(f, "{e}"),
        }
    }
}

fn certificate_words(why: &CertificateError) -> String {
    match why {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".into(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not valid yet".into()
        }
        CertificateError::UnknownIssuer => "not issued by a trusted CA".into(),
        CertificateError::BadSignature => "bad signature".into(),
        CertificateError::Revoked => "revoked".into(),
        CertificateError::UnknownRevocationStatus => {
            "of unknown revocation status (no CRL of its issuer in the CRL file)".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "issued for another host name".into()
        }
        other => format!("{other:?}"),
    }
}

/// For the SCU, whose wait is its `timeout`.
impl From<Handshake> for Error {
    fn from(e: Handshake) -> Error {
        let why = match e {
            Handshake::TimedOut => "no answer in time".into(),
            e => e.to_string(),
        };
        Error::AssociationAborted(format!("TLS handshake failed: {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_files_are_named() {
        let files = ServerFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            ca: None,
            crl: None,
        };
        let message = server_config(&files).unwrap_err().to_string();
        assert!(
            message.contains("certificate file /nonexistent/cert.pem"),
            "{message}"
        );
        let files = ClientFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            cert_and_key: None,
            verify_hostname: true,
        };
        let message = client_config(&files).unwrap_err().to_string();
        assert!(message.contains("CA file /nonexistent/ca.pem"), "{message}");
    }

    #[test]
    fn handshake_failures_are_told_in_words() {
        let text = |e: Handshake| e.to_string();
        assert!(text(Handshake::TimedOut).contains("acse_timeout"));
        let bad = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert!(text(Handshake::Tls(bad)).contains("does not speak TLS"));
        let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
        assert_eq!(
            text(Handshake::Tls(expired)),
            "certificate refused: expired"
        );
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert!(text(Handshake::from(eof)).contains("closed the connection"));
        let wrapped = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        assert!(text(Handshake::from(wrapped)).contains("no certificate"));
    }

    #[test]
    fn reloaded_files_serve_new_handshakes_and_unusable_ones_change_nothing() {
        let dir = std::env::temp_dir().join(format!("tls-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = certificates(&dir);
        let credentials = ServerCredentials::load(files.clone()).unwrap();
        let first = credentials.current();
        // The test certificate: CN=s, for two days from now.
        let served = credentials.certificate();
        assert_eq!(served.subject, "CN=s");
        let now = UnixTime::now().as_secs() as i64;
        assert!((now + 86_400..=now + 2 * 86_400 + 60).contains(&served.not_after));
        // A renewal half-written when the reload comes: refused, the old one kept.
        let renewed = std::fs::read(&files.cert).unwrap();
        std::fs::write(&files.cert, &renewed[..renewed.len() / 2]).unwrap();
        let message = credentials.reload().unwrap_err().to_string();
        assert!(message.contains(files.cert.to_str().unwrap()), "{message}");
        assert!(Arc::ptr_eq(&first, &credentials.current()));
        std::fs::write(&files.cert, &renewed).unwrap();
        credentials.reload().unwrap();
        assert!(!Arc::ptr_eq(&first, &credentials.current()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A CA and a certificate for 127.0.0.1 it issued, made by the `openssl` command in `dir`.
    fn certificates(dir: &Path) -> ServerFiles {
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl");
            assert!(out.status.success(), "openssl {args:?}");
        };
        let p = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        let [ca, ca_key, cert, key, csr, ext] =
            ["ca", "ca_key", "cert", "key", "csr", "ext"].map(p);
        let ec = "ec_paramgen_curve:P-256";
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            ec,
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-subj",
            "/CN=test CA",
            "-days",
            "2",
        ]);
        openssl(&[
            "req", "-newkey", "ec", "-pkeyopt", ec, "-nodes", "-keyout", &key, "-out", &csr,
            "-subj", "/CN=s",
        ]);
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509", "-req", "-in", &csr, "-CA", &ca, "-CAkey", &ca_key, "-out", &cert, "-days",
            "2", "-extfile", &ext,
        ]);
        ServerFiles {
            cert: cert.into(),
            key: key.into(),
            ca: Some(ca.into()),
            crl: None,
        }
    }

    #[test]
    fn a_crl_file_needs_its_ca_file_and_crls_in_it() {
        let dir = std::env::temp_dir().join(format!("tls-crl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = certificates(&dir);
        let alone = ServerFiles {
            ca: None,
            crl: files.ca.clone(),
            ..files.clone()
        };
        let message = server_config(&alone).unwrap_err().to_string();
        assert!(
            message.contains("a CRL file needs the CA file"),
            "{message}"
        );
        // A certificate where the CRLs should be.
        let ca = files.ca.clone().unwrap();
        let wrong = ServerFiles {
            crl: Some(ca.clone()),
            ..files
        };
        let message = server_config(&wrong).unwrap_err().to_string();
        let expected = format!("TLS CRL file {}: no PEM X509 CRL in it", ca.display());
        assert!(message.contains(&expected), "{message}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The server gives back exactly the bytes sent, whatever the sizes of the reads (records
    /// split across reads, several in one, straight into the reader's buffer or through ours),
    /// in every version and AEAD it offers, through the client's KeyUpdates (TLS 1.3); it ends
    /// at the peer's close_notify, and its writes (under its next key, after answering the
    /// KeyUpdate) reach the client.
    #[test]
    fn server_reads_every_byte_in_any_read_size_and_answers() {
        let dir = std::env::temp_dir().join(format!("tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = certificates(&dir);
        let (server, _) = server_config(&ServerFiles {
            ca: None,
            ..files.clone()
        })
        .unwrap();
        let roots = roots(files.ca.as_ref().unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        use rustls::crypto::ring::cipher_suite::*;
        let tls13 = &rustls::version::TLS13;
        let tls12 = &rustls::version::TLS12;
        for (version, suite) in [
            (tls13, TLS13_AES_128_GCM_SHA256),
            (tls13, TLS13_AES_256_GCM_SHA384),
            (tls13, TLS13_CHACHA20_POLY1305_SHA256),
            (tls12, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
            (tls12, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
        ] {
            let provider = CryptoProvider {
                cipher_suites: vec![suite],
                ..ring::default_provider()
            };
            let client = ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(Arc::clone(&roots))
                .with_no_client_auth();
            let tls13 = std::ptr::eq(version, tls13);
            round_trip(Arc::new(client), &server, tls13);
        }
    }

    fn round_trip(client: Arc<ClientConfig>, server: &Arc<ServerConfig>, key_updates: bool) {
        let sent: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let to_send = sent.clone();
        let sender = std::thread::spawn(move || {
            let tcp = TcpStream::connect(address).unwrap();
            let mut stream = ClientStream::connect(tcp, &client, "127.0.0.1", None).unwrap();
            for (i, chunk) in to_send.chunks(300_001).enumerate() {
                if let (true, 3 | 6, Stream::Tls(tls)) = (key_updates, i, &mut stream) {
                    tls.conn.refresh_traffic_keys().unwrap();
                }
                stream.write_all(chunk).unwrap();
            }
            stream.close_write().unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).unwrap();
            answer
        });
        let (tcp, _) = listener.accept().unwrap();
        let due = Some(Instant::now() + std::time::Duration::from_secs(30));
        let mut stream = ServerStream::accept(tcp, server, due).unwrap();
        let mut got = Vec::new();
        let sizes = [1, 7, 4096, 16_000, 16_384, 70_000, 300_000, 18_437, 40_000];
        for size in sizes.iter().cycle() {
            let mut buf = vec![0u8; *size];
            match stream.read(&mut buf).unwrap() {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        assert!(got == sent, "{} bytes of {} back", got.len(), sent.len());
        stream.write_all(b"thanks").unwrap();
        stream.close_write().unwrap();
        assert_eq!(sender.join().unwrap(), b"thanks");
    }

    /// The largest handshake message rustls takes (64 KiB, over five records) fits the
    /// server's buffer: it is parsed and refused for what it says, not for its size.
    #[test]
    fn the_largest_handshake_message_fits_the_server_buffer() {
        let dir = std::env::temp_dir().join(format!("tls-unit-large-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = certificates(&dir);
        let (server, _) = server_config(&ServerFiles { ca: None, ..files }).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // A ClientHello of 0xffff bytes, all zeros after its header.
        let mut message = vec![1, 0, 0xff, 0xff];
        message.resize(4 + 0xffff, 0);
        let mut records = Vec::new();
        for fragment in message.chunks(1 << 14) {
            records.extend_from_slice(&[0x16, 3, 3]);
            records.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
            records.extend_from_slice(fragment);
        }
        assert!(records.len() > 64 * 1024 && records.len() < SERVER_INCOMING);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let mut tcp = TcpStream::connect(address).unwrap();
            tcp.write_all(&records).unwrap();
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest);
        });
        let (tcp, _) = listener.accept().unwrap();
        let due = Some(Instant::now() + std::time::Duration::from_secs(30));
        match ServerStream::accept(tcp, &server, due) {
            Err(Handshake::Tls(rustls::Error::InvalidMessage(why))) => {
                assert_ne!(why, rustls::InvalidMessage::MessageTooLarge)
            }
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("a ClientHello of zeros was accepted"),
        }
        peer.join().unwrap();
    }
}
