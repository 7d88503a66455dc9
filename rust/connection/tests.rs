//! The association path end to end over a real loopback socket, driven by a minimal SCU built
//! from the codecs: reassembly shapes, responses, aborts, and what ends up on disk.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::association::{AcceptorPolicy, VERIFICATION_SOP_CLASS};
use crate::dimse::{self, Command};
use crate::events::{Event, Outcome};
use crate::journal::Feed;
use crate::layout::SortKey;
use crate::pdu::{self, ae_field, AssociateRq, PresentationContextRq, UserInfo};
use crate::server::{Server, ServerConfig};
use crate::store::{Duplicates, INCOMING_DIR};
use crate::verdict::{HandlerConfig, Instance, Stage, Verdict, HANDLER_FAILED};

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const MAX_PDU: u32 = 16_384;

fn start(name: &str) -> (Server, Feed, PathBuf) {
    start_with(name, |_| {})
}

/// A server on 127.0.0.1 storing into a fresh temp dir, `tweak` adjusting the test config.
fn start_with(name: &str, tweak: impl FnOnce(&mut ServerConfig)) -> (Server, Feed, PathBuf) {
    let dir = std::env::temp_dir().join(format!("dicom-inlet-conn-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut config = ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        policy: AcceptorPolicy {
            ae_title: "INLET".into(),
            require_called_ae: false,
            allowed_calling_aes: vec![],
            sop_classes: [CT, VERIFICATION_SOP_CLASS]
                .into_iter()
                .map(String::from)
                .collect::<HashSet<_>>(),
            transfer_syntaxes: None,
            max_pdu: MAX_PDU,
            require_user_identity: false,
            identity_check: None,
        },
        data_dir: dir.clone(),
        sort_key: SortKey::Series,
        durable: false,
        max_associations: 4,
        acse_timeout: Some(Duration::from_secs(10)),
        network_timeout: Some(Duration::from_secs(10)),
        dimse_timeout: Some(Duration::from_secs(10)),
        max_instance_size: None,
        emit_stored: true,
        event_queue: 16,
        tls: None,
        handler: None,
        journal: true,
        duplicates: Duplicates::Replace,
        timers: None,
        node_id: "test".into(),
        cluster: None,
    };
    tweak(&mut config);
    let (server, events) = Server::start(config).unwrap();
    (server, events, dir)
}

/// An explicit VR little endian element with a short (16-bit) length.
fn element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
}

fn data_set(sop_instance: &str, pixels: usize) -> Vec<u8> {
    let mut out = Vec::new();
    element(
        &mut out,
        0x0008,
        0x0016,
        b"UI",
        b"1.2.840.10008.5.1.4.1.1.2\0",
    );
    element(&mut out, 0x0008, 0x0018, b"UI", sop_instance.as_bytes());
    element(&mut out, 0x0010, 0x0020, b"LO", b"PID1");
    element(&mut out, 0x0020, 0x000D, b"UI", b"1.2.3");
    element(&mut out, 0x0020, 0x000E, b"UI", b"1.2.3.4\0");
    out.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
    out.extend_from_slice(&(pixels as u32).to_le_bytes());
    out.extend((0..pixels).map(|i| i as u8));
    out
}

fn store_command(sop_instance: &str, message_id: u16) -> Vec<u8> {
    let mut out = Vec::new();
    Command {
        command_field: dimse::C_STORE_RQ,
        message_id: Some(message_id),
        affected_sop_class_uid: Some(CT.into()),
        affected_sop_instance_uid: Some(sop_instance.into()),
        has_data_set: true,
        status: None,
    }
    .encode(&mut out);
    out
}

struct Peer {
    stream: TcpStream,
}

impl Peer {
    fn associate(server: &Server) -> Peer {
        Peer::associate_with_window(server, None).0
    }

