//! Tests of A-ASSOCIATE-RQ/AC parsing and encoding, items and sub-items included.

use super::*;
use crate::pdu::tests::parse;
use crate::pdu::{ae_field, ae_title, pdata_header, Pdu, APPLICATION_CONTEXT};

/// Hand-built item, independent of the encoder under test.
fn item(item_type: u8, value: &[u8]) -> Vec<u8> {
    let mut v = vec![item_type, 0];
    v.extend_from_slice(&(value.len() as u16).to_be_bytes());
    v.extend_from_slice(value);
    v
}

/// A-ASSOCIATE body: fixed part followed by `items`.
fn assoc_body(items: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![0, 1, 0, 0];
    v.extend_from_slice(b"STORESCP        ");
    v.extend_from_slice(b"STORESCU        ");
    v.extend_from_slice(&[0; 32]);
    for i in items {
        v.extend_from_slice(i);
    }
    v
}

fn app_ctx() -> Vec<u8> {
    item(0x10, APPLICATION_CONTEXT.as_bytes())
}

fn pc_rq(id: u8, subs: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![id, 0, 0, 0];
    for s in subs {
        v.extend_from_slice(s);
    }
    item(0x20, &v)
}

fn echo_pc() -> Vec<u8> {
    pc_rq(
        1,
        &[
            item(0x30, b"1.2.840.10008.1.1"),
            item(0x40, b"1.2.840.10008.1.2"),
        ],
    )
}

fn user_info(subs: &[Vec<u8>]) -> Vec<u8> {
    item(0x50, &subs.concat())
}

/// Also a seed of the fuzz test in `pdu`'s own tests.
pub(in crate::pdu) fn sample_rq() -> AssociateRq {
    AssociateRq {
        protocol_version: 1,
        called_ae: ae_field("STORESCP"),
        calling_ae: ae_field("MODALITY_01"),
        application_context: APPLICATION_CONTEXT.into(),
        presentation_contexts: vec![
            PresentationContextRq {
                id: 1,
                abstract_syntax: "1.2.840.10008.1.1".into(),
                transfer_syntaxes: vec!["1.2.840.10008.1.2".into()],
            },
            PresentationContextRq {
                id: 3,
                abstract_syntax: "1.2.840.10008.5.1.4.1.1.2".into(),
                transfer_syntaxes: vec![
                    "1.2.840.10008.1.2.1".into(),
                    "1.2.840.10008.1.2".into(),
                    "1.2.840.10008.1.2.4.90".into(),
                ],
            },
        ],
        user_info: UserInfo {
            max_length: Some(16384),
            implementation_class_uid: Some("1.2.826.0.1.3680043.9.3811.2.1.0".into()),
            async_ops_window: Some((3, 1)),
            role_selections: vec![RoleSelection {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                scu_role: 1,
                scp_role: 0,
            }],
            implementation_version_name: Some("INLET_010".into()),
            extended_negotiation: vec![
                ("1.2.840.10008.5.1.4.1.2.1.1".into(), vec![1, 0, 1]),
                ("1.2.840.10008.5.1.4.1.1.4".into(), vec![]),
            ],
            common_extended_negotiation: vec![vec![0, 3, b'1', b'.', b'2', 0, 0, 0, 0]],
            user_identity_rq: Some(UserIdentityRq {
                identity_type: 2,
                positive_response_requested: true,
                primary: b"alice".to_vec(),
                secondary: b"s3cret".to_vec(),
            }),
            user_identity_ac: None,
        },
    }
}

/// Also a seed of the fuzz test in `pdu`'s own tests.
pub(in crate::pdu) fn sample_ac() -> AssociateAc {
    AssociateAc {
        protocol_version: 1,
        called_ae: ae_field("STORESCP"),
        calling_ae: ae_field("MODALITY_01"),
        application_context: APPLICATION_CONTEXT.into(),
        presentation_contexts: vec![
            PresentationContextAc {
                id: 1,
                result: 0,
                transfer_syntax: "1.2.840.10008.1.2".into(),
            },
            PresentationContextAc {
                id: 3,
                result: 4,
                transfer_syntax: String::new(),
            },
        ],
        user_info: UserInfo {
            max_length: Some(0),
            implementation_class_uid: Some("1.2.3.4".into()),
            implementation_version_name: Some("DICOM_INLET".into()),
            async_ops_window: Some((1, 1)),
            role_selections: vec![RoleSelection {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                scu_role: 0,
                scp_role: 1,
            }],
            user_identity_ac: Some(b"token".to_vec()),
            ..UserInfo::default()
        },
    }
}

