//! Tests of the scanner, with a minimal data set encoder; the encoder and the scan helpers are
//! shared with the tests of `inflate`.

use super::*;
use crate::fuzzing::scan_fragments;
use flate2::write::DeflateEncoder;
use flate2::Compression;
use std::io::Write;

const IMPLICIT_LE_TS: &str = "1.2.840.10008.1.2";
pub(super) const EXPLICIT_LE_TS: &str = "1.2.840.10008.1.2.1";
const EXPLICIT_BE_TS: &str = "1.2.840.10008.1.2.2";
pub(super) const DEFLATED_TS: &str = "1.2.840.10008.1.2.1.99";

/// Minimal data set encoder for one transfer syntax.
pub(super) struct W {
    syntax: Syntax,
    pub(super) out: Vec<u8>,
}

impl W {
    pub(super) fn new(ts: &str) -> W {
        let e = Encoding::for_transfer_syntax(ts);
        W {
            syntax: Syntax {
                explicit_vr: e.explicit_vr,
                big_endian: e.big_endian,
            },
            out: Vec::new(),
        }
    }

    fn u16(&mut self, v: u16) -> &mut W {
        let b = if self.syntax.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.raw(&b)
    }

    fn u32(&mut self, v: u32) -> &mut W {
        let b = if self.syntax.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.raw(&b)
    }

    pub(super) fn raw(&mut self, bytes: &[u8]) -> &mut W {
        self.out.extend_from_slice(bytes);
        self
    }

    fn tag(&mut self, tag: u32) -> &mut W {
        self.u16((tag >> 16) as u16).u16(tag as u16)
    }

    /// Element header; the explicit VR form follows the VR.
    pub(super) fn head(&mut self, tag: u32, vr: &[u8; 2], len: u32) -> &mut W {
        self.tag(tag);
        if !self.syntax.explicit_vr {
            return self.u32(len);
        }
        self.raw(vr);
        if crate::vr::has_long_length(vr) == Some(true) {
            self.u16(0).u32(len)
        } else {
            self.u16(len as u16)
        }
    }

    pub(super) fn elem(&mut self, tag: u32, vr: &[u8; 2], value: &[u8]) -> &mut W {
        self.head(tag, vr, value.len() as u32).raw(value)
    }

    /// Item or delimiter: tag and 32-bit length, no VR.
    fn item(&mut self, tag: u32, len: u32) -> &mut W {
        self.tag(tag).u32(len)
    }
}

/// A data set exercising every skipping path before the wanted attributes, then pixel data.
pub(super) fn sample(ts: &str) -> Vec<u8> {
    let mut w = W::new(ts);
    w.elem(0x0008_0005, b"CS", b"ISO_IR 100");
    // Undefined-length SQ: an undefined-length item with decoys (one in a nested SQ),
    // then a defined-length item whose bytes look like delimiters.
    w.head(0x0008_0006, b"SQ", UNDEFINED)
        .item(ITEM, UNDEFINED)
        .elem(SOP_INSTANCE_UID, b"UI", b"9.9.9.9\0")
        .head(0x0040_A730, b"SQ", UNDEFINED)
        .item(ITEM, UNDEFINED)
        .elem(SERIES_INSTANCE_UID, b"UI", b"8.8\0")
        .item(ITEM_DELIMITER, 0)
        .item(SEQUENCE_DELIMITER, 0)
        .item(ITEM_DELIMITER, 0)
        .item(ITEM, 8)
        .raw(&[0xFE, 0xFF, 0xDD, 0xE0, 0xFE, 0xFF, 0x0D, 0xE0])
        .item(SEQUENCE_DELIMITER, 0);
    // Defined-length SQ holding an undefined-length SQ: skipped without parsing.
    let mut item = W::new(ts);
    item.elem(SOP_CLASS_UID, b"UI", b"7.7\0")
        .head(0x0008_1140, b"SQ", UNDEFINED)
        .item(SEQUENCE_DELIMITER, 0);
    let mut seq = W::new(ts);
    seq.item(ITEM, item.out.len() as u32).raw(&item.out);
    w.head(0x0008_0012, b"SQ", seq.out.len() as u32)
        .raw(&seq.out);
    w.elem(SOP_CLASS_UID, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0")
        .elem(SOP_INSTANCE_UID, b"UI", b"1.2.3.4.5\0")
        .elem(STUDY_DATE, b"DA", b"20240101")
        .elem(ACCESSION_NUMBER, b"SH", b" ACC7 ")
        .elem(MODALITY, b"CS", b"CT")
        .elem(0x0009_0010, b"LO", b"PRIVATE ");
    // UN with undefined length: its content is implicit VR LE in every syntax.
    let mut un = W::new(IMPLICIT_LE_TS);
    un.item(ITEM, UNDEFINED)
        .elem(PATIENT_ID, b"LO", b"DECOY ")
        .item(ITEM_DELIMITER, 0)
        .item(SEQUENCE_DELIMITER, 0);
    w.head(0x0009_1010, b"UN", UNDEFINED).raw(&un.out);
    w.elem(0x0010_0010, b"PN", b"Doe^John")
        .elem(PATIENT_ID, b"LO", b"  PID42 ")
        .elem(0x0019_0010, b"LO", b"VENDOR");
    // Encapsulated-style OB: offset table plus fragments that look like headers.
    w.head(0x0019_1010, b"OB", UNDEFINED)
        .item(ITEM, 0)
        .item(ITEM, 8)
        .raw(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF])
        .item(ITEM, 4)
        .raw(&[0xFE, 0xFF, 0xDD, 0xE0])
        .item(SEQUENCE_DELIMITER, 0);
    w.elem(STUDY_INSTANCE_UID, b"UI", b"1.2.3.6\0")
        .elem(SERIES_INSTANCE_UID, b"UI", b"1.2.3.7 ")
        .elem(0x0020_0010, b"SH", b"STUDY1")
        .elem(0x0028_0010, b"US", &[0, 2])
        .elem(0x7FE0_0010, b"OW", &[0xAB; 64]);
    w.out
}

