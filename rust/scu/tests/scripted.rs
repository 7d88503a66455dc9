//! The SCU against a scripted acceptor, for behaviour our server does not show: a window
//! smaller than proposed, answers out of order, an A-ABORT mid-send, cancellation.

use super::*;

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
    let (paths, _) = files(&dir, "1.2.7", 20, |_| 10);
    // The acceptor answers whatever comes until the release. Break on the first result: the
    // association thread may take a file or two before it sees the cancellation (it does not
    // wait for the caller between files), never all twenty. The second answer waits for the
    // caller's cancellation, so a loaded machine cannot let all files through first.
    let (cancelled, cancellation) = std::sync::mpsc::channel::<()>();
    let (addr, acceptor) = scripted(move |listener| {
        let mut scp = Acceptor::accept(listener, None);
        let mut next = [0u8; 1];
        let mut answered = 0;
        while scp.stream.peek(&mut next).unwrap() == 1 && next[0] == pdu::P_DATA_TF {
            let (request, _) = scp.request();
            if answered == 1 {
                cancellation.recv().unwrap();
            }
            scp.respond(&request, 0);
            answered += 1;
        }
        scp.release();
    });
    let results = send(&config(addr), &paths, 1, &mut |r| match r {
        Some(_) => {
            let _ = cancelled.send(());
            ControlFlow::Break(())
        }
        None => ControlFlow::Continue(()),
    })
    .unwrap();
    acceptor.join().unwrap();
    // One association takes the files in order: the sent ones are a prefix.
    let sent = results.iter().take_while(|r| r.status == Some(0)).count();
    assert!((1..paths.len()).contains(&sent), "{results:?}");
    for result in &results[sent..] {
        assert_eq!(result.status, None);
        assert_eq!(result.error_comment.as_deref(), Some("not sent: cancelled"));
    }
    fs::remove_dir_all(&dir).unwrap();
}
