//! CPU per byte that DICOM TLS adds to each end, through rustls with our own configurations
//! (`dicom_inlet::tls`, AES-128-GCM preferred) in memory, no sockets: what the sender pays to
//! encrypt (plaintext into records, AES-GCM) and the receiver to decrypt (records read from a
//! buffer, AES-GCM, plaintext copied out), beside a plain copy of the same bytes. Multiply by the
//! bytes of an instance and compare with the plain path's whole cost per instance
//! (`benches/receive_cost.py task-clock`) for the bound TLS sets on throughput. The sender's
//! writes go with rustls's default of 64 KiB of records held, as `dicom_inlet::tls` keeps it,
//! and with 1 MiB held, which costs more (glibc returns the freed records' pages to the kernel
//! and faults them in again). The receiver decrypts with rustls's buffered connection and with
//! its unbuffered API, records decrypted where they were received and each record's plaintext
//! copied out twice (into rustls's own buffer, then the reader's), as `dicom_inlet::tls`'s
//! server did before it opened the records itself after the handshake (`tls/record.rs`: no copy
//! at all, so its cost per byte is about AES-GCM's alone).
//!
//!     cargo bench --no-default-features --bench tls_cost
//!
//! Certificates are made with `openssl` in a temporary directory. CPU time is the thread's own
//! (`/proc/thread-self/schedstat`, Linux), so other load on the machine changes it little.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use std::sync::Arc;

use dicom_inlet::tls::{client_config, server_config, ClientFiles, ServerFiles};
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::ConnectionState;
use rustls::{ClientConnection, ServerConnection};

/// Bytes through each measurement.
const TOTAL: usize = 1 << 30;
/// Records held for the socket beyond rustls's default of 64 KiB, to show what that costs.
const LARGER_LIMIT: usize = 1 << 20;

/// CPU time of this thread in nanoseconds.
fn cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("Linux schedstat");
    stat.split_whitespace().next().unwrap().parse().unwrap()
}

fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(status.status.success(), "openssl {args:?}");
}

/// A CA and a server certificate for 127.0.0.1, as `benches/peers.py` makes them.
fn certificates(dir: &Path) -> ServerFiles {
    let p = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let [ca, ca_key, cert, key, csr, ext] = ["ca", "ca_key", "cert", "key", "csr", "ext"].map(p);
    let ca_subject = ["-subj", "/CN=bench CA", "-days", "2"];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &["-keyout", &ca_key, "-out", &ca],
            &ca_subject,
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"],
            &ec[..],
            &["-keyout", &key, "-out", &csr, "-subj", "/CN=s"],
        ]
        .concat(),
    );
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509", "-req", "-in", &csr, "-CA", &ca, "-CAkey", &ca_key, "-out", &cert, "-days", "2",
        "-extfile", &ext,
    ]);
    ServerFiles {
        cert: cert.into(),
        key: key.into(),
        ca: Some(ca.into()),
        crl: None,
    }
}

