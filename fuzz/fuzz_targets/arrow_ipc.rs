//! Arrow IPC feature tables (memory-mapped, zero-copy when aligned).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| plflow_fuzz::inspect_file("features.arrow", data));