pub(super) fn sample_attrs() -> SortAttributes {
    SortAttributes {
        sop_class_uid: Some(b"1.2.840.10008.5.1.4.1.1.2".to_vec()),
        sop_instance_uid: Some(b"1.2.3.4.5".to_vec()),
        study_date: Some(b"20240101".to_vec()),
        accession_number: Some(b"ACC7".to_vec()),
        modality: Some(b"CT".to_vec()),
        patient_id: Some(b"PID42".to_vec()),
        study_instance_uid: Some(b"1.2.3.6".to_vec()),
        series_instance_uid: Some(b"1.2.3.7".to_vec()),
        elements: Vec::new(),
    }
}

pub(super) fn deflate(data: &[u8]) -> Vec<u8> {
    let mut enc = DeflateEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Deterministic split sizes (LCG), 1..=97 bytes.
struct Lcg(u64);

impl Lcg {
    fn next_len(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        1 + (self.0 >> 33) as usize % 97
    }
}

pub(super) fn scan(ts: &str, data: &[u8]) -> Result<SortAttributes, ScanError> {
    scan_fragments(ts, data, || usize::MAX)
}

/// Scans in one piece, byte by byte and at random split points; all must agree.
pub(super) fn scan_all_ways(ts: &str, data: &[u8]) -> Result<SortAttributes, ScanError> {
    let whole = scan(ts, data);
    assert_eq!(scan_fragments(ts, data, || 1), whole, "byte by byte");
    for seed in 0..8 {
        let mut lcg = Lcg(seed);
        assert_eq!(
            scan_fragments(ts, data, || lcg.next_len()),
            whole,
            "seed {seed}"
        );
    }
    whole
}

#[test]
fn encoding_for_transfer_syntax() {
    let e = |explicit_vr, big_endian, deflated| Encoding {
        explicit_vr,
        big_endian,
        deflated,
    };
    assert_eq!(
        Encoding::for_transfer_syntax(IMPLICIT_LE_TS),
        e(false, false, false)
    );
    assert_eq!(
        Encoding::for_transfer_syntax("1.2.840.10008.1.2\0"),
        e(false, false, false)
    );
    assert_eq!(
        Encoding::for_transfer_syntax(EXPLICIT_LE_TS),
        e(true, false, false)
    );
    assert_eq!(
        Encoding::for_transfer_syntax(EXPLICIT_BE_TS),
        e(true, true, false)
    );
    for ts in [
        DEFLATED_TS,
        "1.2.840.10008.1.2.4.95",
        "1.2.840.10008.1.2.4.205",
    ] {
        assert_eq!(Encoding::for_transfer_syntax(ts), e(true, false, true));
    }
    for ts in [
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.201",
    ] {
        assert_eq!(Encoding::for_transfer_syntax(ts), e(true, false, false));
    }
}

#[test]
fn sample_in_each_syntax() {
    for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
        assert_eq!(scan_all_ways(ts, &sample(ts)), Ok(sample_attrs()), "{ts}");
    }
}