fn main() {
    let dir = std::env::temp_dir().join(format!("tls-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = certificates(&dir);
    let (server, _) = server_config(&ServerFiles {
        ca: None,
        ..files.clone()
    })
    .unwrap();
    let client = client_config(&ClientFiles {
        ca: files.ca.clone(),
        cert_and_key: None,
        verify_hostname: true,
    })
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut c = ClientConnection::new(Arc::clone(&client), name.clone()).unwrap();
    let mut s = ServerConnection::new(Arc::clone(&server)).unwrap();
    let mut wire = Vec::new();
    while c.is_handshaking() || s.is_handshaking() {
        for _ in 0..2 {
            wire.clear();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut &wire[..]).unwrap();
            s.process_new_packets().unwrap();
            wire.clear();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut &wire[..]).unwrap();
            c.process_new_packets().unwrap();
        }
    }
    let suite = c.negotiated_cipher_suite().unwrap().suite();
    println!("{suite:?}, {:?}", c.protocol_version().unwrap());
    // The SCU's writes (a batch of PDUs of 256 KiB) as `rustls::StreamOwned` makes them: as
    // much plaintext as the records held may take, then the records out; the receiver reads
    // what arrived. With rustls's default limit (dicom-inlet's) and a larger one.
    let chunk = 256 * 1024;
    let plain = vec![3u8; chunk];
    let mut out = vec![0u8; chunk];
    for (limit, name) in [(None, "64 KiB (default)"), (Some(LARGER_LIMIT), "1 MiB")] {
        if limit.is_some() {
            c.set_buffer_limit(limit);
        }
        let (mut encrypt, mut decrypt, mut copy) = (0, 0, 0);
        let mut done = 0;
        while done < TOTAL {
            let t0 = cpu_ns();
            wire.clear();
            let mut sent = 0;
            while sent < chunk {
                sent += c.writer().write(&plain[sent..]).unwrap();
                while c.wants_write() {
                    c.write_tls(&mut wire).unwrap();
                }
            }
            let t1 = cpu_ns();
            let mut records = &wire[..];
            let mut got = 0;
            while got < chunk {
                if !records.is_empty() {
                    s.read_tls(&mut records).unwrap();
                    s.process_new_packets().unwrap();
                }
                while let Ok(n @ 1..) = s.reader().read(&mut out[got..]) {
                    got += n;
                }
            }
            let t2 = cpu_ns();
            out.copy_from_slice(std::hint::black_box(&plain));
            let t3 = cpu_ns();
            (encrypt, decrypt, copy) = (encrypt + t1 - t0, decrypt + t2 - t1, copy + t3 - t2);
            done += chunk;
        }
        let per_byte = |ns: u64| ns as f64 / done as f64;
        println!(
            "records held: {name}; per byte, CPU ns: sender encrypts {:.3}, receiver decrypts \
             {:.3}; a plain copy {:.3}",
            per_byte(encrypt),
            per_byte(decrypt),
            per_byte(copy)
        );
    }
    // The server's way before its own record layer: rustls's unbuffered API on the bytes as
    // received.
    let mut c = ClientConnection::new(client, name).unwrap();
    let mut u = UnbufferedServerConnection::new(server).unwrap();
    unbuffered_handshake(&mut c, &mut u);
    let (mut decrypt, mut done) = (0, 0);
    while done < TOTAL {
        wire.clear();
        let mut sent = 0;
        while sent < chunk {
            sent += c.writer().write(&plain[sent..]).unwrap();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
        }
        let t0 = cpu_ns();
        let (mut got, mut start) = (0, 0);
        while got < chunk {
            let status = u.process_tls_records(&mut wire[start..]);
            let mut discard = status.discard;
            match status.state.unwrap() {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.unwrap();
                        discard += record.discard;
                        let n = record.payload.len();
                        out[got..got + n].copy_from_slice(record.payload);
                        got += n;
                    }
                }
                other => panic!("{other:?} with {got} of {chunk} bytes read"),
            }
            start += discard;
        }
        decrypt += cpu_ns() - t0;
        done += chunk;
    }
    println!(
        "unbuffered server; per byte, CPU ns: receiver decrypts {:.3}",
        decrypt as f64 / done as f64
    );
}

/// The handshake of a client and a server on rustls's unbuffered API, in memory.
fn unbuffered_handshake(c: &mut ClientConnection, s: &mut UnbufferedServerConnection) {
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let mut record = vec![0u8; 1 << 16];
    while c.is_handshaking() || s.is_handshaking() {
        while c.wants_write() {
            c.write_tls(&mut to_server).unwrap();
        }
        loop {
            let status = s.process_tls_records(&mut to_server);
            let discard = status.discard;
            let more = match status.state.unwrap() {
                ConnectionState::EncodeTlsData(mut encode) => {
                    let n = encode.encode(&mut record).unwrap();
                    to_client.extend_from_slice(&record[..n]);
                    true
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    true
                }
                // Waiting for the client, or done.
                _ => false,
            };
            to_server.drain(..discard);
            if !more {
                break;
            }
        }
        let mut flight = &to_client[..];
        while !flight.is_empty() {
            c.read_tls(&mut flight).unwrap();
            c.process_new_packets().unwrap();
        }
        to_client.clear();
    }
}
