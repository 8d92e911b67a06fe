//! libFuzzer entry point of [`hull_fuzz::virtq_chain`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hull_fuzz::virtq_chain(data));
