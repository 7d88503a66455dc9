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
use crate::file_meta::FileMeta;
use crate::layout::SortKey;
use crate::pdu::{Pdu, HEADER_LEN};
use crate::server::{Event, Server, ServerConfig};
use crate::transfer_syntax::EXPLICIT_VR_LITTLE_ENDIAN;

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
    }
}

/// Our server on 127.0.0.1, storing flat (`SOPInstanceUID.dcm`) under `dir/data`.
fn server(dir: &Path, require_called_ae: bool) -> (Server, std::sync::mpsc::Receiver<Event>) {
    Server::start(ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        policy: policy(require_called_ae),
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
    })
    .unwrap()
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
    assert!(missing
        .error_comment
        .as_deref()
        .unwrap()
        .starts_with("cannot read the file"));
    server.shutdown(TIMEOUT);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refused_store_and_unaccepted_context_are_per_instance() {
    let dir = scratch("refused");
    let (server, _events) = server(&dir, false);
    // The data set names another instance than its file meta (and so our command): the
    // server refuses it with 0xA900 and a comment.
    let mut bytes = Vec::new();
    FileMeta {
        sop_class_uid: CT,
        sop_instance_uid: "1.2.9",
        transfer_syntax_uid: EXPLICIT_VR_LITTLE_ENDIAN,
        source_ae_title: "",
    }
    .encode(&mut bytes);
    bytes.extend_from_slice(&data_set(CT, "9.9.9", None, 4));
    let broken = dir.join("broken.dcm");
    fs::write(&broken, bytes).unwrap();
    // MR is not among the server's SOP classes: its context is rejected, the CT one is not.
    let (mr, _) = part10(&dir, MR, "1.2.10", 4);
    let (ct, _) = part10(&dir, CT, "1.2.11", 4);
    let results = send(
        &config(server.local_addr()),
        &[broken, mr, ct],
        1,
        &mut quiet,
    )
    .unwrap();
    let statuses: Vec<_> = results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(0xA900), None, Some(0)]);
    assert!(results[0]
        .error_comment
        .as_deref()
        .unwrap()
        .contains("9.9.9"));
    assert!(results[1]
        .error_comment
        .as_deref()
        .unwrap()
        .contains("no presentation context"));
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
    let associations: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::AssociationEnded(r) => Some(r.instances),
            Event::Stored(_) => None,
        })
        .collect();
    assert!((1..=3).contains(&associations.len()), "{associations:?}");
    assert_eq!(associations.iter().sum::<u64>(), 12);
    fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// A scripted acceptor, for behaviour our server does not show.

struct Acceptor {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Acceptor {
    /// Accept the next association, granting every context and this asynchronous window.
    fn accept(listener: &TcpListener, window: Option<(u16, u16)>) -> Acceptor {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut acceptor = Acceptor {
            stream,
            buffer: Vec::new(),
        };
        let rq = match acceptor.read() {
            (pdu::ASSOCIATE_RQ, body) => match Pdu::parse(pdu::ASSOCIATE_RQ, &body).unwrap() {
                Pdu::AssociateRq(rq) => rq,
                _ => unreachable!(),
            },
            (other, _) => panic!("PDU {other} instead of A-ASSOCIATE-RQ"),
        };
        let mut policy = policy(false);
        policy.sop_classes.extend(
            rq.presentation_contexts
                .iter()
                .map(|c| c.abstract_syntax.clone()),
        );
        let (_, mut ac) = policy.negotiate(&rq).unwrap();
        ac.user_info.async_ops_window = window;
        let mut out = Vec::new();
        ac.encode(&mut out);
        acceptor.stream.write_all(&out).unwrap();
        acceptor
    }

    fn read(&mut self) -> (u8, Vec<u8>) {
        let mut header = [0u8; HEADER_LEN];
        self.stream.read_exact(&mut header).unwrap();
        let (pdu_type, length) = pdu::parse_header(&header);
        self.buffer.resize(length as usize, 0);
        self.stream.read_exact(&mut self.buffer).unwrap();
        (pdu_type, self.buffer.clone())
    }

    /// Read one whole C-STORE-RQ: its command and the data set length.
    fn request(&mut self) -> (Command, usize) {
        let (mut command, mut data) = (Vec::new(), 0);
        loop {
            let (pdu_type, body) = self.read();
            assert_eq!(pdu_type, pdu::P_DATA_TF);
            for pdv in pdu::pdvs(&body) {
                let pdv = pdv.unwrap();
                if pdv.is_command {
                    command.extend_from_slice(pdv.data);
                } else {
                    data += pdv.data.len();
                    if pdv.is_last {
                        return (Command::parse(&command).unwrap(), data);
                    }
                }
            }
        }
    }

    fn respond(&mut self, request: &Command, status: u16) {
        let mut command = Vec::new();
        Response {
            command_field: request.command_field | dimse::RESPONSE_BIT,
            message_id_being_responded_to: request.message_id.unwrap(),
            affected_sop_class_uid: request.affected_sop_class_uid.as_deref(),
            affected_sop_instance_uid: request.affected_sop_instance_uid.as_deref(),
            status,
            error_comment: None,
        }
        .encode(&mut command);
        let mut out = Vec::new();
        pdu::encode_pdata(&mut out, 1, true, true, &command);
        self.stream.write_all(&out).unwrap();
    }

