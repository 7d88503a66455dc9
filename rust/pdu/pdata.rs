//! P-DATA-TF (PS3.8 §9.3.5): its presentation data value items, parsed lazily and encoded.

use super::{PduError, Reader, P_DATA_TF};

/// PDV message control header bits (PS3.8 Annex E.2).
const PDV_COMMAND: u8 = 0x01;
const PDV_LAST: u8 = 0x02;
/// Largest fragment whose PDU length (fragment + 6) still fits the u32 length field.
const MAX_FRAGMENT: u32 = u32::MAX - 6;

/// One presentation data value item of a P-DATA-TF, borrowing the PDU body (zero copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pdv<'a> {
    pub context_id: u8,
    pub is_command: bool,
    pub is_last: bool,
    pub data: &'a [u8],
}

/// Iterator over the PDVs of a P-DATA-TF body, see [`pdvs`].
#[derive(Debug, Clone)]
pub struct Pdvs<'a> {
    rest: &'a [u8],
    seen_one: bool,
    done: bool,
}

/// Iterate over the PDVs of a P-DATA-TF body. Yields Err once and then stops on a malformed item
/// (item length < 2, item running past the body). An empty body (no PDV) is an error.
pub fn pdvs(body: &[u8]) -> Pdvs<'_> {
    Pdvs {
        rest: body,
        seen_one: false,
        done: false,
    }
}

/// One PDV item: `u32 length | context id | control | fragment` (PS3.8 §9.3.5.1, Annex E.2).
fn next_pdv<'a>(r: &mut Reader<'a>) -> Result<Pdv<'a>, PduError> {
    let len = u32::from_be_bytes(r.array("PDV item length truncated")?);
    let len = usize::try_from(len).map_err(|_| PduError::Malformed("PDV runs past the PDU"))?;
    let item = r.take(len, "PDV runs past the PDU")?;
    // The length covers context id and control header, so less than 2 cannot be a PDV.
    let [context_id, control, data @ ..] = item else {
        return Err(PduError::Malformed("PDV item length below 2"));
    };
    // Reserved control bits (2-7) are tolerated: only bits 0 and 1 carry meaning.
    Ok(Pdv {
        context_id: *context_id,
        is_command: control & PDV_COMMAND != 0,
        is_last: control & PDV_LAST != 0,
        data,
    })
}

impl<'a> Iterator for Pdvs<'a> {
    type Item = Result<Pdv<'a>, PduError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.rest.is_empty() {
            self.done = true;
            // PS3.8 §9.3.5: the variable field holds one or more PDV items.
            return (!self.seen_one).then_some(Err(PduError::Malformed("P-DATA-TF without PDV")));
        }
        let mut r = Reader(self.rest);
        let pdv = next_pdv(&mut r);
        self.rest = r.0;
        self.seen_one = true;
        self.done = pdv.is_err();
        Some(pdv)
    }
}

impl std::iter::FusedIterator for Pdvs<'_> {}

/// Append an encoded command set as P-DATA-TF PDUs carrying at most `fragment` bytes of it
/// each, the last one flagged last (PS3.8 Annex E.2). `fragment` must not be 0.
pub fn encode_command_pdus(out: &mut Vec<u8>, context_id: u8, fragment: usize, command: &[u8]) {
    let mut chunks = command.chunks(fragment).peekable();
    while let Some(chunk) = chunks.next() {
        encode_pdata(out, context_id, true, chunks.peek().is_none(), chunk);
    }
}

/// Append a P-DATA-TF PDU holding one PDV with `data` as its fragment. A fragment over
/// `u32::MAX - 6` bytes cannot be framed and is cut (callers split at the peer's max length).
pub fn encode_pdata(
    out: &mut Vec<u8>,
    context_id: u8,
    is_command: bool,
    is_last: bool,
    data: &[u8],
) {
    let data = data.get(..MAX_FRAGMENT as usize).unwrap_or(data);
    let len = u32::try_from(data.len()).unwrap_or(MAX_FRAGMENT);
    out.reserve(data.len().saturating_add(12));
    out.extend_from_slice(&pdata_header(context_id, is_command, is_last, len));
    out.extend_from_slice(data);
}

