//! libFuzzer entry point of [`hull_fuzz::virtio_mmio`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hull_fuzz::virtio_mmio(data));
