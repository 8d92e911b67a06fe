//! libFuzzer entry point of [`hull_fuzz::oci_spec`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hull_fuzz::oci_spec(data));
