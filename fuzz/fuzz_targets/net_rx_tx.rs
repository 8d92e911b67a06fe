//! libFuzzer entry point of [`hull_fuzz::net_rx_tx`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hull_fuzz::net_rx_tx(data));
