//! The TLS record layer of the server once its handshake is done: RFC 8446 §5.2 for TLS 1.3,
//! RFC 5246 §6.2.3.3 with the nonces of RFC 5288 §3 (AES-GCM) and RFC 7905 §2 (ChaCha20) for
//! TLS 1.2. rustls makes the handshake and the keys, and hands them over with its kernel
//! connection API (which also computes the keys of each TLS 1.3 KeyUpdate); ring's AEADs, the
//! same that rustls uses, seal and open the records.
//!
//! Why not rustls's own record layer: rustls 0.23 decrypts each record into a `Vec` of its
//! own, which the receiver then copies out again, two copies of every byte received (8% of a
//! receiver's CPU on 200 MB instances). Here a record is opened where it lies and its
//! plaintext lands where the PDU reader wants it, over the headers and tags before it.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion, SupportedCipherSuite};

/// A record header: content type, legacy version, length.
const HEADER: usize = 5;
const TAG: usize = 16;
/// The explicit part of a TLS 1.2 AES-GCM nonce, sent before each record's ciphertext.
const EXPLICIT_NONCE: usize = 8;
/// The largest plaintext of a record (RFC 8446 §5.1, RFC 5246 §6.2.1).
const MAX_PLAINTEXT: usize = 1 << 14;
/// The largest record body a peer may send: plaintext and 256 bytes of expansion in TLS 1.3
/// (RFC 8446 §5.2), 2,048 in TLS 1.2 (RFC 5246 §6.2.3).
const MAX_BODY_TLS13: usize = MAX_PLAINTEXT + 256;
const MAX_BODY_TLS12: usize = MAX_PLAINTEXT + 2048;
/// The largest record on the wire.
pub const MAX_RECORD: usize = HEADER + MAX_BODY_TLS12;

const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const KEY_UPDATE: u8 = 24;
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;

/// The alerts we answer a bad record with (RFC 8446 §6.2).
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const DECODE_ERROR: u8 = 50;
const INTERNAL_ERROR: u8 = 80;

/// What a record held.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// This many bytes of application data, at the start of the space the record was opened
    /// into.
    Data(usize),
    /// The peer's close_notify: it sends nothing more.
    Closed,
    /// Nothing for the reader: a KeyUpdate, or a user_canceled warning.
    Nothing,
}

/// Why the connection cannot go on: the alert to tell the peer (None when the peer ended it
/// with an alert of its own) and the reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub alert: Option<u8>,
    pub why: String,
}

fn refused(alert: u8, why: impl Into<String>) -> Refused {
    Refused {
        alert: Some(alert),
        why: why.into(),
    }
}

/// One direction's key, IV and record sequence number.
struct Keys {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl Keys {
    fn new(secrets: ConnectionTrafficSecrets, seq: u64) -> Result<Keys, Refused> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(refused(INTERNAL_ERROR, "a TLS cipher we cannot seal with")),
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| refused(INTERNAL_ERROR, "a TLS key of the wrong length"))?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| refused(INTERNAL_ERROR, "a TLS IV of the wrong length"))?;
        Ok(Keys {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The nonce of the next record: the IV with the sequence number XORed into its last 8
    /// bytes. RFC 8446 §5.3 and RFC 7905 §2 say so; for TLS 1.2's AES-GCM it is rustls's
    /// choice of explicit nonce too, unique per record as RFC 5288 §3 asks.
    fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    fn advance(&mut self) -> Result<(), Refused> {
        self.seq = self.seq.checked_add(1).ok_or_else(|| {
            refused(
                INTERNAL_ERROR,
                "the TLS record sequence number is exhausted",
            )
        })?;
        Ok(())
    }
}

/// TLS 1.2's additional data: sequence number, content type, version, plaintext length.
fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9..11].copy_from_slice(&[3, 3]);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

/// Where the keys after a TLS 1.3 KeyUpdate come from: rustls's key schedule, for a
/// connection; fixed keys, for the fuzz target.
pub trait KeySchedule {
    /// The peer's next key and its first sequence number.
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
    /// Our next key and its first sequence number.
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
}

impl KeySchedule for KernelConnection<ServerConnectionData> {
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_rx_secret()
    }

    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_tx_secret()
    }
}

