//! Finding what a test left running: processes are looked up by their command line, since a
//! test knows the paths and ids it gave them.

/// Command lines (arguments joined by spaces) of the processes whose command line contains
/// every one of `needles`.
pub fn processes_with(needles: &[&str]) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| needles.iter().all(|n| cmdline.contains(n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_running_process_by_its_arguments_and_not_after_it_exits() {
        let marker = format!("hull-leftovers-test-{}", std::process::id());
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 100", &marker])
            .spawn()
            .expect("sh starts");
        assert_eq!(processes_with(&["sleep 100", &marker]).len(), 1);
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert!(processes_with(&[&marker]).is_empty());
    }
}
