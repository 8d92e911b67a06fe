//! Reading a device's virtio config space for a frontend: the offset and size come from the
//! guest (through the frontend), so the window is clipped to the space, never indexed blindly.

/// The bytes of `config` from `offset`, at most `size` of them; empty past the end.
pub fn read_window(config: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = start.saturating_add(usize::try_from(size).unwrap_or(usize::MAX));
    config
        .get(start..end.min(config.len()))
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_clipped_to_the_space() {
        let config = [1u8, 2, 3, 4];
        assert_eq!(read_window(&config, 1, 2), [2, 3]);
        assert_eq!(read_window(&config, 2, 100), [3, 4]);
        assert!(read_window(&config, 4, 1).is_empty());
        assert!(read_window(&config, u32::MAX, u32::MAX).is_empty());
    }
}
