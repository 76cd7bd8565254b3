//! CIFAR-10/100 binary record files.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| plflow_fuzz::inspect_file("data_batch_1.bin", data));
