//! A-ASSOCIATE-RQ body parsed, then answered by AcceptorPolicy::negotiate.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dicom_inlet::fuzzing::negotiation(data));