#[test]
fn missing_and_empty_attributes() {
    for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
        let mut w = W::new(ts);
        w.elem(SOP_CLASS_UID, b"UI", b"1.2\0")
            .elem(PATIENT_ID, b"LO", b"")
            .elem(STUDY_INSTANCE_UID, b"UI", b"    ")
            .elem(0x0028_0010, b"US", &[0, 1]);
        let attrs = scan_all_ways(ts, &w.out).unwrap();
        assert_eq!(
            attrs,
            SortAttributes {
                sop_class_uid: Some(b"1.2".to_vec()),
                patient_id: Some(Vec::new()),
                study_instance_uid: Some(Vec::new()),
                ..SortAttributes::default()
            },
            "{ts}"
        );
    }
    assert_eq!(
        scan_all_ways(EXPLICIT_LE_TS, &[]),
        Ok(SortAttributes::default())
    );
}

#[test]
fn padding_removed() {
    let mut w = W::new(EXPLICIT_LE_TS);
    w.elem(SOP_CLASS_UID, b"UI", b" 1.2\0\0")
        .elem(PATIENT_ID, b"LO", b"   A B \0")
        .elem(SERIES_INSTANCE_UID, b"UI", b"3.4 \0");
    let attrs = scan_all_ways(EXPLICIT_LE_TS, &w.out).unwrap();
    // Leading spaces are significant except in PatientID (LO).
    assert_eq!(attrs.sop_class_uid, Some(b" 1.2".to_vec()));
    assert_eq!(attrs.patient_id, Some(b"A B".to_vec()));
    assert_eq!(attrs.series_instance_uid, Some(b"3.4".to_vec()));
}

#[test]
fn nested_attributes_ignored() {
    for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
        let mut w = W::new(ts);
        w.head(0x0008_0006, b"SQ", UNDEFINED)
            .item(ITEM, UNDEFINED)
            .elem(SOP_INSTANCE_UID, b"UI", b"9.9\0")
            .item(ITEM_DELIMITER, 0)
            .item(SEQUENCE_DELIMITER, 0)
            .elem(SOP_CLASS_UID, b"UI", b"1.2\0");
        let attrs = scan_all_ways(ts, &w.out).unwrap();
        assert_eq!(attrs.sop_class_uid, Some(b"1.2".to_vec()), "{ts}");
        assert_eq!(attrs.sop_instance_uid, None, "{ts}");
    }
}

#[test]
fn done_after_series_and_later_feeds_ignored() {
    for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
        let data = sample(ts);
        let series = W::new(ts)
            .elem(SERIES_INSTANCE_UID, b"UI", b"1.2.3.7 ")
            .out
            .clone();
        let end = data
            .windows(series.len())
            .position(|w| w == series)
            .unwrap()
            + series.len();
        let mut scanner = Scanner::new(Encoding::for_transfer_syntax(ts));
        scanner.feed(&data[..end - 1]).unwrap();
        assert!(!scanner.is_done());
        scanner.feed(&data[end - 1..end]).unwrap();
        assert!(scanner.is_done());
        scanner.feed(&[0xFF; 100]).unwrap();
        scanner.feed(b"garbage").unwrap();
        assert_eq!(scanner.finish(), Ok(sample_attrs()));
    }
    // A larger top-level tag also ends the scan, even without (0020,000E).
    let mut w = W::new(EXPLICIT_LE_TS);
    w.elem(SOP_CLASS_UID, b"UI", b"1.2\0")
        .elem(0x0028_0010, b"US", &[0, 1]);
    let mut scanner = Scanner::new(Encoding::for_transfer_syntax(EXPLICIT_LE_TS));
    scanner.feed(&w.out).unwrap();
    assert!(scanner.is_done());
    scanner.feed(&[0xFF; 3]).unwrap();
    assert_eq!(
        scanner.finish().unwrap().sop_class_uid,
        Some(b"1.2".to_vec())
    );
}

