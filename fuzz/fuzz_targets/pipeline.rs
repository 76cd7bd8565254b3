//! Pipeline YAML with `--set` overrides (after a NUL byte, one per line), parsed and checked.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| plflow_fuzz::check_pipeline(data));
