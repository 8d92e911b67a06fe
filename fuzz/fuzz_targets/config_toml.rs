//! libFuzzer entry point of [`hull_fuzz::config_toml`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hull_fuzz::config_toml(data));