#[test]
fn associate_rq_round_trip() {
    let rq = sample_rq();
    let mut out = vec![0xEE]; // encode appends
    rq.encode(&mut out);
    assert_eq!(out[0], 0xEE);
    assert_eq!(parse(&out[1..]), Ok(Pdu::AssociateRq(rq)));
}

#[test]
fn associate_rq_round_trip_minimal() {
    let mut rq = sample_rq();
    rq.user_info = UserInfo::default();
    rq.presentation_contexts.truncate(1);
    let mut out = Vec::new();
    rq.encode(&mut out);
    assert_eq!(parse(&out), Ok(Pdu::AssociateRq(rq)));
}

#[test]
fn associate_ac_round_trip() {
    let ac = sample_ac();
    let mut out = Vec::new();
    ac.encode(&mut out);
    assert_eq!(out[0], ASSOCIATE_AC);
    assert_eq!(parse(&out), Ok(Pdu::AssociateAc(ac)));
}

#[test]
fn user_identity_variants_round_trip() {
    for (primary, secondary, flag) in [(&b"bob"[..], &b""[..], false), (b"", b"", true)] {
        let mut rq = sample_rq();
        rq.user_info.user_identity_rq = Some(UserIdentityRq {
            identity_type: 1,
            positive_response_requested: flag,
            primary: primary.to_vec(),
            secondary: secondary.to_vec(),
        });
        rq.user_info.user_identity_ac = Some(Vec::new());
        let mut out = Vec::new();
        rq.encode(&mut out);
        assert_eq!(parse(&out), Ok(Pdu::AssociateRq(rq)));
    }
}

#[test]
fn parses_dcmtk_style_rq_with_padded_uids() {
    let parts: &[&[u8]] = &[
        &[0x01, 0x00, 0x00, 0x00, 0x00, 0xD1], // A-ASSOCIATE-RQ, 209 bytes
        &[0x00, 0x01, 0x00, 0x00],             // version 1, reserved
        b"ANY-SCP         ",
        b"ECHOSCU         ",
        &[0; 32],
        &[0x10, 0x00, 0x00, 0x16],
        b"1.2.840.10008.3.1.1.1\0",
        &[0x20, 0x00, 0x00, 0x30, 0x01, 0x00, 0x00, 0x00],
        &[0x30, 0x00, 0x00, 0x12],
        b"1.2.840.10008.1.1\0",
        &[0x40, 0x00, 0x00, 0x12],
        b"1.2.840.10008.1.2\0",
        &[0x50, 0x00, 0x00, 0x3B],
        &[0x51, 0x00, 0x00, 0x04, 0x00, 0x00, 0x40, 0x00],
        &[0x52, 0x00, 0x00, 0x1C],
        b"1.2.276.0.7230010.3.0.3.6.9\0",
        &[0x55, 0x00, 0x00, 0x0F],
        b"OFFIS_DCMTK_369",
    ];
    let bytes = parts.concat();
    let Ok(Pdu::AssociateRq(rq)) = parse(&bytes) else {
        panic!("not parsed")
    };
    assert_eq!(rq.protocol_version, 1);
    assert_eq!(ae_title(&rq.called_ae), Some("ANY-SCP"));
    assert_eq!(ae_title(&rq.calling_ae), Some("ECHOSCU"));
    assert_eq!(rq.application_context, APPLICATION_CONTEXT);
    assert_eq!(
        rq.presentation_contexts,
        [PresentationContextRq {
            id: 1,
            abstract_syntax: "1.2.840.10008.1.1".into(),
            transfer_syntaxes: vec!["1.2.840.10008.1.2".into()],
        }]
    );
    let want = UserInfo {
        max_length: Some(16384),
        implementation_class_uid: Some("1.2.276.0.7230010.3.0.3.6.9".into()),
        implementation_version_name: Some("OFFIS_DCMTK_369".into()),
        ..UserInfo::default()
    };
    assert_eq!(rq.user_info, want);
}