/// Header of a P-DATA-TF with one PDV whose fragment is `fragment_len` bytes, so a caller can write
/// header and a borrowed fragment with one vectored write without copying the fragment.
/// `fragment_len` must not exceed `u32::MAX - 6`; larger values saturate the length fields.
pub fn pdata_header(
    context_id: u8,
    is_command: bool,
    is_last: bool,
    fragment_len: u32,
) -> [u8; 12] {
    // The PDV length counts context id and control header; the PDU length adds the 4-byte
    // PDV length field (PS3.8 §9.3.5).
    let [a, b, c, d] = fragment_len.saturating_add(6).to_be_bytes();
    let [e, f, g, h] = fragment_len.saturating_add(2).to_be_bytes();
    let control = if is_command { PDV_COMMAND } else { 0 } | if is_last { PDV_LAST } else { 0 };
    [P_DATA_TF, 0, a, b, c, d, e, f, g, h, context_id, control]
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::pdu::tests::parse;
    use crate::pdu::Pdu;

    /// Also a seed of the fuzz test in `pdu`'s own tests.
    pub(in crate::pdu) fn several_pdvs_pdu() -> Vec<u8> {
        let body = [
            &[0, 0, 0, 6, 1, 0x03][..], // command, last, 4 bytes
            &[0xAA, 0xBB, 0xCC, 0xDD],
            &[0, 0, 0, 5, 1, 0x00], // data set, not last, 3 bytes
            &[1, 2, 3],
            &[0, 0, 0, 2, 3, 0xF2], // data set, last, empty; reserved bits set
        ]
        .concat();
        let mut pdu = vec![P_DATA_TF, 0];
        pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
        pdu.extend_from_slice(&body);
        pdu
    }

    #[test]
    fn pdata_round_trip_and_header() {
        for (cmd, last) in [(false, false), (false, true), (true, false), (true, true)] {
            let data = [9u8, 8, 7, 6, 5];
            let mut out = Vec::new();
            encode_pdata(&mut out, 5, cmd, last, &data);
            assert_eq!(out[..12], pdata_header(5, cmd, last, 5));
            assert_eq!(&out[12..], &data);
            let Ok(Pdu::PData(body)) = parse(&out) else {
                panic!("not P-DATA")
            };
            let got: Vec<_> = pdvs(body).collect();
            let want = Pdv {
                context_id: 5,
                is_command: cmd,
                is_last: last,
                data: &data,
            };
            assert_eq!(got, vec![Ok(want)]);
        }
        // An empty fragment is still a PDV.
        let mut out = Vec::new();
        encode_pdata(&mut out, 1, false, true, &[]);
        assert_eq!(out, [4, 0, 0, 0, 0, 6, 0, 0, 0, 2, 1, 2]);
    }

    #[test]
    fn several_pdvs_in_one_pdu() {
        let pdu = several_pdvs_pdu();
        let Ok(Pdu::PData(body)) = parse(&pdu) else {
            panic!("not P-DATA")
        };
        let got: Vec<_> = pdvs(body).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got,
            [
                Pdv {
                    context_id: 1,
                    is_command: true,
                    is_last: true,
                    data: &[0xAA, 0xBB, 0xCC, 0xDD]
                },
                Pdv {
                    context_id: 1,
                    is_command: false,
                    is_last: false,
                    data: &[1, 2, 3]
                },
                Pdv {
                    context_id: 3,
                    is_command: false,
                    is_last: true,
                    data: &[]
                },
            ]
        );
    }

    #[test]
    fn malformed_pdvs_rejected_once() {
        for body in [
            &[][..],                         // no PDV at all
            &[0, 0, 0, 0],                   // length 0
            &[0, 0, 0, 1, 1],                // length 1
            &[0, 0, 0, 9, 1, 2, 3],          // longer than the body
            &[0, 0, 0],                      // length field cut
            &[0xFF, 0xFF, 0xFF, 0xFF, 1, 0], // huge length, nothing allocated
        ] {
            let got: Vec<_> = pdvs(body).collect();
            assert_eq!(got.len(), 1, "{body:?}");
            assert!(matches!(got[0], Err(PduError::Malformed(_))), "{body:?}");
        }
        // A good PDV then garbage: Ok, Err, then the iterator stays finished.
        let body = [0, 0, 0, 3, 1, 2, 0xAB, 0, 0];
        let mut it = pdvs(&body);
        assert!(matches!(
            it.next(),
            Some(Ok(Pdv {
                context_id: 1,
                is_last: true,
                ..
            }))
        ));
        assert!(matches!(it.next(), Some(Err(PduError::Malformed(_)))));
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
    }
}