/// The record layer of one connection.
pub struct RecordLayer<K = KernelConnection<ServerConnectionData>> {
    schedule: K,
    tls13: bool,
    /// TLS 1.2 AES-GCM: each record carries its nonce's explicit part.
    explicit_nonce: bool,
    rx: Keys,
    tx: Keys,
    /// Records sealed with one key at most (the suite's confidentiality limit): TLS 1.3 then
    /// updates its sending key, TLS 1.2 ends the connection.
    tx_limit: u64,
}

impl RecordLayer {
    /// The record layer of a connection rustls has made, with the keys it extracted.
    pub fn from_rustls(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Result<RecordLayer, Refused> {
        let tls13 = kernel.protocol_version() == ProtocolVersion::TLSv1_3;
        let tx_limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(suite) => suite.common.confidentiality_limit,
            SupportedCipherSuite::Tls12(suite) => suite.common.confidentiality_limit,
        };
        RecordLayer::new(secrets, tls13, tx_limit, kernel)
    }
}

impl<K: KeySchedule> RecordLayer<K> {
    pub fn new(
        secrets: ExtractedSecrets,
        tls13: bool,
        tx_limit: u64,
        schedule: K,
    ) -> Result<RecordLayer<K>, Refused> {
        let explicit_nonce = !tls13
            && !matches!(
                secrets.rx.1,
                ConnectionTrafficSecrets::Chacha20Poly1305 { .. }
            );
        Ok(RecordLayer {
            tls13,
            explicit_nonce,
            rx: Keys::new(secrets.rx.1, secrets.rx.0)?,
            tx: Keys::new(secrets.tx.1, secrets.tx.0)?,
            tx_limit,
            schedule,
        })
    }

    /// The length of the record starting `bytes` (header included), once its header is in;
    /// refused when it is longer than a record may be.
    pub fn record_len(&self, bytes: &[u8]) -> Result<Option<usize>, Refused> {
        let Some(header) = bytes.get(..HEADER) else {
            return Ok(None);
        };
        let body = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let max = if self.tls13 {
            MAX_BODY_TLS13
        } else {
            MAX_BODY_TLS12
        };
        if body > max {
            return Err(refused(
                RECORD_OVERFLOW,
                format!("a TLS record of {body} bytes, more than the {max} allowed"),
            ));
        }
        Ok(Some(HEADER + body))
    }