#[test]
fn truncated_inputs() {
    for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
        let mut w = W::new(ts);
        w.elem(SOP_CLASS_UID, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0");
        let boundary = w.out.len();
        w.elem(PATIENT_ID, b"LO", b"PATIENT1");
        // Cut at the element boundary: fine, with what was found.
        let found = scan_all_ways(ts, &w.out[..boundary]).unwrap();
        assert_eq!(
            found.sop_class_uid,
            Some(b"1.2.840.10008.5.1.4.1.1.2".to_vec())
        );
        // Cut in a header, in a captured value.
        for cut in [boundary + 3, boundary + 7, boundary + 10, 5, 20] {
            assert_eq!(
                scan_all_ways(ts, &w.out[..cut]),
                Err(ScanError::Truncated),
                "{ts} cut {cut}"
            );
        }
        // Cut in a skipped value and inside an open sequence.
        let mut skipped = W::new(ts);
        skipped.head(0x0008_0005, b"OB", 10).raw(&[0; 4]);
        assert_eq!(scan_all_ways(ts, &skipped.out), Err(ScanError::Truncated));
        let mut open = W::new(ts);
        open.head(0x0008_0006, b"SQ", UNDEFINED)
            .item(ITEM, UNDEFINED)
            .elem(0x0008_0100, b"SH", b"CODE")
            .item(ITEM_DELIMITER, 0);
        assert_eq!(scan_all_ways(ts, &open.out), Err(ScanError::Truncated));
    }
}

#[test]
fn every_prefix_is_ok_or_truncated() {
    for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
        let data = sample(ts);
        for cut in 0..=data.len() {
            match scan(ts, &data[..cut]) {
                Ok(_) | Err(ScanError::Truncated) => {}
                other => panic!("{ts} cut {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn long_value_capped() {
    for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
        let mut w = W::new(ts);
        w.elem(PATIENT_ID, b"LO", &vec![b'A'; 20 * 1024])
            .elem(STUDY_INSTANCE_UID, b"UI", b"1.2\0");
        let attrs = scan_all_ways(ts, &w.out).unwrap();
        assert_eq!(attrs.patient_id, Some(vec![b'A'; MAX_VALUE_LEN]), "{ts}");
        assert_eq!(attrs.study_instance_uid, Some(b"1.2".to_vec()), "{ts}");
    }
}

fn nested(ts: &str, depth: usize) -> Vec<u8> {
    let mut w = W::new(ts);
    for _ in 0..depth {
        w.head(0x0008_0006, b"SQ", UNDEFINED).item(ITEM, UNDEFINED);
    }
    for _ in 0..depth {
        w.item(ITEM_DELIMITER, 0).item(SEQUENCE_DELIMITER, 0);
    }
    w.elem(SOP_CLASS_UID, b"UI", b"1.2\0");
    w.out
}

#[test]
fn nesting_depth_limit() {
    for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
        let attrs = scan_all_ways(ts, &nested(ts, MAX_DEPTH)).unwrap();
        assert_eq!(attrs.sop_class_uid, Some(b"1.2".to_vec()));
        assert_eq!(
            scan_all_ways(ts, &nested(ts, MAX_DEPTH + 1)),
            Err(ScanError::TooDeep)
        );
    }
}

#[test]
fn malformed_inputs() {
    let cases: [(&str, Vec<u8>); 6] = [
        (
            EXPLICIT_LE_TS,
            W::new(EXPLICIT_LE_TS)
                .elem(0x0008_0005, b"cs", b"AB")
                .out
                .clone(),
        ),
        (
            EXPLICIT_BE_TS,
            W::new(EXPLICIT_BE_TS)
                .elem(0x0008_0005, b"\0\0", b"")
                .out
                .clone(),
        ),
        (
            EXPLICIT_LE_TS,
            W::new(EXPLICIT_LE_TS).item(ITEM, 0).out.clone(),
        ),
        (
            IMPLICIT_LE_TS,
            W::new(IMPLICIT_LE_TS)
                .item(SEQUENCE_DELIMITER, 0)
                .out
                .clone(),
        ),
        (
            EXPLICIT_LE_TS,
            W::new(EXPLICIT_LE_TS)
                .head(0x0008_0005, b"UT", UNDEFINED)
                .out
                .clone(),
        ),
        (
            EXPLICIT_LE_TS,
            W::new(EXPLICIT_LE_TS)
                .head(0x0008_0006, b"SQ", UNDEFINED)
                .elem(0x0008_0100, b"SH", b"CODE")
                .out
                .clone(),
        ),
    ];
    for (i, (ts, data)) in cases.iter().enumerate() {
        assert!(
            matches!(scan_all_ways(ts, data), Err(ScanError::Malformed(_))),
            "case {i}"
        );
    }
    // After an error, feeds are no-ops and finish reports the error.
    let mut scanner = Scanner::new(Encoding::for_transfer_syntax(EXPLICIT_LE_TS));
    assert!(scanner.feed(&cases[0].1).is_err());
    assert_eq!(scanner.feed(&sample(EXPLICIT_LE_TS)), Ok(()));
    assert!(!scanner.is_done());
    assert_eq!(scanner.finish(), Err(ScanError::Malformed("invalid VR")));
}

#[test]
fn errors_display() {
    let errors = [
        ScanError::Truncated,
        ScanError::Malformed("x"),
        ScanError::TooDeep,
        ScanError::Deflate("y".into()),
    ];
    for e in errors {
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(!boxed.to_string().is_empty());
    }
}

/// Every truncation and single-byte mutation of a small data set: no panic, and the
/// outcome never depends on how the bytes were split.
#[test]
fn mutations_never_panic() {
    let mut inputs = Vec::new();
    for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
        inputs.push((ts, sample(ts)));
    }
    inputs.push((DEFLATED_TS, deflate(&sample(EXPLICIT_LE_TS))));
    for (ts, data) in &inputs {
        for cut in 0..data.len() {
            let _ = scan_fragments(ts, &data[..cut], || 3);
        }
        for i in 0..data.len() {
            let b = data[i];
            for v in [0x00, 0xFF, 0xFE, 0xE0, 0xDD, b ^ 0x01, b ^ 0x80] {
                let mut mutated = data.clone();
                mutated[i] = v;
                let whole = scan(ts, &mutated);
                let mut lcg = Lcg(i as u64);
                assert_eq!(
                    scan_fragments(ts, &mutated, || lcg.next_len()),
                    whole,
                    "{ts} byte {i} = {v:#x}"
                );
            }
        }
    }
}