    /// Associate, proposing an asynchronous operations window; returns the one granted.
    fn associate_with_window(
        server: &Server,
        window: Option<(u16, u16)>,
    ) -> (Peer, Option<(u16, u16)>) {
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut out = Vec::new();
        AssociateRq {
            protocol_version: 1,
            called_ae: ae_field("INLET"),
            calling_ae: ae_field("RUST_SCU"),
            application_context: pdu::APPLICATION_CONTEXT.into(),
            presentation_contexts: vec![
                PresentationContextRq {
                    id: 1,
                    abstract_syntax: CT.into(),
                    transfer_syntaxes: vec![EXPLICIT_LE.into()],
                },
                PresentationContextRq {
                    id: 3,
                    abstract_syntax: VERIFICATION_SOP_CLASS.into(),
                    transfer_syntaxes: vec!["1.2.840.10008.1.2".into()],
                },
            ],
            user_info: UserInfo {
                max_length: Some(0),
                async_ops_window: window,
                ..UserInfo::default()
            },
        }
        .encode(&mut out);
        stream.write_all(&out).unwrap();
        let mut peer = Peer { stream };
        let (pdu_type, body) = peer.read_pdu();
        assert_eq!(pdu_type, pdu::ASSOCIATE_AC);
        match pdu::Pdu::parse(pdu_type, &body).unwrap() {
            pdu::Pdu::AssociateAc(ac) => {
                assert_eq!(ac.user_info.max_length, Some(MAX_PDU));
                assert!(ac.presentation_contexts.iter().all(|c| c.result == 0));
                (peer, ac.user_info.async_ops_window)
            }
            _ => unreachable!(),
        }
    }

    fn read_pdu(&mut self) -> (u8, Vec<u8>) {
        let mut header = [0u8; pdu::HEADER_LEN];
        self.stream.read_exact(&mut header).unwrap();
        let (pdu_type, length) = pdu::parse_header(&header);
        let mut body = vec![0; length as usize];
        self.stream.read_exact(&mut body).unwrap();
        (pdu_type, body)
    }

    /// Send one P-DATA-TF holding the given PDVs: (context, is_command, is_last, bytes).
    fn send_pdvs(&mut self, pdvs: &[(u8, bool, bool, &[u8])]) {
        let mut body = Vec::new();
        for (context, is_command, is_last, data) in pdvs {
            body.extend_from_slice(&(data.len() as u32 + 2).to_be_bytes());
            body.push(*context);
            body.push(u8::from(*is_command) | (u8::from(*is_last) << 1));
            body.extend_from_slice(data);
        }
        let mut pdu = vec![pdu::P_DATA_TF, 0];
        pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
        pdu.extend_from_slice(&body);
        self.stream.write_all(&pdu).unwrap();
    }

    fn response(&mut self) -> Command {
        let (pdu_type, body) = self.read_pdu();
        assert_eq!(pdu_type, pdu::P_DATA_TF);
        let pdv = pdu::pdvs(&body).next().unwrap().unwrap();
        assert!(pdv.is_command && pdv.is_last);
        Command::parse(pdv.data).unwrap()
    }

    fn release(mut self) {
        let mut out = Vec::new();
        pdu::encode_release_rq(&mut out);
        self.stream.write_all(&out).unwrap();
        assert_eq!(self.read_pdu().0, pdu::RELEASE_RP);
    }
}

fn stored_file(root: &Path, sop_instance: &str) -> Vec<u8> {
    fs::read(root.join("1.2.3.4").join(format!("{sop_instance}.dcm"))).unwrap()
}

fn incoming_is_empty(root: &Path) -> bool {
    fs::read_dir(root.join(INCOMING_DIR).join("test"))
        .unwrap()
        .next()
        .is_none()
}

