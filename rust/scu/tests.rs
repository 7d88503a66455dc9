//! The SCU against the crate's own server (and a scripted acceptor for what the server does
//! not do, like granting an asynchronous window or aborting) over real loopback sockets.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::*;
use crate::association::{AcceptorPolicy, VERIFICATION_SOP_CLASS};
use crate::dimse::Response;
use crate::events::Event;
use crate::file_meta::FileMeta;
use crate::journal::Feed;
use crate::layout::SortKey;
use crate::pdu::{Pdu, HEADER_LEN};
use crate::server::{Server, ServerConfig};
use crate::store::Duplicates;
use crate::transfer_syntax::{
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
};
use flate2::{write::DeflateEncoder, Compression};

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const TIMEOUT: Duration = Duration::from_secs(20);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dicom-inlet-scu-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn policy(require_called_ae: bool) -> AcceptorPolicy {
    AcceptorPolicy {
        ae_title: "INLET".into(),
        require_called_ae,
        allowed_calling_aes: vec![],
        sop_classes: [CT, VERIFICATION_SOP_CLASS]
            .into_iter()
            .map(String::from)
            .collect::<HashSet<_>>(),
        transfer_syntaxes: None,
        max_pdu: 16_384,
        require_user_identity: false,
        identity_check: None,
    }
}

/// Our server on 127.0.0.1, storing flat (`SOPInstanceUID.dcm`) under `dir/data`.
fn server(dir: &Path, require_called_ae: bool) -> (Server, Feed) {
    server_with(dir, policy(require_called_ae))
}

fn server_with(dir: &Path, policy: AcceptorPolicy) -> (Server, Feed) {
    Server::start(server_config(dir, policy)).unwrap()
}

fn server_config(dir: &Path, policy: AcceptorPolicy) -> ServerConfig {
    ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        policy,
        data_dir: dir.join("data"),
        sort_key: SortKey::Image,
        durable: false,
        max_associations: 8,
        acse_timeout: Some(TIMEOUT),
        network_timeout: Some(TIMEOUT),
        dimse_timeout: Some(TIMEOUT),
        max_instance_size: None,
        emit_stored: false,
        event_queue: 64,
        tls: None,
        handler: None,
        journal: false,
        duplicates: Duplicates::Replace,
        timers: None,
        node_id: "test".into(),
        cluster: None,
    }
}

fn config(addr: SocketAddr) -> ScuConfig {
    ScuConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        called_ae: "INLET".into(),
        calling_ae: "RUST_SCU".into(),
        max_pdu: 65_536,
        timeout: Some(TIMEOUT),
        async_window: 1,
        tls: None,
        user_identity: None,
    }
}

/// An Explicit VR Little Endian data set: the filing UIDs, then `pixels` bytes of OB.
fn data_set(sop_class: &str, sop_instance: &str, series: Option<&str>, pixels: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let series = series.map(|s| (0x000E, s));
    let uids = [(0x0008, 0x0016, sop_class), (0x0008, 0x0018, sop_instance)]
        .into_iter()
        .chain([(0x0020, 0x000D, "1.2.3")])
        .chain(series.map(|(e, s)| (0x0020, e, s)));
    for (group, element, uid) in uids {
        let mut value = uid.as_bytes().to_vec();
        if value.len() % 2 == 1 {
            value.push(0);
        }
        out.extend_from_slice(&[u16::to_le_bytes(group), u16::to_le_bytes(element)].concat());
        out.extend_from_slice(b"UI");
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(&value);
    }
    out.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0]);
    out.extend_from_slice(&(pixels as u32).to_le_bytes());
    out.extend((0..pixels).map(|i| (i * 7) as u8));
    out
}

/// Write a Part 10 file; returns its path and its data set.
fn part10(dir: &Path, sop_class: &str, sop_instance: &str, pixels: usize) -> (PathBuf, Vec<u8>) {
    let data = data_set(sop_class, sop_instance, Some("1.2.3.4"), pixels);
    let mut bytes = Vec::new();
    FileMeta {
        sop_class_uid: sop_class,
        sop_instance_uid: sop_instance,
        transfer_syntax_uid: EXPLICIT_VR_LITTLE_ENDIAN,
        source_ae_title: "ORIGIN",
    }
    .encode(&mut bytes);
    bytes.extend_from_slice(&data);
    let path = dir.join(format!("{sop_instance}.dcm"));
    fs::write(&path, bytes).unwrap();
    (path, data)
}

