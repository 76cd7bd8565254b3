//! One image file's bytes (PNG, JPEG) decoded to the example size, as the archive reader
//! does for each member.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let opts = plflow_datasets::images::ImageOptions { height: 8, width: 8, channels: 3, resize: true };
    let _ = plflow_datasets::images::decode(data, &opts);
});