#[test]
fn command_and_data_in_one_pdu_then_data_split_over_many() {
    let (server, events, root) = start("shapes");
    let mut peer = Peer::associate(&server);
    let data = data_set("1.2.3.4.5", 5000);
    // The command and the first data fragment share a PDU; the rest comes 7 bytes at a time,
    // several PDVs per PDU.
    let command = store_command("1.2.3.4.5", 7);
    peer.send_pdvs(&[(1, true, true, &command), (1, false, false, &data[..10])]);
    let rest: Vec<&[u8]> = data[10..].chunks(7).collect();
    for pair in rest.chunks(2) {
        let last_pdu = std::ptr::eq(pair.last().unwrap(), rest.last().unwrap());
        let pdvs: Vec<_> = pair
            .iter()
            .enumerate()
            .map(|(i, c)| (1, false, last_pdu && i + 1 == pair.len(), *c))
            .collect();
        peer.send_pdvs(&pdvs);
    }
    let response = peer.response();
    assert_eq!(response.command_field, 0x8001);
    assert_eq!(response.status, Some(0));
    assert_eq!(
        response.affected_sop_instance_uid.as_deref(),
        Some("1.2.3.4.5")
    );
    let file = stored_file(&root, "1.2.3.4.5");
    assert!(
        file.ends_with(&data),
        "data set bytes differ from what was sent"
    );
    assert_eq!(&file[128..132], b"DICM");
    assert!(incoming_is_empty(&root));
    peer.release();
    server.shutdown(Duration::from_secs(5));
    let events: Vec<Event> = events.collect();
    assert!(
        matches!(&events[0], Event::Stored(s) if s.bytes == data.len() as u64 && s.calling_ae == "RUST_SCU")
    );
    assert!(matches!(&events[1], Event::AssociationEnded(r) if r.instances == 1));
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn pipelined_requests_within_the_window_are_answered_in_order() {
    let (server, _events, root) = start("pipelined");
    let (mut peer, window) = Peer::associate_with_window(&server, Some((8, 8)));
    assert_eq!(window, Some((8, 1)));
    // Every request of the window goes out before the first response is read.
    let sent: Vec<(String, Vec<u8>)> = (1..=8)
        .map(|i| {
            (
                format!("1.2.3.4.{i}"),
                data_set(&format!("1.2.3.4.{i}"), 3000 + i),
            )
        })
        .collect();
    for (i, (uid, data)) in sent.iter().enumerate() {
        let command = store_command(uid, i as u16 + 1);
        peer.send_pdvs(&[(1, true, true, &command), (1, false, true, data)]);
    }
    for (uid, data) in &sent {
        let response = peer.response();
        assert_eq!(response.affected_sop_instance_uid.as_ref(), Some(uid));
        assert_eq!(response.status, Some(0));
        assert!(stored_file(&root, uid).ends_with(data));
    }
    peer.release();
    server.shutdown(Duration::from_secs(5));
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn command_split_over_pdus_and_echo() {
    let (server, _events, root) = start("echo");
    let mut peer = Peer::associate(&server);
    let mut echo = Vec::new();
    Command {
        command_field: dimse::C_ECHO_RQ,
        message_id: Some(42),
        affected_sop_class_uid: Some(VERIFICATION_SOP_CLASS.into()),
        ..Command::default()
    }
    .encode(&mut echo);
    let (head, tail) = echo.split_at(5);
    peer.send_pdvs(&[(3, true, false, head)]);
    peer.send_pdvs(&[(3, true, true, tail)]);
    let response = peer.response();
    assert_eq!((response.command_field, response.status), (0x8030, Some(0)));
    assert_eq!(
        response.message_id, None,
        "responses carry MessageIDBeingRespondedTo"
    );
    peer.release();
    server.shutdown(Duration::from_secs(5));
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn oversized_pdu_is_aborted_and_partial_instance_removed() {
    let (server, _events, root) = start("oversized");
    let mut peer = Peer::associate(&server);
    let data = data_set("1.2.3.4.6", 100);
    peer.send_pdvs(&[
        (1, true, true, &store_command("1.2.3.4.6", 1)),
        (1, false, false, &data[..50]),
    ]);
    // Announce a PDU one byte over our maximum: aborted before its body is read.
    let mut header = vec![pdu::P_DATA_TF, 0];
    header.extend_from_slice(&(MAX_PDU + 1).to_be_bytes());
    peer.stream.write_all(&header).unwrap();
    let (pdu_type, body) = peer.read_pdu();
    assert_eq!(pdu_type, pdu::ABORT);
    assert_eq!(
        body,
        [0, 0, 2, 6],
        "provider abort, invalid parameter value"
    );
    server.shutdown(Duration::from_secs(5));
    assert!(incoming_is_empty(&root));
    assert!(!root.join("1.2.3.4").exists());
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn data_set_not_matching_the_command_is_refused_without_a_file() {
    let (server, mut events, root) = start("mismatch");
    let mut peer = Peer::associate(&server);
    let data = data_set("9.9.9", 10);
    peer.send_pdvs(&[
        (1, true, true, &store_command("1.2.3.4.7", 3)),
        (1, false, true, &data),
    ]);
    let (_, body) = peer.read_pdu();
    let pdv = pdu::pdvs(&body).next().unwrap().unwrap();
    let response = dimse::Response::parse(pdv.data).unwrap();
    assert_eq!(response.status, 0xA900);
    let comment = "SOP Instance UID: data set 9.9.9, command 1.2.3.4.7";
    assert_eq!(response.error_comment, Some(comment));
    peer.release();
    server.shutdown(Duration::from_secs(5));
    assert!(incoming_is_empty(&root));
    assert!(!root.join("1.2.3.4").exists());
    // The server's side reports the failure as the peer was told it.
    let failures: Vec<_> = events
        .by_ref()
        .filter_map(|e| match e {
            Event::StoreFailed(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].status, 0xA900);
    assert_eq!(failures[0].error_comment, comment);
    assert_eq!(failures[0].sop_instance_uid, "1.2.3.4.7");
    assert_eq!(failures[0].calling_ae, "RUST_SCU");
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn peer_abort_mid_instance_leaves_nothing() {
    let (server, mut events, root) = start("peer-abort");
    let mut peer = Peer::associate(&server);
    let data = data_set("1.2.3.4.8", 1000);
    peer.send_pdvs(&[
        (1, true, true, &store_command("1.2.3.4.8", 1)),
        (1, false, false, &data[..500]),
    ]);
    let mut out = Vec::new();
    pdu::Abort {
        source: 0,
        reason: 0,
    }
    .encode(&mut out);
    peer.stream.write_all(&out).unwrap();
    // The association's end event arrives only after its thread has cleaned up.
    let ended = events.next().unwrap();
    assert!(matches!(ended, Event::AssociationEnded(r) if r.instances == 0));
    assert!(incoming_is_empty(&root));
    server.shutdown(Duration::from_secs(5));
    fs::remove_dir_all(&root).unwrap();
}

/// Read until the server closes; what it sent before closing.
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    received
}

#[test]
fn artim_expiry_closes_without_a_pdu() {
    let (server, _events, root) = start_with("artim", |c| {
        c.acse_timeout = Some(Duration::from_millis(200));
    });
    // One peer says nothing, one stops inside the A-ASSOCIATE-RQ header, one inside its body.
    let partial: [&[u8]; 3] = [&[], &[pdu::ASSOCIATE_RQ, 0, 0], &[1, 0, 0, 0, 0, 80, 0, 1]];
    for bytes in partial {
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        // No association exists yet, so there is nothing to abort (PS3.8 §9.2.3, AA-2).
        assert_eq!(read_to_close(&mut stream), b"", "after {bytes:?}");
    }
    server.shutdown(Duration::from_secs(5));
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn stalls_are_aborted_idle_after_network_timeout_mid_message_after_dimse_timeout() {
    let (server, _events, root) = start_with("stall", |c| {
        c.network_timeout = Some(Duration::from_millis(300));
        c.dimse_timeout = Some(Duration::from_millis(300));
    });
    // Idle after the association.
    let mut idle = Peer::associate(&server);
    let (pdu_type, body) = idle.read_pdu();
    assert_eq!((pdu_type, body), (pdu::ABORT, vec![0, 0, 2, 0]));
    // Mid data set, and mid PDU.
    let data = data_set("1.2.3.4.9", 2000);
    for stall_in_pdu in [false, true] {
        let mut peer = Peer::associate(&server);
        peer.send_pdvs(&[
            (1, true, true, &store_command("1.2.3.4.9", 1)),
            (1, false, false, &data[..1000]),
        ]);
        if stall_in_pdu {
            let mut header = vec![pdu::P_DATA_TF, 0];
            header.extend_from_slice(&1006u32.to_be_bytes());
            peer.stream.write_all(&header).unwrap();
        }
        assert_eq!(peer.read_pdu(), (pdu::ABORT, vec![0, 0, 2, 0]));
        assert_eq!(read_to_close(&mut peer.stream), b"");
        // The association's thread dropped the spool before it sent the A-ABORT.
        assert!(incoming_is_empty(&root));
    }
    server.shutdown(Duration::from_secs(5));
    assert!(!root.join("1.2.3.4").exists());
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn instance_size_cap_refuses_without_a_file_and_the_association_goes_on() {
    let data = data_set("1.2.3.4.10", 3000);
    let cap = data.len() as u64;
    let (server, _events, root) = start_with("cap", |c| c.max_instance_size = Some(cap - 1));
    let mut peer = Peer::associate(&server);
    let command = store_command("1.2.3.4.10", 1);
    peer.send_pdvs(&[(1, true, true, &command), (1, false, false, &data[..100])]);
    peer.send_pdvs(&[(1, false, true, &data[100..])]);
    let response = peer.response();
    assert_eq!(response.status, Some(0xA700));
    assert!(!root.join("1.2.3.4").exists());
    assert!(incoming_is_empty(&root));
    peer.release();
    server.shutdown(Duration::from_secs(5));
    fs::remove_dir_all(&root).unwrap();

    // Exactly at the cap is accepted.
    let (server, _events, root) = start_with("cap-exact", |c| c.max_instance_size = Some(cap));
    let mut peer = Peer::associate(&server);
    peer.send_pdvs(&[(1, true, true, &command), (1, false, true, &data)]);
    assert_eq!(peer.response().status, Some(0));
    assert!(stored_file(&root, "1.2.3.4.10").ends_with(&data));
    peer.release();
    server.shutdown(Duration::from_secs(5));
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn protocol_errors_after_the_association_get_precise_aborts() {
    let (server, _events, root) = start("aborts");
    let mut no_message_id = Vec::new();
    Command {
        command_field: dimse::C_ECHO_RQ,
        affected_sop_class_uid: Some(VERIFICATION_SOP_CLASS.into()),
        ..Command::default()
    }
    .encode(&mut no_message_id);
    // Command::encode writes MessageID 0 when there is none: cut the element out.
    let at = no_message_id
        .windows(4)
        .position(|w| w == [0, 0, 0x10, 0x01])
        .unwrap();
    no_message_id.drain(at..at + 10);
    let group_length = (no_message_id.len() - 12) as u32;
    no_message_id[8..12].copy_from_slice(&group_length.to_le_bytes());
    let mut pdata = Vec::new();
    pdu::encode_pdata(&mut pdata, 3, true, true, &no_message_id);

    let mut second_rq = Vec::new();
    AssociateRq {
        protocol_version: 1,
        called_ae: ae_field("INLET"),
        calling_ae: ae_field("RUST_SCU"),
        application_context: pdu::APPLICATION_CONTEXT.into(),
        presentation_contexts: vec![],
        user_info: UserInfo::default(),
    }
    .encode(&mut second_rq);
    let cases: [(&[u8], [u8; 4]); 5] = [
        (&pdata, [0, 0, 2, 6]),
        // A-RELEASE-RQ must be 4 bytes (PS3.8 §9.3.6).
        (&[5, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0], [0, 0, 2, 6]),
        (&second_rq, [0, 0, 2, 2]),
        (&[pdu::RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0], [0, 0, 2, 2]),
        // Unknown type with a huge length: refused from the header, the body is never read.
        (&[0x42, 0, 0xFF, 0xFF, 0xFF, 0xF0], [0, 0, 2, 1]),
    ];
    for (bytes, abort) in cases {
        let mut peer = Peer::associate(&server);
        peer.stream.write_all(bytes).unwrap();
        assert_eq!(peer.read_pdu(), (pdu::ABORT, abort.to_vec()), "{bytes:?}");
    }
    server.shutdown(Duration::from_secs(5));
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn connections_over_the_limit_are_rejected_then_closed_at_once() {
    let (server, _events, root) = start_with("flood", |c| c.max_associations = 1);
    let held = Peer::associate(&server);
    let connect = || {
        let stream = TcpStream::connect(server.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    };
    // These wait for their A-ASSOCIATE-RQ to answer it with an RJ, each on a thread.
    let mut waiting: Vec<TcpStream> = (0..crate::server::REJECT_SLACK)
        .map(|_| connect())
        .collect();
    // Past that bound, a connection is closed without a thread or a word.
    let mut extra = connect();
    assert_eq!(read_to_close(&mut extra), b"");
    let mut rq = Vec::new();
    AssociateRq {
        protocol_version: 1,
        called_ae: ae_field("INLET"),
        calling_ae: ae_field("RUST_SCU"),
        application_context: pdu::APPLICATION_CONTEXT.into(),
        presentation_contexts: vec![],
        user_info: UserInfo::default(),
    }
    .encode(&mut rq);
    waiting[0].write_all(&rq).unwrap();
    // Transient, presentation provider, local limit exceeded (PS3.8 §9.3.4).
    assert_eq!(
        read_to_close(&mut waiting[0]),
        [3, 0, 0, 0, 0, 4, 0, 2, 3, 2]
    );
    held.release();
    drop(waiting);
    server.shutdown(Duration::from_secs(5));
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn unlimited_shutdown_grace_lets_the_open_association_finish() {
    let (server, _events, root) = start("grace-unlimited");
    let peer = Peer::associate(&server);
    std::thread::scope(|s| {
        // A grace past the clock's range means no limit, not an overflow.
        let stopping = s.spawn(|| server.shutdown(Duration::MAX));
        peer.release();
        stopping.join().unwrap();
    });
    fs::remove_dir_all(&root).unwrap();
}

/// Start a server whose handler answers each instance by `decide`, on a scoped thread.
fn with_handler(
    name: &str,
    stage: Stage,
    decide: impl Fn(&Instance) -> Verdict + Send + Sync,
    run: impl FnOnce(&Server, &Path),
) {
    let (server, _events, root) = start_with(name, |config| {
        config.handler = Some(HandlerConfig {
            timeout: None,
            stage,
        });
    });
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while let Some(request) = server.next_store_request() {
                let verdict = decide(&request.instance);
                assert!(request.answer(verdict));
            }
        });
        run(&server, &root);
        server.shutdown(Duration::from_secs(5));
    });
    fs::remove_dir_all(&root).unwrap();
}

fn verdict(status: u16, keep: bool) -> Verdict {
    Verdict {
        status,
        error_comment: None,
        keep,
    }
}

#[test]
fn the_handler_verdict_is_the_status_and_decides_the_file() {
    let data = |uid: &str| data_set(uid, 300);
    let decide = |instance: &Instance| {
        // The handler sees the complete data set in the spool, and where it will be stored.
        let file = fs::read(&instance.file).unwrap();
        assert!(file.ends_with(&data(&instance.sop_instance_uid)));
        assert_eq!(
            instance.bytes,
            data(&instance.sop_instance_uid).len() as u64
        );
        assert!(instance
            .file
            .starts_with(instance.path.ancestors().nth(2).unwrap()));
        assert!(instance
            .path
            .ends_with(format!("1.2.3.4/{}.dcm", instance.sop_instance_uid)));
        assert_eq!(
            (instance.calling_ae.as_str(), instance.context_id),
            ("RUST_SCU", 1)
        );
        match instance.sop_instance_uid.as_str() {
            "1.1" => verdict(0xA701, true),
            "1.2" => verdict(0xB000, true),
            _ => verdict(0x0000, false),
        }
    };
    with_handler("verdict", Stage::BeforePublish, decide, |server, root| {
        let mut peer = Peer::associate(server);
        for (uid, status, stored) in [
            ("1.1", 0xA701, false),
            ("1.2", 0xB000, true),
            ("1.3", 0x0000, false),
        ] {
            peer.send_pdvs(&[
                (1, true, true, &store_command(uid, 1)),
                (1, false, true, &data(uid)),
            ]);
            assert_eq!(peer.response().status, Some(status), "{uid}");
            let path = root.join("1.2.3.4").join(format!("{uid}.dcm"));
            assert_eq!(path.exists(), stored, "{uid}");
            assert!(incoming_is_empty(root));
        }
        peer.release();
    });
}

#[test]
fn after_publish_the_handler_sees_the_stored_file_and_a_failure_keeps_it() {
    let decide = |instance: &Instance| {
        assert_eq!(instance.file, instance.path);
        assert!(instance.path.is_file());
        verdict(HANDLER_FAILED, true)
    };
    with_handler("after", Stage::AfterPublish, decide, |server, root| {
        let mut peer = Peer::associate(server);
        peer.send_pdvs(&[
            (1, true, true, &store_command("2.1", 1)),
            (1, false, true, &data_set("2.1", 10)),
        ]);
        assert_eq!(peer.response().status, Some(HANDLER_FAILED));
        assert!(root.join("1.2.3.4/2.1.dcm").is_file());
        peer.release();
    });
}

#[test]
fn cutting_the_grace_short_aborts_open_associations_at_once() {
    let (server, mut events, root) = start("grace-cut");
    let mut peer = Peer::associate(&server);
    let mut echo = Vec::new();
    Command {
        command_field: dimse::C_ECHO_RQ,
        message_id: Some(1),
        affected_sop_class_uid: Some(VERIFICATION_SOP_CLASS.into()),
        ..Command::default()
    }
    .encode(&mut echo);
    peer.send_pdvs(&[(3, true, true, &echo)]);
    assert_eq!(peer.response().status, Some(0));
    std::thread::scope(|s| {
        // No limit: without the cut this would wait for the peer forever.
        let stopping = s.spawn(|| server.shutdown(Duration::MAX));
        server.abort_open_associations();
        stopping.join().unwrap();
    });
    assert_eq!(peer.read_pdu().0, pdu::ABORT);
    let record = events
        .by_ref()
        .find_map(|e| match e {
            Event::AssociationEnded(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(record.outcome, Outcome::Aborted);
    assert_eq!((record.echoes, record.instances), (1, 0));
    fs::remove_dir_all(&root).unwrap();
}