    /// Open the record of `len` bytes (as [`record_len`](Self::record_len) gave) at
    /// `buf[src..]`, its plaintext written from `buf[dst..]` (`dst <= src`). Records the peer
    /// must be answered (our KeyUpdate) are appended to `out`.
    pub fn open(
        &mut self,
        buf: &mut [u8],
        dst: usize,
        src: usize,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<Opened, Refused> {
        let header: [u8; HEADER] = buf[src..src + HEADER].try_into().expect("a header");
        let outer = header[0];
        let body = src + HEADER..src + len;
        let (typ, plaintext) = if self.tls13 {
            // Every record after the handshake is application data on the outside (§5.2).
            if outer != APPLICATION_DATA {
                return Err(refused(
                    UNEXPECTED_MESSAGE,
                    format!("a TLS 1.3 record of content type {outer} after the handshake"),
                ));
            }
            if body.len() < TAG + 1 {
                return Err(refused(DECODE_ERROR, "a TLS record shorter than its tag"));
            }
            let nonce = Nonce::assume_unique_for_key(self.rx.nonce());
            let opened = self
                .rx
                .key
                .open_within(
                    nonce,
                    Aad::from(header),
                    &mut buf[dst..body.end],
                    body.start - dst..,
                )
                .map_err(|_| refused(BAD_RECORD_MAC, "a TLS record that does not decrypt"))?;
            // Padding included, no more than a record's plaintext and its type (§5.4).
            if opened.len() > MAX_PLAINTEXT + 1 {
                return Err(refused(
                    RECORD_OVERFLOW,
                    format!("a TLS record of {} bytes of plaintext", opened.len()),
                ));
            }
            // The content type is the last byte that is not zero padding.
            let Some(end) = opened.iter().rposition(|&b| b != 0) else {
                return Err(refused(
                    UNEXPECTED_MESSAGE,
                    "a TLS record with no content type",
                ));
            };
            (opened[end], end)
        } else {
            if ![ALERT, HANDSHAKE, APPLICATION_DATA].contains(&outer) {
                return Err(refused(
                    UNEXPECTED_MESSAGE,
                    format!("a TLS record of content type {outer} after the handshake"),
                ));
            }
            let explicit = if self.explicit_nonce {
                EXPLICIT_NONCE
            } else {
                0
            };
            if body.len() < explicit + TAG {
                return Err(refused(DECODE_ERROR, "a TLS record shorter than its tag"));
            }
            let mut nonce = self.rx.nonce();
            if self.explicit_nonce {
                nonce[4..].copy_from_slice(&buf[body.start..body.start + EXPLICIT_NONCE]);
            }
            let ciphertext = body.start + explicit;
            let aad = tls12_aad(self.rx.seq, outer, body.end - ciphertext - TAG);
            let opened = self
                .rx
                .key
                .open_within(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut buf[dst..body.end],
                    ciphertext - dst..,
                )
                .map_err(|_| refused(BAD_RECORD_MAC, "a TLS record that does not decrypt"))?;
            (outer, opened.len())
        };
        self.rx.advance()?;
        if plaintext > MAX_PLAINTEXT {
            return Err(refused(
                RECORD_OVERFLOW,
                format!("a TLS record of {plaintext} bytes of plaintext"),
            ));
        }
        let content = &buf[dst..dst + plaintext];
        match typ {
            APPLICATION_DATA => Ok(Opened::Data(plaintext)),
            ALERT => match *content {
                [_, CLOSE_NOTIFY] => Ok(Opened::Closed),
                [_, USER_CANCELED] => Ok(Opened::Nothing),
                [_, description] => Err(Refused {
                    alert: None,
                    why: format!("the peer sent TLS alert {description}"),
                }),
                _ => Err(refused(DECODE_ERROR, "a TLS alert that is not 2 bytes")),
            },
            // A KeyUpdate, alone in its record: keys must change at a record boundary
            // (RFC 8446 §5.1). Renegotiation (TLS 1.2) is refused, as rustls refuses it.
            HANDSHAKE if self.tls13 => match *content {
                [KEY_UPDATE, 0, 0, 1, request @ (0 | 1)] => {
                    self.key_update(request == 1, out)?;
                    Ok(Opened::Nothing)
                }
                [kind, ..] => Err(refused(
                    UNEXPECTED_MESSAGE,
                    format!("a TLS handshake message of type {kind} after the handshake"),
                )),
                [] => Err(refused(DECODE_ERROR, "an empty TLS handshake record")),
            },
            HANDSHAKE => Err(refused(
                UNEXPECTED_MESSAGE,
                "the peer asked to renegotiate TLS 1.2, which is not supported",
            )),
            other => Err(refused(
                UNEXPECTED_MESSAGE,
                format!("a TLS record of content type {other} after the handshake"),
            )),
        }
    }

    /// The peer's KeyUpdate (RFC 8446 §4.6.3): its records use the next key from now on, and
    /// when it asks, ours do too, after a KeyUpdate of our own sealed with the old one.
    fn key_update(&mut self, requested: bool, out: &mut Vec<u8>) -> Result<(), Refused> {
        let (seq, secrets) = self
            .schedule
            .next_rx()
            .map_err(|e| refused(INTERNAL_ERROR, format!("TLS KeyUpdate: {e}")))?;
        self.rx = Keys::new(secrets, seq)?;
        if requested {
            self.update_tx(false, out)?;
        }
        Ok(())
    }

    /// Send a KeyUpdate (asking for the peer's, or not), then seal with the next key.
    pub fn update_tx(&mut self, request: bool, out: &mut Vec<u8>) -> Result<(), Refused> {
        self.seal_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, u8::from(request)], out)?;
        let (seq, secrets) = self
            .schedule
            .next_tx()
            .map_err(|e| refused(INTERNAL_ERROR, format!("TLS KeyUpdate: {e}")))?;
        self.tx = Keys::new(secrets, seq)?;
        Ok(())
    }

    /// Seal `data` as records of content type `typ`, appended to `out`.
    pub fn seal(&mut self, typ: u8, data: &[u8], out: &mut Vec<u8>) -> Result<(), Refused> {
        for fragment in data.chunks(MAX_PLAINTEXT) {
            if self.tx.seq >= self.tx_limit {
                if !self.tls13 {
                    return Err(refused(
                        INTERNAL_ERROR,
                        "the TLS 1.2 key reached its limit of records",
                    ));
                }
                self.update_tx(false, out)?;
            }
            self.seal_record(typ, fragment, out)?;
        }
        Ok(())
    }

    /// Seal application data.
    pub fn seal_data(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Refused> {
        self.seal(APPLICATION_DATA, data, out)
    }

    /// Seal an alert: close_notify (a warning) or why we end the connection (fatal).
    pub fn seal_alert(&mut self, description: u8, out: &mut Vec<u8>) -> Result<(), Refused> {
        let level = if description == CLOSE_NOTIFY { 1 } else { 2 };
        self.seal(ALERT, &[level, description], out)
    }

    pub fn seal_close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), Refused> {
        self.seal_alert(CLOSE_NOTIFY, out)
    }

    fn seal_record(&mut self, typ: u8, fragment: &[u8], out: &mut Vec<u8>) -> Result<(), Refused> {
        let nonce = self.tx.nonce();
        let start = out.len();
        let sealed = if self.tls13 {
            let len = fragment.len() + 1 + TAG;
            out.extend_from_slice(&[APPLICATION_DATA, 3, 3]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
            let header: [u8; HEADER] = out[start..].try_into().expect("a header");
            out.extend_from_slice(fragment);
            out.push(typ);
            let nonce = Nonce::assume_unique_for_key(nonce);
            self.tx.key.seal_in_place_separate_tag(
                nonce,
                Aad::from(header),
                &mut out[start + HEADER..],
            )
        } else {
            let explicit = if self.explicit_nonce {
                EXPLICIT_NONCE
            } else {
                0
            };
            let len = explicit + fragment.len() + TAG;
            out.extend_from_slice(&[typ, 3, 3]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
            if self.explicit_nonce {
                out.extend_from_slice(&nonce[4..]);
            }
            out.extend_from_slice(fragment);
            let aad = tls12_aad(self.tx.seq, typ, fragment.len());
            let nonce = Nonce::assume_unique_for_key(nonce);
            self.tx.key.seal_in_place_separate_tag(
                nonce,
                Aad::from(aad),
                &mut out[start + HEADER + explicit..],
            )
        };
        let tag =
            sealed.map_err(|_| refused(INTERNAL_ERROR, "a TLS record that cannot be sealed"))?;
        out.extend_from_slice(tag.as_ref());
        self.tx.advance()
    }
}

/// Fixed keys for the fuzz target and the tests: the `n`th key of either direction is `n`
/// repeated, so two layers made as each other's mirror stay in step through KeyUpdates.
#[cfg(any(test, fuzzing))]
pub mod fixed {
    use rustls::crypto::cipher::{AeadKey, Iv};
    use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

    use super::{KeySchedule, RecordLayer, Refused};

    /// Which AEAD and version the layers use.
    #[derive(Debug, Clone, Copy)]
    pub enum Suite {
        Tls13Aes256Gcm,
        Tls12Aes256Gcm,
        Tls12Chacha20,
    }

    impl Suite {
        pub const ALL: [Suite; 3] = [
            Suite::Tls13Aes256Gcm,
            Suite::Tls12Aes256Gcm,
            Suite::Tls12Chacha20,
        ];

        fn secrets(self, n: u8) -> ConnectionTrafficSecrets {
            let (key, iv) = (AeadKey::from([n; 32]), Iv::new([n ^ 0x5a; 12]));
            match self {
                Suite::Tls13Aes256Gcm | Suite::Tls12Aes256Gcm => {
                    ConnectionTrafficSecrets::Aes256Gcm { key, iv }
                }
                Suite::Tls12Chacha20 => ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv },
            }
        }
    }

    pub struct Fixed {
        suite: Suite,
        rx: u8,
        tx: u8,
    }

    impl KeySchedule for Fixed {
        fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
            self.rx = self.rx.wrapping_add(1);
            Ok((0, self.suite.secrets(self.rx)))
        }

        fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
            self.tx = self.tx.wrapping_add(1);
            Ok((0, self.suite.secrets(self.tx)))
        }
    }

    /// Our layer and the peer's: what one seals the other opens.
    pub fn pair(
        suite: Suite,
        tx_limit: u64,
    ) -> Result<(RecordLayer<Fixed>, RecordLayer<Fixed>), Refused> {
        let tls13 = matches!(suite, Suite::Tls13Aes256Gcm);
        let layer = |rx: u8, tx: u8| {
            let secrets = ExtractedSecrets {
                rx: (0, suite.secrets(rx)),
                tx: (0, suite.secrets(tx)),
            };
            RecordLayer::new(
                secrets,
                tls13,
                tx_limit,
                Fixed {
                    suite,
                    rx: 100,
                    tx: 100,
                },
            )
        };
        Ok((layer(1, 2)?, layer(2, 1)?))
    }
}

