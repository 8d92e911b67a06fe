//! libFuzzer entry point of [`hull_fuzz::vsock_packet`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hull_fuzz::vsock_packet(data));
