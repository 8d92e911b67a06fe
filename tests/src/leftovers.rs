//! Finding what a test left running: processes are looked up by their command line, since a
//! test knows the paths and ids it gave them.

/// Command lines (arguments joined by spaces) of the processes whose command line contains
/// every one of `needles`.
pub fn processes_with(needles: &[&str]) -> Vec<String> {
    matching(needles).into_iter().map(|(_, c)| c).collect()
}

/// Pids of the processes whose command line contains every one of `needles`, for a test
/// that must signal one of them.
pub fn pids_with(needles: &[&str]) -> Vec<i32> {
    matching(needles).into_iter().map(|(p, _)| p).collect()
}

fn matching(needles: &[&str]) -> Vec<(i32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .filter(|(_, cmdline)| needles.iter().all(|n| cmdline.contains(n)))
        .collect()
}

/// The parent of process `pid` (field 4 of /proc/PID/stat); `None` once it is gone.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields follow its last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every file (anything but a directory) below `dir`, for looking for left state files.
pub fn files_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Every directory below `dir`, at most `depth` levels down.
pub fn dirs_below(dir: &std::path::Path, depth: usize) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_owned(), 0)];
    while let Some((dir, level)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.push(entry.path());
                if level + 1 < depth {
                    stack.push((entry.path(), level + 1));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_running_process_by_its_arguments_and_not_after_it_exits() {
        let marker = format!("hull-leftovers-test-{}", std::process::id());
        // `; true` keeps sh from exec'ing sleep in its place (dash does for a lone command),
        // which would drop the marker from the command line.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 100; true", &marker])
            .spawn()
            .expect("sh starts");
        // Between fork and exec the child still shows this test binary's command line.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut found = processes_with(&["sleep 100", &marker]);
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            found = processes_with(&["sleep 100", &marker]);
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            pids_with(&["sleep 100", &marker]),
            [i32::try_from(child.id()).unwrap()]
        );
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert!(processes_with(&[&marker]).is_empty());
    }
}