/// `count` CT files with SOP Instance UIDs `{root}.0`, `{root}.1`... and `pixels(i)` bytes of
/// pixel data: (paths, data sets).
fn files(
    dir: &Path,
    root: &str,
    count: usize,
    pixels: impl Fn(usize) -> usize,
) -> (Vec<PathBuf>, Vec<Vec<u8>>) {
    (0..count)
        .map(|i| part10(dir, CT, &format!("{root}.{i}"), pixels(i)))
        .unzip()
}

fn quiet(_: Option<&InstanceResult>) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

/// Instances stored on each association the server has ended, in order.
fn instances_per_association(events: Feed) -> Vec<u64> {
    events
        .filter_map(|e| match e {
            Event::AssociationEnded(r) => Some(r.instances),
            _ => None,
        })
        .collect()
}

fn stored_data_set(dir: &Path, sop_instance: &str) -> Vec<u8> {
    let file = fs::read(dir.join("data").join(format!("{sop_instance}.dcm"))).unwrap();
    let header = Part10Header::read(&mut &file[..]).unwrap();
    file[header.data_set_offset as usize..].to_vec()
}

#[test]
fn echo_is_answered() {
    let dir = scratch("echo");
    let (server, _events) = server(&dir, false);
    assert!(matches!(echo(&config(server.local_addr())), Ok(0)));
    server.shutdown(TIMEOUT);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn files_arrive_byte_identical_and_non_dicom_is_reported() {
    let dir = scratch("send");
    let (server, _events) = server(&dir, false);
    // Sizes around the server's 16 KiB PDU: one fragment, exactly full, many fragments.
    let sent = [
        ("1.2.3.1", 10),
        ("1.2.3.2", 16_384 - 6 - 92),
        ("1.2.3.3", 200_000),
    ]
    .map(|(uid, pixels)| part10(&dir, CT, uid, pixels));
    assert_eq!(sent[1].1.len(), 16_384 - 6, "one PDU exactly full");
    let junk = dir.join("notes.txt");
    fs::write(&junk, b"not DICOM at all").unwrap();
    let mut paths: Vec<PathBuf> = sent.iter().map(|(p, _)| p.clone()).collect();
    paths.insert(1, junk.clone());
    paths.push(dir.join("missing.dcm"));
    let mut seen = Vec::new();
    let results = send(&config(server.local_addr()), &paths, 1, &mut |r| {
        seen.extend(r.map(|r| r.path.clone()));
        ControlFlow::Continue(())
    })
    .unwrap();

    assert_eq!(
        results.iter().map(|r| &r.path).collect::<Vec<_>>(),
        paths.iter().collect::<Vec<_>>()
    );
    assert_eq!(seen.len(), paths.len(), "progress sees every result once");
    for ((path, data), result) in sent
        .iter()
        .zip(results.iter().filter(|r| r.status.is_some()))
    {
        assert_eq!(&result.path, path);
        assert_eq!(result.status, Some(0));
        assert_eq!(result.bytes, data.len() as u64);
        assert_eq!(result.sop_class_uid.as_deref(), Some(CT));
        let uid = result.sop_instance_uid.as_deref().unwrap();
        assert_eq!(&stored_data_set(&dir, uid), data, "{uid}");
    }
    assert_eq!(results[1].status, None);
    assert!(results[1]
        .error_comment
        .as_deref()
        .unwrap()
        .contains("not a DICOM Part 10 file"));
    let missing = results.last().unwrap();
    assert_eq!(
        missing.error_comment.as_deref(),
        Some("no such file (it was removed)")
    );
    server.shutdown(TIMEOUT);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refused_store_and_unaccepted_context_are_per_instance() {
    let dir = scratch("refused");
    let (server, _events) = Server::start(ServerConfig {
        max_instance_size: Some(1000),
        ..server_config(&dir, policy(false))
    })
    .unwrap();
    // Too large for the server: refused with 0xA700 and a comment.
    let (large, _) = part10(&dir, CT, "1.2.9", 2000);
    // MR is not among the server's SOP classes: its context is rejected, the CT one is not.
    let (mr, _) = part10(&dir, MR, "1.2.10", 4);
    let (ct, _) = part10(&dir, CT, "1.2.11", 4);
    let results = send(
        &config(server.local_addr()),
        &[large, mr, ct],
        1,
        &mut quiet,
    )
    .unwrap();
    let statuses: Vec<_> = results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(0xA700), None, Some(0)]);
    assert!(results[0]
        .error_comment
        .as_deref()
        .unwrap()
        .contains("1000"));
    assert!(results[1]
        .error_comment
        .as_deref()
        .unwrap()
        .contains("no presentation context"));
    server.shutdown(TIMEOUT);
    fs::remove_dir_all(&dir).unwrap();
}

