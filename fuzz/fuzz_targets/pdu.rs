//! Any PDU: type byte then body; P-DATA PDVs iterated, other PDUs round-tripped.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dicom_inlet::fuzzing::pdu(data));
