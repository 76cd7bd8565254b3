//! Image folders as archives (`<split>/<class>/<file>` members, PNG or JPEG), raw tar or
//! gzip'd (the first byte picks which), decoded into the cache and read.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let name = if pick & 1 == 0 { "images.tar" } else { "images.tar.gz" };
    plflow_fuzz::open_images(name, body);
});
