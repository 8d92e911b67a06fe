//! libFuzzer entry point of [`hull_fuzz::fuse_request`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hull_fuzz::fuse_request(data));
