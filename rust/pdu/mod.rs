//! DICOM Upper Layer PDUs (PS3.8 §9.3): the types, and parsing from / encoding to byte slices.
//!
//! Pure data: no sockets, files or Python. Every byte parsed here comes from an unauthenticated
//! peer, so every length is checked against the bytes actually present before anything is read or
//! allocated, and nothing may panic; the restriction lints below make clippy enforce that, in the
//! submodules too.
//!
//! The A-ASSOCIATE-RQ/AC PDUs and their items are in `associate`, P-DATA-TF and its PDVs in
//! `pdata`; both are re-exported here, so every type and function is used as `pdu::...`.
#![forbid(unsafe_code)]
// Tests may index and unwrap: a panic there is a failed test, not a crashed server.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects
    )
)]

use crate::vr::trim_padding;
use std::fmt;

mod associate;
mod pdata;

pub use associate::{
    AssociateAc, AssociateRq, PresentationContextAc, PresentationContextRq, RoleSelection,
    UserIdentityRq, UserInfo,
};
pub use pdata::{encode_command_pdus, encode_pdata, pdata_header, pdvs, Pdv, Pdvs};

/// `type u8 | reserved u8 | length u32 BE`, common to every PDU (PS3.8 §9.3.1).
pub const HEADER_LEN: usize = 6;
/// The only application context name defined by DICOM (PS3.7 Annex A.2.1).
pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";

/// PDU type codes (PS3.8 §9.3.2 to §9.3.8).
pub const ASSOCIATE_RQ: u8 = 0x01;
pub const ASSOCIATE_AC: u8 = 0x02;
pub const ASSOCIATE_RJ: u8 = 0x03;
pub const P_DATA_TF: u8 = 0x04;
pub const RELEASE_RQ: u8 = 0x05;
pub const RELEASE_RP: u8 = 0x06;
pub const ABORT: u8 = 0x07;

/// Parse the 6-byte header: (pdu_type, body_length). Does not validate the type.
pub fn parse_header(header: &[u8; HEADER_LEN]) -> (u8, u32) {
    let [pdu_type, _, a, b, c, d] = *header;
    (pdu_type, u32::from_be_bytes([a, b, c, d]))
}

/// A-ASSOCIATE-RJ (PS3.8 §9.3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssociateRj {
    pub result: u8,
    pub source: u8,
    pub reason: u8,
}

/// Bound on a PDU other than P-DATA-TF, whose bound is the negotiated maximum length: an
/// A-ASSOCIATE-RQ or -AC with hundreds of presentation contexts fits easily.
pub const MAX_CONTROL_PDU: u32 = 1 << 20;

/// A-ABORT sources and reasons (PS3.8 §9.3.8).
pub mod abort {
    pub const SOURCE_USER: u8 = 0;
    pub const SOURCE_PROVIDER: u8 = 2;
    pub const NOT_SPECIFIED: u8 = 0;
    pub const UNRECOGNIZED_PDU: u8 = 1;
    pub const UNEXPECTED_PDU: u8 = 2;
    pub const UNEXPECTED_PARAMETER: u8 = 5;
    pub const INVALID_PARAMETER: u8 = 6;
}

/// A-ABORT (PS3.8 §9.3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort {
    pub source: u8,
    pub reason: u8,
}

/// A parsed PDU. P-DATA borrows the body; parse PDVs lazily with [`pdvs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu<'a> {
    AssociateRq(AssociateRq),
    AssociateAc(AssociateAc),
    AssociateRj(AssociateRj),
    PData(&'a [u8]),
    ReleaseRq,
    ReleaseRp,
    Abort(Abort),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PduError {
    /// Unknown PDU type code (A-ABORT reason 1: unrecognized PDU).
    UnrecognizedPdu(u8),
    /// A length disagrees with the bytes present, an item runs past its parent, a fixed-size
    /// PDU or value has the wrong size, or a required item is missing or repeated (reason 6).
    Malformed(&'static str),
    /// A parameter value that is not allowed, e.g. a non-ASCII UID (reason 6).
    InvalidValue(&'static str),
}

impl PduError {
    /// The A-ABORT reason (source 2, service provider) for this error, PS3.8 §9.3.8.
    /// Reason 2 ("unexpected PDU") is not used: it means a well-formed PDU arriving in the wrong
    /// state, which only the association state machine can tell.
    pub fn abort_reason(&self) -> u8 {
        match self {
            PduError::UnrecognizedPdu(_) => 1,
            PduError::Malformed(_) | PduError::InvalidValue(_) => 6,
        }
    }
}

impl fmt::Display for PduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PduError::UnrecognizedPdu(t) => write!(f, "unrecognized PDU type 0x{t:02X}"),
            PduError::Malformed(what) => write!(f, "malformed PDU: {what}"),
            PduError::InvalidValue(what) => write!(f, "invalid PDU parameter value: {what}"),
        }
    }
}