#[test]
fn ac_rejected_context_may_lack_transfer_syntax() {
    let body = assoc_body(&[app_ctx(), item(0x21, &[7, 0, 3, 0]), user_info(&[])]);
    let Ok(Pdu::AssociateAc(ac)) = Pdu::parse(ASSOCIATE_AC, &body) else {
        panic!("not parsed")
    };
    let want = PresentationContextAc {
        id: 7,
        result: 3,
        transfer_syntax: String::new(),
    };
    assert_eq!(ac.presentation_contexts, [want]);

    let body = assoc_body(&[app_ctx(), item(0x21, &[7, 0, 0, 0]), user_info(&[])]);
    assert!(matches!(
        Pdu::parse(ASSOCIATE_AC, &body),
        Err(PduError::Malformed(_))
    ));
}

#[test]
fn unknown_items_are_skipped_and_odd_ids_exposed() {
    let pc_even = pc_rq(
        0,
        &[
            item(0x77, b"junk"),
            item(0x30, b"1.2.3 "),
            item(0x40, b"1.2.840.10008.1.2"),
        ],
    );
    let body = assoc_body(&[
        item(0x99, b"future item"),
        app_ctx(),
        item(0x21, &[1, 0, 0, 0]), // AC flavour inside an RQ
        pc_even,
        user_info(&[item(0x5F, b"?"), item(0x51, &[0, 0, 0x80, 0])]),
    ]);
    let Ok(Pdu::AssociateRq(rq)) = Pdu::parse(ASSOCIATE_RQ, &body) else {
        panic!("not parsed")
    };
    assert_eq!(rq.presentation_contexts.len(), 1);
    assert_eq!(rq.presentation_contexts[0].id, 0);
    assert_eq!(rq.presentation_contexts[0].abstract_syntax, "1.2.3");
    assert_eq!(rq.user_info.max_length, Some(0x8000));
    // The user information item is mandatory, but its absence is harmless.
    let Ok(Pdu::AssociateRq(rq)) = Pdu::parse(ASSOCIATE_RQ, &assoc_body(&[app_ctx(), echo_pc()]))
    else {
        panic!("not parsed")
    };
    assert_eq!(rq.user_info, UserInfo::default());
}

/// RQ body whose user information item holds just `sub`.
fn with_ui(sub: Vec<u8>) -> Vec<u8> {
    assoc_body(&[app_ctx(), echo_pc(), user_info(&[sub])])
}

#[test]
fn blank_implementation_version_name_is_absent() {
    // Padding only names nothing; taking it as a name of 0 bytes would encode an item that
    // does not parse again (found by the `pdu` fuzz target).
    for blank in [&b"   "[..], &[0; 16]] {
        let body = with_ui(item(UI_IMPLEMENTATION_VERSION, blank));
        let Ok(Pdu::AssociateRq(rq)) = Pdu::parse(ASSOCIATE_RQ, &body) else {
            panic!("not parsed")
        };
        assert_eq!(rq.user_info.implementation_version_name, None);
    }
}

/// RQ body whose one presentation context holds `subs`.
fn with_pc(subs: &[Vec<u8>]) -> Vec<u8> {
    assoc_body(&[app_ctx(), pc_rq(1, subs)])
}

fn assert_kind(name: &str, got: Result<Pdu<'_>, PduError>, want: &PduError) {
    let same = matches!(
        (&got, want),
        (Err(PduError::Malformed(_)), PduError::Malformed(_))
            | (Err(PduError::InvalidValue(_)), PduError::InvalidValue(_))
    );
    assert!(same, "{name}: got {got:?}, want {want:?}");
}

