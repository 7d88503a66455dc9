//! Entry points of the cargo-fuzz targets (`fuzz/`), shared with the unit test that replays the
//! regression corpus in `rust/testdata/fuzz/<target>/`, so CI checks every input the fuzzer ever
//! found interesting without running the fuzzer.
//!
//! Each function takes arbitrary bytes, must never panic except on a broken invariant, and
//! checks properties stronger than "no crash": codecs re-parse what they encode, and the
//! scanner gives the same answer however the data set is split into fragments.

use std::io::Read;
use std::sync::Arc;

use crate::association::{AcceptorPolicy, IdentityCheck, IdentityVerdict, VERIFICATION_SOP_CLASS};
use crate::dimse::Command;
use crate::journal;
use crate::pdu::{self, Pdu, UserIdentityRq};
use crate::scan::{Encoding, ScanError, Scanner, SortAttributes, MAX_VALUE_LEN};
use crate::scu::transcode;
use crate::transfer_syntax;

/// Any PDU: `type u8 | body`. Codec round trips must be exact; PDVs must tile the body.
pub fn pdu(data: &[u8]) {
    let Some((&pdu_type, body)) = data.split_first() else {
        return;
    };
    let parsed = match Pdu::parse(pdu_type, body) {
        Ok(parsed) => parsed,
        Err(_) => return,
    };
    let mut out = Vec::new();
    match &parsed {
        Pdu::PData(body) => {
            let mut covered = 0;
            for pdv in pdu::pdvs(body) {
                match pdv {
                    Ok(pdv) => covered += 6 + pdv.data.len(),
                    Err(_) => return,
                }
            }
            assert_eq!(covered, body.len(), "PDVs must account for the whole body");
            return;
        }
        Pdu::AssociateRq(rq) => rq.encode(&mut out),
        Pdu::AssociateAc(ac) => ac.encode(&mut out),
        Pdu::AssociateRj(rj) => rj.encode(&mut out),
        Pdu::ReleaseRq => pdu::encode_release_rq(&mut out),
        Pdu::ReleaseRp => pdu::encode_release_rp(&mut out),
        Pdu::Abort(abort) => abort.encode(&mut out),
    }
    assert_eq!(reparse(&out), parsed, "parse(encode(pdu)) differs");
}

fn reparse(encoded: &[u8]) -> Pdu<'_> {
    let (header, body) = encoded
        .split_first_chunk::<{ pdu::HEADER_LEN }>()
        .expect("an encoded PDU has a header");
    let (pdu_type, length) = pdu::parse_header(header);
    assert_eq!(length as usize, body.len(), "encoded length field");
    Pdu::parse(pdu_type, body).expect("an encoded PDU parses")
}

/// An A-ASSOCIATE-RQ body, answered by a policy picked with the first byte. An acceptance must
/// encode to an A-ASSOCIATE-AC that parses, answer every proposed context, and accept only
/// contexts the policy supports with a syntax the peer proposed.
pub fn negotiation(data: &[u8]) {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let Ok(Pdu::AssociateRq(rq)) = Pdu::parse(pdu::ASSOCIATE_RQ, body) else {
        return;
    };
    let policy = fuzz_policy(flags);
    let (association, mut ac) = match policy.negotiate(&rq) {
        Ok(accepted) => accepted,
        Err(rj) => {
            let allowed = [(1, 1, 1), (1, 1, 2), (1, 1, 3), (1, 1, 7), (1, 2, 2)];
            assert!(
                allowed.contains(&(rj.result, rj.source, rj.reason)),
                "{rj:?}"
            );
            return;
        }
    };
    // The user identity sub-item (PS3.7 §D.3.3.7): a response only to an accepted identity
    // whose requestor asked for one, and one that fits the A-ASSOCIATE-AC.
    let identity = rq.user_info.user_identity_rq.as_ref();
    match policy.check_user_identity(identity, &association.calling_ae) {
        Ok(response) => {
            let asked = identity.is_some_and(|i| i.positive_response_requested);
            assert_eq!(
                response.is_some(),
                asked,
                "server response without a request"
            );
            ac.user_info.user_identity_ac = response;
        }
        Err(_) => {
            assert!(
                identity.is_some() || policy.require_user_identity,
                "identity refused without a reason"
            );
            return;
        }
    }
    let mut out = Vec::new();
    ac.encode(&mut out);
    let Pdu::AssociateAc(parsed) = reparse(&out) else {
        panic!("A-ASSOCIATE-AC encoded as another PDU");
    };
    assert_eq!(parsed, ac, "A-ASSOCIATE-AC round trip");
    assert_eq!(
        ac.presentation_contexts.len(),
        rq.presentation_contexts.len()
    );
    for (answer, proposal) in ac
        .presentation_contexts
        .iter()
        .zip(&rq.presentation_contexts)
    {
        assert_eq!(answer.id, proposal.id);
        let context = association.context(answer.id);
        if answer.result != 0 {
            continue;
        }
        let context = context.expect("an accepted context is usable");
        assert_eq!(answer.id % 2, 1, "accepted an even context id");
        assert!(policy.sop_classes.contains(&context.abstract_syntax));
        assert!(proposal
            .transfer_syntaxes
            .contains(&context.transfer_syntax));
        assert!(transfer_syntax::is_supported(&context.transfer_syntax));
    }
}