/// A kept element: tag, VR, value.
type Kept<'a> = (u32, Option<[u8; 2]>, &'a [u8]);

fn scan_keeping(ts: &str, data: &[u8]) -> SortAttributes {
    let mut scanner = Scanner::new(Encoding::for_transfer_syntax(ts)).keeping_elements(true);
    scanner.feed(data).unwrap();
    scanner.finish().unwrap()
}

#[test]
fn kept_elements_are_as_encoded_and_whole() {
    for ts in [IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS] {
        let attrs = scan_keeping(ts, &sample(ts));
        let vr = |v: &[u8; 2]| (ts != IMPLICIT_LE_TS).then_some(*v);
        let kept: Vec<Kept> = attrs
            .elements
            .iter()
            .map(|e| (e.tag, e.vr, e.value.as_slice()))
            .collect();
        let expected: [Kept; 8] = [
            (SOP_CLASS_UID, vr(b"UI"), b"1.2.840.10008.5.1.4.1.1.2\0"),
            (SOP_INSTANCE_UID, vr(b"UI"), b"1.2.3.4.5\0"),
            (STUDY_DATE, vr(b"DA"), b"20240101"),
            (ACCESSION_NUMBER, vr(b"SH"), b" ACC7 "),
            (MODALITY, vr(b"CS"), b"CT"),
            (PATIENT_ID, vr(b"LO"), b"  PID42 "),
            (STUDY_INSTANCE_UID, vr(b"UI"), b"1.2.3.6\0"),
            (SERIES_INSTANCE_UID, vr(b"UI"), b"1.2.3.7 "),
        ];
        assert_eq!(kept, expected, "{ts}");
        // The filing attributes are the same whether elements are kept or not.
        let without = SortAttributes {
            elements: Vec::new(),
            ..attrs
        };
        assert_eq!(without, sample_attrs(), "{ts}");
    }
    // A value cut at MAX_VALUE_LEN is not kept: its consumer would decode a prefix.
    let long = vec![b'1'; MAX_VALUE_LEN + 2];
    let mut w = W::new(IMPLICIT_LE_TS);
    w.elem(SOP_INSTANCE_UID, b"UI", &long);
    let attrs = scan_keeping(IMPLICIT_LE_TS, &w.out);
    assert!(attrs.elements.is_empty());
    assert_eq!(attrs.sop_instance_uid.map(|v| v.len()), Some(MAX_VALUE_LEN));
}
