//! Parquet feature tables (converted to Arrow IPC in the cache, then read).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| plflow_fuzz::inspect_file("features.parquet", data));
