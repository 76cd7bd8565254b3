//! IDX files as MNIST ships them, raw or gzip'd (the first byte picks which name it gets).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let name = if pick & 1 == 0 { "t10k-images-idx3-ubyte" } else { "t10k-images-idx3-ubyte.gz" };
    plflow_fuzz::inspect_file(name, body);
});