#[test]
fn malformed_associate_rejected() {
    let (mal, inv) = (PduError::Malformed(""), PduError::InvalidValue(""));
    let ui = user_info(&[item(0x51, &[0, 0, 0x40, 0])]);
    let mut long_item = app_ctx();
    long_item[3] += 1; // one byte past the end of the PDU

    // Shapes shared by RQ and AC: fixed part, items, user information.
    #[rustfmt::skip]
    let shared = [
        ("truncated fixed part", assoc_body(&[])[..67].to_vec(), &mal),
        ("item past PDU", assoc_body(&[ui.clone(), long_item]), &mal),
        ("item header cut", [assoc_body(&[app_ctx()]), vec![0x50, 0, 0]].concat(), &mal),
        ("no app context", assoc_body(&[echo_pc(), ui.clone()]), &mal),
        ("two app contexts", assoc_body(&[app_ctx(), app_ctx(), ui.clone()]), &mal),
        ("non-ASCII app context", assoc_body(&[item(0x10, &[b'1', 0xFF])]), &inv),
        ("two user info items", assoc_body(&[app_ctx(), ui.clone(), ui]), &mal),
        ("sub-item past item", with_ui(vec![0x51, 0, 0, 5, 0, 0, 0, 0]), &mal),
        ("0x51 of 2 bytes", with_ui(item(0x51, &[0, 1])), &mal),
        ("0x51 of 5 bytes", with_ui(item(0x51, &[0; 5])), &mal),
        ("two 0x51", with_ui([item(0x51, &[0; 4]), item(0x51, &[0; 4])].concat()), &mal),
        ("non-ASCII 0x52", with_ui(item(0x52, b"1.2\x80")), &inv),
        ("0x53 of 3 bytes", with_ui(item(0x53, &[0; 3])), &mal),
        ("0x54 uid past item", with_ui(item(0x54, &[0, 9, b'1', 1, 0])), &mal),
        ("0x54 trailing byte", with_ui(item(0x54, &[0, 1, b'1', 1, 0, 0])), &mal),
        ("0x55 empty", with_ui(item(0x55, b"")), &inv),
        ("0x55 17 bytes", with_ui(item(0x55, &[b'A'; 17])), &inv),
        ("0x56 uid past item", with_ui(item(0x56, &[0, 5, b'1'])), &mal),
        ("0x58 primary past item", with_ui(item(0x58, &[1, 0, 0, 4, b'a', 0, 0])), &mal),
        ("0x58 no secondary", with_ui(item(0x58, &[1, 0, 0, 1, b'a'])), &mal),
        ("0x58 trailing bytes", with_ui(item(0x58, &[1, 0, 0, 0, 0, 0, 9])), &mal),
        ("0x59 short", with_ui(item(0x59, &[0, 3, 1])), &mal),
    ];
    for (name, body, want) in &shared {
        assert_kind(name, Pdu::parse(ASSOCIATE_RQ, body), want);
        assert_kind(name, Pdu::parse(ASSOCIATE_AC, body), want);
    }

    let (abs, ts) = (item(0x30, b"1.2.3"), item(0x40, b"1.2.840.10008.1.2"));
    let mut long_sub = abs.clone();
    long_sub[3] += 1; // abstract syntax one byte past its presentation context item
    #[rustfmt::skip]
    let rq_only = [
        ("pc sub-item past item", with_pc(&[ts.clone(), long_sub]), &mal),
        ("pc item too short", assoc_body(&[app_ctx(), item(0x20, &[1, 0])]), &mal),
        ("no abstract syntax", with_pc(std::slice::from_ref(&ts)), &mal),
        ("no transfer syntax", with_pc(std::slice::from_ref(&abs)), &mal),
        ("two abstract syntaxes", with_pc(&[abs.clone(), abs.clone(), ts.clone()]), &mal),
        ("empty abstract syntax", with_pc(&[item(0x30, b"\0\0"), ts.clone()]), &inv),
        ("non-ASCII abstract", with_pc(&[item(0x30, "1.\u{e9}".as_bytes()), ts]), &inv),
        ("non-ASCII transfer", with_pc(&[abs, item(0x40, &[b'1', 0xC3])]), &inv),
    ];
    for (name, body, want) in &rq_only {
        assert_kind(name, Pdu::parse(ASSOCIATE_RQ, body), want);
    }

    let ac_pc = [vec![1, 0, 0, 0], item(0x40, b"1"), item(0x40, b"2")].concat();
    let ac_body = assoc_body(&[app_ctx(), item(0x21, &ac_pc)]);
    let got = Pdu::parse(ASSOCIATE_AC, &ac_body);
    assert_kind("AC two transfer syntaxes", got, &mal);
}

#[test]
fn oversize_values_keep_framing_consistent() {
    let mut rq = sample_rq();
    rq.application_context = "1".repeat(70_000);
    let mut out = Vec::new();
    rq.encode(&mut out);
    let Ok(Pdu::AssociateRq(got)) = parse(&out) else {
        panic!("not parsed")
    };
    assert_eq!(got.application_context.len(), usize::from(u16::MAX));
    assert_eq!(got.presentation_contexts, rq.presentation_contexts);

    let mut rq = sample_rq();
    rq.user_info.user_identity_rq.as_mut().unwrap().primary = vec![b'p'; 70_000];
    let mut out = Vec::new();
    rq.encode(&mut out);
    assert!(parse(&out).is_err()); // the inner value cannot fit; framing still consistent

    assert_eq!(pdata_header(1, true, true, u32::MAX)[2..10], [0xFF; 8]);
}
