//! TLS records after the handshake, opened by our record layer (tls/record.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dicom_inlet::fuzzing::tls_records(data));