impl std::error::Error for PduError {}

// ---------------------------------------------------------------------------------------------
// Parsing

/// Cursor over untrusted bytes: every read is bounds-checked and fails with `Malformed(what)`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PduError> {
        let err = PduError::Malformed(what);
        let (head, tail) = self.0.split_at_checked(n).ok_or(err)?;
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], PduError> {
        let err = PduError::Malformed(what);
        let (head, tail) = self.0.split_first_chunk::<N>().ok_or(err)?;
        self.0 = tail;
        Ok(*head)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, PduError> {
        self.array(what).map(u16::from_be_bytes)
    }

    /// `u16 length | bytes`, the shape of the inner fields of sub-items 0x54, 0x56, 0x58, 0x59.
    fn u16_prefixed(&mut self, what: &'static str) -> Result<&'a [u8], PduError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    /// An item or sub-item: `type u8 | reserved u8 | length u16 BE | value` (PS3.8 §9.3.2.x).
    fn item(&mut self) -> Result<(u8, &'a [u8]), PduError> {
        let [item_type, _, hi, lo] = self.array("item header truncated")?;
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let value = self.take(len, "item length runs past its parent")?;
        Ok((item_type, value))
    }

    /// Require that nothing is left, so inner lengths must account for the whole value.
    fn finish(&self, what: &'static str) -> Result<(), PduError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(PduError::Malformed(what))
        }
    }
}

fn exact<const N: usize>(value: &[u8], what: &'static str) -> Result<[u8; N], PduError> {
    <[u8; N]>::try_from(value).map_err(|_| PduError::Malformed(what))
}