    fn release(mut self) {
        assert_eq!(self.read().0, pdu::RELEASE_RQ);
        let mut out = Vec::new();
        pdu::encode_release_rp(&mut out);
        self.stream.write_all(&out).unwrap();
    }
}

fn scripted(script: impl FnOnce(&TcpListener) + Send + 'static) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, thread::spawn(move || script(&listener)))
}

#[test]
fn requests_are_pipelined_within_the_granted_window() {
    let dir = scratch("window");
    let (paths, _) = files(&dir, "1.2.5", 5, |_| 100);
    // The acceptor grants 3 of the 8 proposed, reads three whole requests before answering
    // any (a synchronous sender would wait forever here) and answers them in reverse order.
    let (addr, acceptor) = scripted(|listener| {
        let mut scp = Acceptor::accept(listener, Some((3, 1)));
        let batch: Vec<_> = (0..3).map(|_| scp.request().0).collect();
        for (request, status) in batch.iter().rev().zip([0xB000, 0, 0]) {
            scp.respond(request, status);
        }
        for _ in 0..2 {
            let (request, _) = scp.request();
            scp.respond(&request, 0);
        }
        scp.release();
    });
    let mut config = config(addr);
    config.async_window = 8;
    let results = send(&config, &paths, 1, &mut quiet).unwrap();
    acceptor.join().unwrap();
    let statuses: Vec<_> = results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(0), Some(0), Some(0xB000), Some(0), Some(0)]);

    // What the window becomes: the smaller of ours and the grant; 0 grants ours; none is 1.
    for (grant, expected) in [
        (Some((3, 1)), 3),
        (Some((0, 0)), 8),
        (Some((9, 9)), 8),
        (None, 1),
    ] {
        let (addr, acceptor) =
            scripted(move |listener| Acceptor::accept(listener, grant).release());
        let mut config = super::tests::config(addr);
        config.async_window = 8;
        let proposal = Proposal {
            abstract_syntax: CT.into(),
            transfer_syntax: EXPLICIT_VR_LITTLE_ENDIAN.into(),
        };
        let association = Requestor::open(&config, &[proposal]).unwrap();
        assert_eq!(association.window, expected, "{grant:?}");
        association.release().unwrap();
        acceptor.join().unwrap();
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_peer_abort_fails_the_outstanding_instance_and_a_new_association_goes_on() {
    let dir = scratch("abort");
    let (paths, _) = files(&dir, "1.2.6", 3, |_| 100);
    let (addr, acceptor) = scripted(|listener| {
        let mut first = Acceptor::accept(listener, None);
        first.request();
        let mut out = Vec::new();
        pdu::Abort {
            source: 2,
            reason: 6,
        }
        .encode(&mut out);
        first.stream.write_all(&out).unwrap();
        let mut second = Acceptor::accept(listener, None);
        for _ in 0..2 {
            let (request, _) = second.request();
            second.respond(&request, 0);
        }
        second.release();
    });
    let results = send(&config(addr), &paths, 1, &mut quiet).unwrap();
    acceptor.join().unwrap();
    assert_eq!(results[0].status, None);
    let why = results[0].error_comment.as_deref().unwrap();
    assert!(
        why.contains("A-ABORT") && why.contains("invalid PDU parameter value"),
        "{why}"
    );
    assert_eq!((results[1].status, results[2].status), (Some(0), Some(0)));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cancelling_stops_taking_files() {
    let dir = scratch("cancel");
    let (paths, _) = files(&dir, "1.2.7", 4, |_| 10);
    let (cancelled, wait) = std::sync::mpsc::channel();
    // The acceptor answers the first request, then holds back until the caller has cancelled:
    // a second request may already be on its way, a third cannot be.
    let (addr, acceptor) = scripted(move |listener| {
        let mut scp = Acceptor::accept(listener, None);
        let (request, _) = scp.request();
        scp.respond(&request, 0);
        wait.recv().unwrap();
        let mut header = [0u8; 1];
        scp.stream.peek(&mut header).unwrap();
        if header[0] == pdu::P_DATA_TF {
            let (request, _) = scp.request();
            scp.respond(&request, 0);
        }
        scp.release();
    });
    let results = send(&config(addr), &paths, 1, &mut |r| match r {
        Some(_) => {
            cancelled.send(()).unwrap();
            ControlFlow::Break(())
        }
        None => ControlFlow::Continue(()),
    })
    .unwrap();
    acceptor.join().unwrap();
    assert_eq!(results[0].status, Some(0));
    assert!(results[1].status == Some(0) || results[1].status.is_none());
    for result in &results[1..] {
        if result.status.is_none() {
            assert_eq!(result.error_comment.as_deref(), Some("not sent: cancelled"));
        }
    }
    assert!(
        results[2..].iter().all(|r| r.status.is_none()),
        "{results:?}"
    );
    fs::remove_dir_all(&dir).unwrap();
}
