//! Model and checkpoint files (safetensors with plflow metadata): loaded, read, exported.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| plflow_fuzz::load_model(data));