/// A Part 10 file whose file meta says `meta_instance` over a data set of `instance`.
fn mismatched(dir: &Path, meta_instance: &str, instance: &str) -> (PathBuf, Vec<u8>) {
    let mut bytes = Vec::new();
    FileMeta {
        sop_class_uid: MR,
        sop_instance_uid: meta_instance,
        transfer_syntax_uid: EXPLICIT_VR_LITTLE_ENDIAN,
        source_ae_title: "",
    }
    .encode(&mut bytes);
    let data = data_set(CT, instance, Some("1.2.3.4"), 4);
    bytes.extend_from_slice(&data);
    let path = dir.join(format!("meta-{meta_instance}.dcm"));
    fs::write(&path, bytes).unwrap();
    (path, data)
}

#[test]
fn the_request_names_the_data_sets_own_uids() {
    // As pydicom's rtdose.dcm: the file meta names another instance (and here another class).
    // The server checks the request against the data set (PS3.4 §B.2.3), so it must use those.
    let dir = scratch("mismatch");
    let (server, _events) = server(&dir, false);
    let (path, data) = mismatched(&dir, "1.2.9", "9.9.9");
    let results = send(&config(server.local_addr()), &[path], 1, &mut quiet).unwrap();
    let [result] = &results[..] else {
        panic!("{results:?}")
    };
    assert_eq!(result.status, Some(0), "{result:?}");
    assert_eq!(result.sop_class_uid.as_deref(), Some(CT));
    assert_eq!(result.sop_instance_uid.as_deref(), Some("9.9.9"));
    assert_eq!(
        result.warning.as_deref(),
        Some(
            "the file meta's Media Storage SOP Class UID 1.2.840.10008.5.1.4.1.1.4 differs from \
             the data set's SOP Class UID 1.2.840.10008.5.1.4.1.1.2; the file meta's Media \
             Storage SOP Instance UID 1.2.9 differs from the data set's SOP Instance UID \
             9.9.9; sent with the data set's"
        )
    );
    assert_eq!(stored_data_set(&dir, "9.9.9"), data);
    server.shutdown(TIMEOUT);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unreadable_entries_are_failures_of_their_own() {
    let dir = scratch("unreadable");
    let (server, _events) = server(&dir, false);
    let (good, data) = part10(&dir, CT, "1.2.20", 100);
    let dangling = dir.join("dangling.dcm");
    std::os::unix::fs::symlink(dir.join("gone.dcm"), &dangling).unwrap();
    let fifo = dir.join("fifo.dcm");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let bytes = fs::read(&good).unwrap();
    // Cut inside the SOP Instance UID, before the scanner has what it needs.
    let truncated = dir.join("truncated.dcm");
    fs::write(&truncated, &bytes[..bytes.len() - data.len() + 30]).unwrap();
    let linked = dir.join("linked.dcm");
    std::os::unix::fs::symlink(&good, &linked).unwrap();
    let paths = [dangling, fifo, dir.clone(), truncated, good, linked];
    let results = send(&config(server.local_addr()), &paths, 1, &mut quiet).unwrap();
    let why: Vec<_> = results.iter().map(|r| r.error_comment.as_deref()).collect();
    let dangling_words = format!(
        "a dangling symbolic link: its target {} does not exist",
        dir.join("gone.dcm").display()
    );
    assert_eq!(
        why,
        [
            Some(dangling_words.as_str()),
            Some("not a regular file (a FIFO, socket or device), so not read"),
            Some("a directory, not a file"),
            Some("cannot parse the data set: data set truncated"),
            None,
            None,
        ]
    );
    assert_eq!(results[4].status, Some(0));
    assert_eq!(results[5].status, Some(0), "a link to a file is that file");
    assert_eq!(stored_data_set(&dir, "1.2.20"), data);
    server.shutdown(TIMEOUT);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rejection_and_unreachable_peer_are_errors() {
    let dir = scratch("rejected");
    let (server, _events) = server(&dir, true);
    let (file, _) = part10(&dir, CT, "1.2.12", 4);
    let mut wrong = config(server.local_addr());
    wrong.called_ae = "SOMEONE_ELSE".into();
    let e = send(&wrong, std::slice::from_ref(&file), 2, &mut quiet).unwrap_err();
    assert!(
        matches!(
            e,
            Error::AssociationRejected {
                result: 1,
                source: 1,
                reason: 7
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("called AE title not recognized"));
    assert!(matches!(
        echo(&wrong),
        Err(Error::AssociationRejected { reason: 7, .. })
    ));
    server.shutdown(TIMEOUT);

    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = echo(&config(closed)).unwrap_err();
    assert!(matches!(e, Error::ConnectionFailed { .. }), "{e}");
    let mut bad = config(closed);
    bad.calling_ae = "BACK\\SLASH".into();
    assert!(matches!(echo(&bad), Err(Error::InvalidConfig(_))));
    for window in [0, MAX_ASYNC_WINDOW + 1] {
        let mut bad = config(closed);
        bad.async_window = window;
        assert!(matches!(echo(&bad), Err(Error::InvalidConfig(_))));
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn parallel_associations_share_the_files() {
    let dir = scratch("parallel");
    let (server, events) = server(&dir, false);
    let (paths, data) = files(&dir, "1.2.4", 12, |i| 3000 * i);
    let results = send(&config(server.local_addr()), &paths, 3, &mut quiet).unwrap();
    for ((path, data), result) in paths.iter().zip(&data).zip(&results) {
        assert_eq!((&result.path, result.status), (path, Some(0)));
        let uid = result.sop_instance_uid.as_deref().unwrap();
        assert_eq!(&stored_data_set(&dir, uid), data);
    }
    // The server's running totals are counted before each response leaves.
    let stats = server.stats();
    let bytes: usize = data.iter().map(Vec::len).sum();
    assert_eq!(
        (stats.instances, stats.failures, stats.bytes),
        (12, 0, bytes as u64)
    );
    server.shutdown(TIMEOUT);
    let associations = instances_per_association(events);
    assert!((1..=3).contains(&associations.len()), "{associations:?}");
    assert_eq!(associations.iter().sum::<u64>(), 12);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn our_server_grants_the_window_and_pipelined_files_arrive_whole() {
    let dir = scratch("our-window");
    let (server, events) = server(&dir, false);
    let mut config = config(server.local_addr());
    config.async_window = 8;
    let proposal = Proposal {
        abstract_syntax: CT.into(),
        transfer_syntax: EXPLICIT_VR_LITTLE_ENDIAN.into(),
    };
    let association = Requestor::open(&config, &[proposal]).unwrap();
    assert_eq!(association.window, 8, "the server grants what we propose");
    association.release().unwrap();
    // Sizes around the server's 16 KiB PDU, so requests and fragments interleave on the wire.
    let (paths, data) = files(&dir, "1.2.13", 20, |i| 2500 * i);
    let results = send(&config, &paths, 1, &mut quiet).unwrap();
    for (data, result) in data.iter().zip(&results) {
        assert_eq!(result.status, Some(0), "{result:?}");
        let uid = result.sop_instance_uid.as_deref().unwrap();
        assert_eq!(&stored_data_set(&dir, uid), data);
    }
    server.shutdown(TIMEOUT);
    let instances = instances_per_association(events);
    assert_eq!(
        instances,
        [0, 20],
        "the negotiation check, then one association for all"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn explicit_vr_files_are_converted_for_a_peer_accepting_only_implicit_vr() {
    let dir = scratch("implicit");
    let mut policy = policy(false);
    policy.transfer_syntaxes = Some(vec![IMPLICIT_VR_LITTLE_ENDIAN.into()]);
    let (server, _events) = server_with(&dir, policy);
    let (path, explicit) = part10(&dir, CT, "1.2.12", 7);
    // The same elements in Implicit VR: 4-byte lengths, no VR (PS3.5 §7.1.3).
    let mut implicit = Vec::new();
    let mut at = 0;
    while at < explicit.len() {
        let (tag, vr) = (&explicit[at..at + 4], &explicit[at + 4..at + 6]);
        let (length, header) = if vr == b"OB" {
            let long = &explicit[at + 8..at + 12];
            (u32::from_le_bytes(long.try_into().unwrap()), 12)
        } else {
            (
                u32::from(u16::from_le_bytes([explicit[at + 6], explicit[at + 7]])),
                8,
            )
        };
        implicit.extend_from_slice(tag);
        implicit.extend_from_slice(&length.to_le_bytes());
        at += header;
        implicit.extend_from_slice(&explicit[at..at + length as usize]);
        at += length as usize;
    }
    let results = send(&config(server.local_addr()), &[path], 1, &mut quiet).unwrap();
    assert_eq!(results[0].status, Some(0), "{results:?}");
    assert_eq!(
        results[0].transfer_syntax_uid.as_deref(),
        Some(IMPLICIT_VR_LITTLE_ENDIAN)
    );
    assert_eq!(results[0].bytes, implicit.len() as u64);
    assert_eq!(stored_data_set(&dir, "1.2.12"), implicit);
    server.shutdown(TIMEOUT);
    fs::remove_dir_all(&dir).unwrap();
}

mod scripted;

/// A Part 10 file of `data_set` in `transfer_syntax`.
fn file_in(dir: &Path, name: &str, transfer_syntax: &str, data_set: &[u8]) -> PathBuf {
    let mut bytes = Vec::new();
    FileMeta {
        sop_class_uid: CT,
        sop_instance_uid: name,
        transfer_syntax_uid: transfer_syntax,
        source_ae_title: "",
    }
    .encode(&mut bytes);
    bytes.extend_from_slice(data_set);
    let path = dir.join(format!("{name}.dcm"));
    fs::write(&path, bytes).unwrap();
    path
}

/// Raw deflate (PS3.5 §A.5).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn big_endian_and_deflated_files_go_as_explicit_vr_little_endian_when_that_is_all() {
    let dir = scratch("to-explicit");
    let mut policy = policy(false);
    policy.transfer_syntaxes = Some(vec![EXPLICIT_VR_LITTLE_ENDIAN.into()]);
    let (server, _events) = server_with(&dir, policy);
    let uids = data_set(CT, "1.2.30", Some("1.2.3.4"), 0);
    let uids = &uids[..uids.len() - 12]; // without the empty pixel data
                                         // The same UI elements big endian: tag numbers and lengths swapped, the text not.
    let mut big = uids.to_vec();
    let mut at = 0;
    while at < big.len() {
        let length = usize::from(u16::from_le_bytes([big[at + 6], big[at + 7]]));
        for field in [at, at + 2, at + 6] {
            big.swap(field, field + 1);
        }
        at += 8 + length;
    }
    // Pixels as 16-bit words (OW): swapped in big endian.
    let mut little = uids.to_vec();
    little.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
    little.extend_from_slice(&100u32.to_le_bytes());
    big.extend_from_slice(&[0x7F, 0xE0, 0x00, 0x10, b'O', b'W', 0, 0]);
    big.extend_from_slice(&100u32.to_be_bytes());
    for word in (0..50u16).map(|i| i * 1000 + 7) {
        little.extend_from_slice(&word.to_le_bytes());
        big.extend_from_slice(&word.to_be_bytes());
    }
    let big_path = file_in(&dir, "1.2.30", EXPLICIT_VR_BIG_ENDIAN, &big);
    let inflated = data_set(CT, "1.2.31", Some("1.2.3.4"), 999);
    let deflated = deflate(&inflated);
    let deflated_path = file_in(
        &dir,
        "1.2.31",
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        &deflated,
    );
    let paths = [big_path, deflated_path];
    let results = send(&config(server.local_addr()), &paths, 1, &mut quiet).unwrap();
    for result in &results {
        assert_eq!(result.status, Some(0), "{result:?}");
        assert_eq!(
            result.transfer_syntax_uid.as_deref(),
            Some(EXPLICIT_VR_LITTLE_ENDIAN)
        );
    }
    assert_eq!(stored_data_set(&dir, "1.2.30"), little);
    assert_eq!(stored_data_set(&dir, "1.2.31"), inflated);
    server.shutdown(TIMEOUT);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_deflated_data_set_of_odd_length_is_padded() {
    let dir = scratch("odd-deflated");
    let (server, _events) = server(&dir, false);
    let deflated = (1..)
        .map(|pixels| deflate(&data_set(CT, "1.2.32", Some("1.2.3.4"), pixels)))
        .find(|deflated| deflated.len() % 2 == 1)
        .unwrap();
    let path = file_in(
        &dir,
        "1.2.32",
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        &deflated,
    );
    let results = send(&config(server.local_addr()), &[path], 1, &mut quiet).unwrap();
    assert_eq!(results[0].status, Some(0), "{results:?}");
    assert_eq!(
        results[0].transfer_syntax_uid.as_deref(),
        Some(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    );
    // One trailing NUL makes it even (PS3.5 §A.5); the stream before it is untouched.
    let padded = [&deflated[..], &[0]].concat();
    assert_eq!(results[0].bytes, padded.len() as u64);
    assert_eq!(stored_data_set(&dir, "1.2.32"), padded);
    server.shutdown(TIMEOUT);
    fs::remove_dir_all(&dir).unwrap();
}
