//! libFuzzer entry point of [`hull_fuzz::vhost_user_msg`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hull_fuzz::vhost_user_msg(data));
