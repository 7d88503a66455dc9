//! DIMSE command set parsed (Command::parse) and round-tripped.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dicom_inlet::fuzzing::command(data));