impl<'a> Pdu<'a> {
    /// Parse a PDU body given its type from the header. `body` is exactly `length` bytes.
    /// P-DATA-TF is not inspected here; its PDVs are parsed lazily by [`pdvs`].
    pub fn parse(pdu_type: u8, body: &'a [u8]) -> Result<Pdu<'a>, PduError> {
        match pdu_type {
            ASSOCIATE_RQ => AssociateRq::parse(body).map(Pdu::AssociateRq),
            ASSOCIATE_AC => AssociateAc::parse(body).map(Pdu::AssociateAc),
            ASSOCIATE_RJ => {
                let [_, result, source, reason] = exact(body, "A-ASSOCIATE-RJ is not 4 bytes")?;
                Ok(Pdu::AssociateRj(AssociateRj {
                    result,
                    source,
                    reason,
                }))
            }
            P_DATA_TF => Ok(Pdu::PData(body)),
            // The remaining bodies are exactly 4 bytes (PS3.8 §9.3.6 to §9.3.8).
            RELEASE_RQ => exact::<4>(body, "A-RELEASE-RQ is not 4 bytes").map(|_| Pdu::ReleaseRq),
            RELEASE_RP => exact::<4>(body, "A-RELEASE-RP is not 4 bytes").map(|_| Pdu::ReleaseRp),
            ABORT => {
                let [_, _, source, reason] = exact(body, "A-ABORT is not 4 bytes")?;
                Ok(Pdu::Abort(Abort { source, reason }))
            }
            other => Err(PduError::UnrecognizedPdu(other)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding. Lengths are computed from the content written, then patched into place. A value too
// long for its length field is cut so the framing stays self-consistent (the association layer
// keeps UIDs at 64 bytes and PDUs at the negotiated size, so this never happens in practice).

fn patch(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = out.get_mut(at..at.saturating_add(bytes.len())) {
        dst.copy_from_slice(bytes);
    }
}

/// Cut what follows `body_start` to `max` bytes and return its length.
fn fit(out: &mut Vec<u8>, body_start: usize, max: usize) -> usize {
    let len = out.len().saturating_sub(body_start).min(max);
    out.truncate(body_start.saturating_add(len));
    len
}

/// `type | 00 | u32 length | body` (PS3.8 §9.3.1).
fn put_pdu(out: &mut Vec<u8>, pdu_type: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[pdu_type, 0, 0, 0, 0, 0]);
    body(out);
    let max = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
    let len = fit(out, start.saturating_add(HEADER_LEN), max);
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    patch(out, start.saturating_add(2), &len.to_be_bytes());
}

impl AssociateRj {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_pdu(out, ASSOCIATE_RJ, |o| {
            o.extend_from_slice(&[0, self.result, self.source, self.reason]);
        });
    }
}

impl Abort {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_pdu(out, ABORT, |o| {
            o.extend_from_slice(&[0, 0, self.source, self.reason])
        });
    }
}

pub fn encode_release_rq(out: &mut Vec<u8>) {
    put_pdu(out, RELEASE_RQ, |o| o.extend_from_slice(&[0; 4]));
}

pub fn encode_release_rp(out: &mut Vec<u8>) {
    put_pdu(out, RELEASE_RP, |o| o.extend_from_slice(&[0; 4]));
}

/// Trim an AE title field: leading/trailing spaces (and trailing NULs) are not significant
/// (PS3.8 §9.3.2). Returns None if the field is all spaces/empty or contains bytes outside
/// printable ASCII (0x20..=0x7E) or a backslash (the AE VR forbids it, PS3.5 §6.2).
pub fn ae_title(field: &[u8; 16]) -> Option<&str> {
    let mut title = trim_padding(field);
    while let [b' ', rest @ ..] = title {
        title = rest;
    }
    let printable = |b: &u8| (0x20..=0x7E).contains(b) && *b != b'\\';
    if title.is_empty() || !title.iter().all(printable) {
        return None;
    }
    std::str::from_utf8(title).ok()
}

/// Space-pad an AE title to the 16-byte field (truncating longer input).
pub fn ae_field(title: &str) -> [u8; 16] {
    let mut field = [b' '; 16];
    for (dst, src) in field.iter_mut().zip(title.bytes()) {
        *dst = src;
    }
    field
}

#[cfg(test)]
mod tests {
    use super::associate::tests::{sample_ac, sample_rq};
    use super::pdata::tests::several_pdvs_pdu;
    use super::*;

    /// Split an encoded PDU, checking the header length matches what follows.
    fn split(bytes: &[u8]) -> (u8, &[u8]) {
        let (header, body) = bytes.split_first_chunk::<HEADER_LEN>().unwrap();
        let (pdu_type, len) = parse_header(header);
        assert_eq!(len as usize, body.len(), "header length vs body");
        (pdu_type, body)
    }

    /// Parse a whole encoded PDU (header and body); shared with the submodules' tests.
    pub(super) fn parse(bytes: &[u8]) -> Result<Pdu<'_>, PduError> {
        let (pdu_type, body) = split(bytes);
        Pdu::parse(pdu_type, body)
    }

    #[test]
    fn header_is_type_and_big_endian_length() {
        assert_eq!(
            parse_header(&[0x04, 0xFF, 0x01, 0x02, 0x03, 0x04]),
            (4, 0x0102_0304)
        );
        assert_eq!(
            parse_header(&[0x42, 0, 0xFF, 0xFF, 0xFF, 0xFF]),
            (0x42, u32::MAX)
        );
    }

    #[test]
    fn fixed_size_pdus_round_trip() {
        let mut out = Vec::new();
        AssociateRj {
            result: 1,
            source: 1,
            reason: 7,
        }
        .encode(&mut out);
        assert_eq!(out, [3, 0, 0, 0, 0, 4, 0, 1, 1, 7]);
        let rj = AssociateRj {
            result: 1,
            source: 1,
            reason: 7,
        };
        assert_eq!(parse(&out), Ok(Pdu::AssociateRj(rj)));

        out.clear();
        Abort {
            source: 2,
            reason: 6,
        }
        .encode(&mut out);
        assert_eq!(out, [7, 0, 0, 0, 0, 4, 0, 0, 2, 6]);
        assert_eq!(
            parse(&out),
            Ok(Pdu::Abort(Abort {
                source: 2,
                reason: 6
            }))
        );

        out.clear();
        encode_release_rq(&mut out);
        assert_eq!(out, [5, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
        assert_eq!(parse(&out), Ok(Pdu::ReleaseRq));

        out.clear();
        encode_release_rp(&mut out);
        assert_eq!(out, [6, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
        assert_eq!(parse(&out), Ok(Pdu::ReleaseRp));
    }

    #[test]
    fn fixed_size_bodies_and_unknown_types() {
        for t in [ASSOCIATE_RJ, RELEASE_RQ, RELEASE_RP, ABORT] {
            for len in [0, 3, 5, 68] {
                let body = vec![0; len];
                assert!(
                    matches!(Pdu::parse(t, &body), Err(PduError::Malformed(_))),
                    "{t} {len}"
                );
            }
        }
        for t in [0x00, 0x08, 0x10, 0xFF] {
            assert_eq!(Pdu::parse(t, &[0; 4]), Err(PduError::UnrecognizedPdu(t)));
        }
        // P-DATA is not inspected until its PDVs are iterated.
        assert_eq!(Pdu::parse(P_DATA_TF, &[]), Ok(Pdu::PData(&[])));
    }

    #[test]
    fn error_reasons_and_display() {
        assert_eq!(PduError::UnrecognizedPdu(8).abort_reason(), 1);
        assert_eq!(PduError::Malformed("x").abort_reason(), 6);
        assert_eq!(PduError::InvalidValue("x").abort_reason(), 6);
        assert_eq!(
            PduError::UnrecognizedPdu(0xAB).to_string(),
            "unrecognized PDU type 0xAB"
        );
        assert_eq!(PduError::Malformed("m").to_string(), "malformed PDU: m");
        let e: Box<dyn std::error::Error> = Box::new(PduError::InvalidValue("v"));
        assert_eq!(e.to_string(), "invalid PDU parameter value: v");
    }

    /// Parse like the association layer would: declared length, then lazily the PDVs.
    fn exercise(bytes: &[u8]) {
        let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return;
        };
        let (pdu_type, len) = parse_header(header);
        let body = rest.get(..len as usize).unwrap_or(rest);
        if let Ok(Pdu::PData(body)) = Pdu::parse(pdu_type, body) {
            assert!(pdvs(body).count() <= body.len() / 6 + 1);
        }
    }

    #[test]
    fn deterministic_fuzz_never_panics() {
        let mut samples = vec![several_pdvs_pdu()];
        let mut out = Vec::new();
        sample_rq().encode(&mut out);
        samples.push(std::mem::take(&mut out));
        sample_ac().encode(&mut out);
        samples.push(std::mem::take(&mut out));
        AssociateRj {
            result: 2,
            source: 3,
            reason: 1,
        }
        .encode(&mut out);
        samples.push(std::mem::take(&mut out));
        encode_release_rq(&mut out);
        samples.push(std::mem::take(&mut out));
        for bytes in &samples {
            for cut in 0..=bytes.len() {
                exercise(&bytes[..cut]);
                // Truncated body under an unchanged header: framing must still be checked.
                if let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() {
                    let _ = Pdu::parse(header[0], &body[..cut.min(body.len())]);
                }
            }
            let mut mutated = bytes.clone();
            for i in 0..bytes.len().min(200) {
                for value in 0..=255u8 {
                    mutated[i] = value;
                    exercise(&mutated);
                }
                mutated[i] = bytes[i];
            }
        }
    }

    #[test]
    fn ae_titles() {
        assert_eq!(ae_title(b"  STORESCP      "), Some("STORESCP"));
        assert_eq!(ae_title(b"A B\0\0\0\0\0\0\0\0\0\0\0\0\0"), Some("A B"));
        assert_eq!(ae_title(b"SIXTEEN_CHARS_AE"), Some("SIXTEEN_CHARS_AE"));
        assert_eq!(ae_title(b"                "), None);
        assert_eq!(ae_title(&[0; 16]), None);
        assert_eq!(ae_title(b"  \0             "), None); // NUL inside: not printable
        assert_eq!(ae_title(b"BAD\\AE          "), None);
        assert_eq!(ae_title(b"CAF\xC3\xA9           "), None);
        assert_eq!(ae_title(b"TAB\tAE          "), None);
        assert_eq!(ae_field("ECHOSCU"), *b"ECHOSCU         ");
        assert_eq!(ae_field("A_VERY_LONG_AE_TITLE"), *b"A_VERY_LONG_AE_T");
        assert_eq!(ae_field(""), [b' '; 16]);
        assert_eq!(ae_title(&ae_field("ROUND")), Some("ROUND"));
    }
}