fn fuzz_policy(flags: u8) -> AcceptorPolicy {
    let ct = "1.2.840.10008.5.1.4.1.1.2";
    AcceptorPolicy {
        ae_title: "INLET".into(),
        require_called_ae: flags & 1 != 0,
        allowed_calling_aes: if flags & 2 != 0 {
            vec!["SCU".into()]
        } else {
            vec![]
        },
        sop_classes: [VERIFICATION_SOP_CLASS, ct].map(String::from).into(),
        transfer_syntaxes: (flags & 4 != 0).then(|| {
            vec![
                transfer_syntax::IMPLICIT_VR_LITTLE_ENDIAN.into(),
                transfer_syntax::EXPLICIT_VR_LITTLE_ENDIAN.into(),
            ]
        }),
        max_pdu: 16_384,
        require_user_identity: flags & 8 != 0,
        identity_check: (flags & 16 != 0).then(|| Arc::new(Passcode) as Arc<dyn IdentityCheck>),
    }
}

/// Accepts the passcode "secret" and answers tokens with the token itself, so fuzzed
/// identities reach both verdicts and the longest server responses.
#[derive(Debug)]
struct Passcode;

impl IdentityCheck for Passcode {
    fn check(&self, identity: &UserIdentityRq, _calling_ae: &str) -> IdentityVerdict {
        match identity.identity_type {
            2 if identity.secondary == b"secret" => IdentityVerdict::Accept(None),
            3..=5 => IdentityVerdict::Accept(Some(identity.primary.clone())),
            _ => IdentityVerdict::Reject("not the passcode".into()),
        }
    }
}

/// A DIMSE command set. What parses must re-encode to the same command.
pub fn command(data: &[u8]) {
    let Ok(command) = Command::parse(data) else {
        return;
    };
    let mut out = Vec::new();
    command.encode(&mut out);
    let again = Command::parse(&out).expect("an encoded command set parses");
    // The encoder writes a MessageID whether or not one was parsed.
    let expected = Command {
        message_id: Some(command.message_id.unwrap_or(0)),
        ..command
    };
    assert_eq!(again, expected, "parse(encode(command)) differs");
}

/// Transfer syntaxes of the scanner's four encodings.
const SCANNED_SYNTAXES: [&str; 4] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
];

/// A data set: `encoding selector | split seed | bytes`. Fed whole and in fragments whose
/// sizes come from the seed, the scan must give the same result, with bounded values.
pub fn scanner(data: &[u8]) {
    let [selector, seed, data @ ..] = data else {
        return;
    };
    let ts = SCANNED_SYNTAXES[usize::from(*selector) % SCANNED_SYNTAXES.len()];
    let whole = scan_fragments(ts, data, || usize::MAX);
    let mut state = u32::from(*seed);
    let split = scan_fragments(ts, data, || {
        // Small odd and even fragments, as any TCP segmentation may produce.
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        1 + (state >> 16) as usize % 300
    });
    assert_eq!(whole, split, "the result depends on the fragment sizes");
    // Keeping the elements as encoded (for the callbacks) changes nothing else and keeps only
    // whole values.
    let mut keeping = Scanner::new(Encoding::for_transfer_syntax(ts)).keeping_elements(true);
    let _ = keeping.feed(data);
    let kept = keeping.finish().map(|mut attrs| {
        assert!(attrs
            .elements
            .iter()
            .all(|e| e.value.len() <= MAX_VALUE_LEN));
        attrs.elements.clear();
        attrs
    });
    assert_eq!(kept, whole, "keeping the elements changed the scan");
    if let Ok(attrs) = whole {
        for value in [
            &attrs.sop_class_uid,
            &attrs.sop_instance_uid,
            &attrs.study_date,
            &attrs.accession_number,
            &attrs.modality,
            &attrs.patient_id,
            &attrs.study_instance_uid,
            &attrs.series_instance_uid,
        ]
        .into_iter()
        .flatten()
        {
            assert!(value.len() <= MAX_VALUE_LEN);
        }
    }
}

