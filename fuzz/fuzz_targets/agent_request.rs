//! libFuzzer entry point of [`hull_fuzz::agent_request`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hull_fuzz::agent_request(data));
