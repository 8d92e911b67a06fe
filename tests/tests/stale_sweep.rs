//! The sweep of a dead earlier run's leftovers (`hull_tests::stale`), on a fake stale run: a
//! claimed directory whose owner is gone, a process (with a child) still running for it, a
//! mount below it, and a sandbox record naming a run directory with a mount under /run/hull.

use std::path::Path;
use std::process::Command;

use hull_tests::require;
use hull_tests::stale::{claim, sweep, OWNER_FILE};

fn mount_tmpfs(target: &Path) {
    std::fs::create_dir_all(target).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(target)
        .status()
        .unwrap();
    assert!(status.success(), "mounting a tmpfs at {}", target.display());
}

fn mounted(target: &Path) -> bool {
    let target = target.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

fn processes_naming(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

#[test]
fn a_dead_runs_directory_processes_and_mounts_are_swept_and_a_live_ones_are_not() {
    let test = "a_dead_runs_directory_processes_and_mounts_are_swept_and_a_live_ones_are_not";
    require!(test, hull_tests::prereq::root());
    let parent = tempfile::tempdir().unwrap();
    let prefix = "hull-sweep-test-";
    let stale = parent.path().join(format!("{prefix}dead"));
    let live = parent.path().join(format!("{prefix}live"));
    let unclaimed = parent.path().join(format!("{prefix}unclaimed"));
    for dir in [&stale, &live, &unclaimed] {
        std::fs::create_dir(dir).unwrap();
    }
    claim(&live).unwrap();
    // This process's pid with another start time: a process that is gone.
    std::fs::write(
        stale.join(OWNER_FILE),
        format!("{} 1\n", std::process::id()),
    )
    .unwrap();

    // What the dead run left: a process naming its directory (as containerd names its
    // config) with a child of its own (as a shim's QEMU), a mount below the directory, and a
    // shim's record naming a run directory under /run/hull with its shared mount.
    let config = stale.join("config.toml");
    let mut leftover = Command::new("sh")
        .arg("-c")
        .arg(format!("sleep 1000 & wait; : {}", config.display()))
        .spawn()
        .unwrap();
    mount_tmpfs(&stale.join("root/snapshot"));
    let run_dir = Path::new("/run/hull")
        .join(format!("sweep-test-{}", std::process::id()))
        .join("pod");
    mount_tmpfs(&run_dir.join("shared"));
    let bundle = stale.join("state/io.containerd.runtime.v2.task/hull-test/pod");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("hull-sandbox.json"),
        format!(
            r#"{{"version":1,"sandbox_id":"pod","processes":[],"mounts":[{:?}],"paths":[{:?}]}}"#,
            run_dir.join("shared").display().to_string(),
            run_dir.display().to_string()
        ),
    )
    .unwrap();
    // A live run's directory and an unclaimed one get a mount too: they must keep it.
    mount_tmpfs(&live.join("root"));
    mount_tmpfs(&unclaimed.join("root"));

    let swept = sweep(parent.path(), prefix);

    assert_eq!(swept, std::slice::from_ref(&stale));
    assert!(!stale.exists());
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(leftover.wait().unwrap().signal(), Some(libc::SIGKILL));
    let needle = format!("{}/", stale.display());
    assert!(
        processes_naming(&needle).is_empty(),
        "{:?}",
        processes_naming(&needle)
    );
    assert!(!mounted(&stale.join("root/snapshot")));
    assert!(!mounted(&run_dir.join("shared")));
    assert!(!run_dir.exists());
    let _ = std::fs::remove_dir(run_dir.parent().unwrap());

    for dir in [&live, &unclaimed] {
        assert!(mounted(&dir.join("root")), "{}", dir.display());
        let status = Command::new("umount")
            .arg(dir.join("root"))
            .status()
            .unwrap();
        assert!(status.success());
    }
}