/// Scan `data` in fragments of the lengths `next_len` draws, as a data set arrives over PDUs.
pub(crate) fn scan_fragments(
    ts: &str,
    data: &[u8],
    mut next_len: impl FnMut() -> usize,
) -> Result<SortAttributes, ScanError> {
    let mut scanner = Scanner::new(Encoding::for_transfer_syntax(ts));
    let mut rest = data;
    while !rest.is_empty() {
        let (fragment, tail) = rest.split_at(next_len().min(rest.len()));
        // An error is reported again by finish, which is what is compared.
        let _ = scanner.feed(fragment);
        rest = tail;
    }
    scanner.finish()
}

/// The SCU's conversions: `selector | split seed | data set`. A data set is converted from
/// one of the syntaxes the SCU converts to one it converts into, read whole and in pieces
/// whose sizes come from the seed: both reads must agree, and when the conversion and a scan
/// of the input succeed, a scan of the output must succeed, finding the same attributes.
pub fn transcoder(data: &[u8]) {
    let [selector, seed, data @ ..] = data else {
        return;
    };
    let conversions: [(&str, &str); 5] = [
        (
            transfer_syntax::EXPLICIT_VR_LITTLE_ENDIAN,
            transfer_syntax::IMPLICIT_VR_LITTLE_ENDIAN,
        ),
        (
            transfer_syntax::EXPLICIT_VR_BIG_ENDIAN,
            transfer_syntax::EXPLICIT_VR_LITTLE_ENDIAN,
        ),
        (
            transfer_syntax::EXPLICIT_VR_BIG_ENDIAN,
            transfer_syntax::IMPLICIT_VR_LITTLE_ENDIAN,
        ),
        (
            transfer_syntax::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
            transfer_syntax::EXPLICIT_VR_LITTLE_ENDIAN,
        ),
        (
            transfer_syntax::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
            transfer_syntax::IMPLICIT_VR_LITTLE_ENDIAN,
        ),
    ];
    let (from, to) = conversions[usize::from(*selector) % conversions.len()];
    let length = data.len() as u64;
    let mut whole = Vec::new();
    let converted = transcode::transcoder(data, length, from, to).read_to_end(&mut whole);
    let mut state = u32::from(*seed);
    let mut pieces = Vec::new();
    let mut reader = transcode::transcoder(data, length, from, to);
    let pieced = loop {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let mut piece = vec![0u8; 1 + (state >> 16) as usize % 64];
        match reader.read(&mut piece) {
            Ok(0) => break Ok(()),
            Ok(n) => pieces.extend_from_slice(&piece[..n]),
            Err(e) => break Err(e.to_string()),
        }
    };
    match (&converted, &pieced) {
        (Ok(_), Ok(())) => assert_eq!(whole, pieces, "the output depends on the read sizes"),
        (Err(e), Err(f)) => assert_eq!(&e.to_string(), f),
        _ => panic!("whole: {converted:?}, in pieces: {pieced:?}"),
    }
    if converted.is_ok() {
        if let Ok(before) = scan_fragments(from, data, || usize::MAX) {
            let after = scan_fragments(to, &whole, || usize::MAX);
            // Big endian values are swapped by their VR, so a UID given a numeric VR (as the
            // fuzzer does) changes; the structure must still be intact.
            if from == transfer_syntax::EXPLICIT_VR_BIG_ENDIAN {
                assert!(after.is_ok(), "{after:?}");
            } else {
                assert_eq!(after, Ok(before));
            }
        }
    }
}