#[cfg(test)]
mod tests {
    use super::fixed::{pair, Suite};
    use super::*;

    /// Open every record in `wire` with `layer`, in place; the application data and the
    /// other outcomes, in order.
    fn open_all(
        layer: &mut RecordLayer<fixed::Fixed>,
        wire: &mut [u8],
        out: &mut Vec<u8>,
    ) -> Result<(Vec<u8>, Vec<Opened>), Refused> {
        let (mut at, mut data, mut events) = (0, Vec::new(), Vec::new());
        while let Some(len) = layer.record_len(&wire[at..])? {
            match layer.open(wire, at, at, len, out)? {
                Opened::Data(n) => data.extend_from_slice(&wire[at..at + n]),
                other => events.push(other),
            }
            at += len;
        }
        assert_eq!(at, wire.len(), "a record left over");
        Ok((data, events))
    }

    /// Why `layer` refuses the one record that is all of `wire`.
    fn refusal(layer: &mut RecordLayer<fixed::Fixed>, wire: &mut [u8]) -> Refused {
        let len = wire.len();
        layer.open(wire, 0, 0, len, &mut Vec::new()).unwrap_err()
    }

    #[test]
    fn sealed_records_open_to_the_same_bytes_in_every_suite() {
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        for suite in Suite::ALL {
            let (mut ours, mut peer) = pair(suite, u64::MAX).unwrap();
            let mut wire = Vec::new();
            for size in [0, 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 50_000] {
                peer.seal_data(&sent[..size], &mut wire).unwrap();
            }
            peer.seal_close_notify(&mut wire).unwrap();
            let mut out = Vec::new();
            let (data, events) = open_all(&mut ours, &mut wire, &mut out).unwrap();
            let want: Vec<u8> = [0, 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 50_000]
                .iter()
                .flat_map(|&n| sent[..n].to_vec())
                .collect();
            assert!(
                data == want,
                "{suite:?}: {} bytes of {}",
                data.len(),
                want.len()
            );
            assert_eq!(events, [Opened::Closed], "{suite:?}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn plaintext_can_be_moved_down_over_the_records_before_it() {
        for suite in Suite::ALL {
            let (mut ours, mut peer) = pair(suite, u64::MAX).unwrap();
            let mut wire = Vec::new();
            for byte in 1..=3u8 {
                peer.seal_data(&[byte; 1000], &mut wire).unwrap();
            }
            let (mut read, mut written) = (0, 0);
            while let Some(len) = ours.record_len(&wire[read..]).unwrap() {
                match ours
                    .open(&mut wire, written, read, len, &mut Vec::new())
                    .unwrap()
                {
                    Opened::Data(n) => written += n,
                    other => panic!("{other:?}"),
                }
                read += len;
            }
            let want: Vec<u8> = (1..=3u8).flat_map(|b| [b; 1000]).collect();
            assert!(wire[..written] == want[..], "{suite:?}");
        }
    }

    #[test]
    fn a_changed_byte_is_refused_as_a_bad_record_mac() {
        for suite in Suite::ALL {
            let (mut ours, mut peer) = pair(suite, u64::MAX).unwrap();
            let mut wire = Vec::new();
            peer.seal_data(b"A-ASSOCIATE-RQ", &mut wire).unwrap();
            for at in [HEADER, wire.len() - 1] {
                let mut changed = wire.clone();
                changed[at] ^= 1;
                let refusal = refusal(&mut ours, &mut changed);
                assert_eq!(
                    refusal.alert,
                    Some(BAD_RECORD_MAC),
                    "{suite:?}: {refusal:?}"
                );
            }
            // The same record again, unchanged: opening failed without moving the sequence on.
            let len = wire.len();
            assert_eq!(
                ours.open(&mut wire, 0, 0, len, &mut Vec::new()),
                Ok(Opened::Data(14))
            );
        }
    }

    #[test]
    fn lengths_and_types_a_record_may_not_have_are_refused() {
        for suite in Suite::ALL {
            let (ours, _) = pair(suite, u64::MAX).unwrap();
            let too_long = (MAX_BODY_TLS12 + 1) as u16;
            let refusal = ours
                .record_len(&[23, 3, 3, (too_long >> 8) as u8, too_long as u8])
                .unwrap_err();
            assert_eq!(refusal.alert, Some(RECORD_OVERFLOW), "{suite:?}");
            assert_eq!(ours.record_len(&[23, 3, 3, 0]), Ok(None));
        }
        let (mut ours, _) = pair(Suite::Tls13Aes256Gcm, u64::MAX).unwrap();
        let mut handshake = [22, 3, 3, 0, 20].to_vec();
        handshake.resize(25, 0);
        let refusal = refusal(&mut ours, &mut handshake);
        assert_eq!(refusal.alert, Some(UNEXPECTED_MESSAGE));
        assert!(refusal.why.contains("content type 22"), "{}", refusal.why);
        let mut short = [23, 3, 3, 0, 16].to_vec();
        short.resize(21, 0);
        let refusal = self::refusal(&mut ours, &mut short);
        assert_eq!(refusal.alert, Some(DECODE_ERROR));
    }

    #[test]
    fn alerts_close_or_end_the_connection() {
        for suite in Suite::ALL {
            let (mut ours, mut peer) = pair(suite, u64::MAX).unwrap();
            let mut wire = Vec::new();
            peer.seal(ALERT, &[1, USER_CANCELED], &mut wire).unwrap();
            peer.seal_alert(42, &mut wire).unwrap();
            let first = ours.record_len(&wire).unwrap().unwrap();
            assert_eq!(
                ours.open(&mut wire, 0, 0, first, &mut Vec::new()),
                Ok(Opened::Nothing)
            );
            let second = wire.len() - first;
            let refusal = ours
                .open(&mut wire, first, first, second, &mut Vec::new())
                .unwrap_err();
            assert_eq!(
                refusal,
                Refused {
                    alert: None,
                    why: "the peer sent TLS alert 42".into()
                }
            );
        }
    }

    /// A KeyUpdate that asks for ours: the peer's records after it open with its next key,
    /// and ours are sealed with our next key after a KeyUpdate sealed with the old one.
    #[test]
    fn key_updates_change_the_keys_both_ways() {
        let (mut ours, mut peer) = pair(Suite::Tls13Aes256Gcm, u64::MAX).unwrap();
        let mut wire = Vec::new();
        peer.seal_data(b"before", &mut wire).unwrap();
        peer.update_tx(true, &mut wire).unwrap();
        peer.seal_data(b"after", &mut wire).unwrap();
        let mut answer = Vec::new();
        let (data, events) = open_all(&mut ours, &mut wire, &mut answer).unwrap();
        assert_eq!(data, b"beforeafter");
        assert_eq!(events, [Opened::Nothing]);
        ours.seal_data(b"reply", &mut answer).unwrap();
        // The peer opens our KeyUpdate (not asking back), then our reply with the next key.
        let (data, events) = open_all(&mut peer, &mut answer, &mut Vec::new()).unwrap();
        assert_eq!(data, b"reply");
        assert_eq!(events, [Opened::Nothing]);
    }

    #[test]
    fn a_key_at_its_limit_is_updated_in_tls13_and_ends_tls12() {
        let (mut ours, mut peer) = pair(Suite::Tls13Aes256Gcm, 2).unwrap();
        let mut wire = Vec::new();
        ours.seal_data(&[7; 3 * MAX_PLAINTEXT], &mut wire).unwrap();
        let (data, events) = open_all(&mut peer, &mut wire, &mut Vec::new()).unwrap();
        assert_eq!(data, [7; 3 * MAX_PLAINTEXT]);
        assert_eq!(events, [Opened::Nothing]);
        let (mut ours, _) = pair(Suite::Tls12Aes256Gcm, 2).unwrap();
        let refusal = ours
            .seal_data(&[7; 3 * MAX_PLAINTEXT], &mut Vec::new())
            .unwrap_err();
        assert!(refusal.why.contains("limit"), "{}", refusal.why);
    }

    #[test]
    fn other_handshake_messages_are_refused() {
        let (mut ours, mut peer) = pair(Suite::Tls13Aes256Gcm, u64::MAX).unwrap();
        let mut wire = Vec::new();
        peer.seal(HANDSHAKE, &[4, 0, 0, 1, 0], &mut wire).unwrap();
        let refusal = self::refusal(&mut ours, &mut wire);
        assert_eq!(refusal.alert, Some(UNEXPECTED_MESSAGE));
        let (mut ours, mut peer) = pair(Suite::Tls12Aes256Gcm, u64::MAX).unwrap();
        let mut wire = Vec::new();
        peer.seal(HANDSHAKE, &[1, 0, 0, 0], &mut wire).unwrap();
        let refusal = self::refusal(&mut ours, &mut wire);
        assert!(refusal.why.contains("renegotiate"), "{}", refusal.why);
    }
}