/// A journal row log as a start reads it after a crash: whatever the bytes, the rows read
/// re-encode to a log that reads back as the same rows, byte for byte.
pub fn journal_log(data: &[u8]) {
    let rows = journal::log::parse(data);
    let mut encoded = Vec::new();
    for row in &rows {
        journal::log::encode(row, &mut encoded);
    }
    let again = journal::log::parse(&encoded);
    assert_eq!(
        again.len(),
        rows.len(),
        "re-encoded rows must all read back"
    );
    let mut twice = Vec::new();
    for row in &again {
        journal::log::encode(row, &mut twice);
    }
    assert_eq!(twice, encoded, "encode(parse(encode(rows))) differs");
}

/// TLS records after the handshake: `suite u8 | mode u8 | rest`. Mode 0: `rest` is opened as
/// it came from the network, never panicking. Otherwise `rest` is a series of `type u8 | len
/// u8 | bytes`, sealed by the peer and opened by us: the application data opened must be
/// exactly what was sealed up to the first record refused (KeyUpdates keep both in step).
pub fn tls_records(data: &[u8]) {
    use crate::tls::record::fixed::{pair, Suite};
    use crate::tls::record::Opened;
    let [suite, mode, rest @ ..] = data else {
        return;
    };
    let suite = Suite::ALL[usize::from(*suite) % Suite::ALL.len()];
    let (mut ours, mut peer) = pair(suite, 3).expect("fixed keys");
    let mut wire = rest.to_vec();
    let mut sealed = Vec::new();
    if *mode != 0 {
        wire.clear();
        let mut chunks = rest;
        while let [typ, len, tail @ ..] = chunks {
            let (bytes, tail) = tail.split_at(usize::from(*len).min(tail.len()));
            chunks = tail;
            // In TLS 1.3 a zero after the content is padding (RFC 8446 §5.4): a record cannot
            // say it is of type 0.
            if *typ == 0 && matches!(suite, Suite::Tls13Aes256Gcm) {
                continue;
            }
            let done = match (*typ, bytes) {
                (22, [24, 0, 0, 1, request @ (0 | 1)]) => peer.update_tx(*request == 1, &mut wire),
                (23, bytes) => peer.seal_data(bytes, &mut wire),
                (typ, bytes) => peer.seal(typ, bytes, &mut wire),
            };
            // A TLS 1.2 key at its limit (3 records here) seals no more.
            if done.is_err() {
                break;
            }
            if *typ == 23 {
                sealed.extend_from_slice(bytes);
            }
        }
    }
    let (mut at, mut written, mut opened) = (0, 0, Vec::new());
    let mut answer = Vec::new();
    let refused = loop {
        let len = match ours.record_len(&wire[at..]) {
            Ok(Some(len)) if at + len <= wire.len() => len,
            Ok(_) => break false,
            Err(_) => break true,
        };
        // Plaintext moved down over the records before it, as a direct read does.
        match ours.open(&mut wire, written, at, len, &mut answer) {
            Ok(Opened::Data(n)) => {
                opened.extend_from_slice(&wire[written..written + n]);
                written += n;
            }
            Ok(Opened::Nothing) => {}
            Ok(Opened::Closed) | Err(_) => break true,
        }
        at += len;
    };
    if *mode != 0 && !refused {
        assert!(
            opened == sealed,
            "opened {} bytes of {} sealed",
            opened.len(),
            sealed.len()
        );
    }
    if *mode != 0 {
        assert!(
            sealed.starts_with(&opened),
            "opened bytes that were not sealed"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    /// Replay every saved input of every target: crashes the fuzzer found (fixed since) and
    /// seeds that reach deep states.
    #[test]
    fn regression_corpus() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("rust/testdata/fuzz");
        type Target = (&'static str, fn(&[u8]));
        let targets: [Target; 7] = [
            ("pdu", super::pdu),
            ("negotiation", super::negotiation),
            ("command", super::command),
            ("scanner", super::scanner),
            ("transcoder", super::transcoder),
            ("journal_log", super::journal_log),
            ("tls_records", super::tls_records),
        ];
        for (target, run) in targets {
            let dir = root.join(target);
            let mut count = 0;
            for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.unwrap().path();
                // Shown with the panic message when an input fails.
                eprintln!("replaying {}", path.display());
                run(&fs::read(&path).unwrap());
                count += 1;
            }
            assert!(count > 0, "no corpus for {target}");
        }
    }
}
