//! The `hull` command line as an operator uses it: real binary, real files.

use std::path::Path;
use std::process::{Command, Output};

fn hull(args: &[&str], conf: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hull"));
    cmd.args(args).env_remove("HULL_CONF_FILE");
    if let Some(conf) = conf {
        cmd.env("HULL_CONF_FILE", conf);
    }
    cmd.output().expect("hull runs")
}

fn all_output(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn check_fails_naming_a_kernel_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("configuration.toml");
    std::fs::write(
        &conf,
        "hypervisor = \"qemu\"\n[vm]\nkernel = \"/nonexistent/hull-vmlinux\"\n",
    )
    .unwrap();
    let output = hull(&["check"], Some(&conf));
    let text = all_output(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("FAIL  kernel: /nonexistent/hull-vmlinux does not exist"),
        "{text}"
    );
    assert!(
        text.contains("configuration.toml"),
        "the configuration's origin is shown: {text}"
    );
}

#[test]
fn check_reports_an_invalid_drop_in_by_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("configuration.toml");
    std::fs::write(&conf, "").unwrap();
    std::fs::create_dir(dir.path().join("config.d")).unwrap();
    std::fs::write(
        dir.path().join("config.d/10-bad.toml"),
        "[vm]\nvcpus = \"two\"\n",
    )
    .unwrap();
    let output = hull(&["check"], Some(&conf));
    let text = all_output(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("10-bad.toml") && text.contains("vcpus"),
        "{text}"
    );
}

#[test]
fn config_show_prints_the_merged_configuration_and_its_sources() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("configuration.toml");
    std::fs::write(&conf, "[vm]\nvcpus = 2\n").unwrap();
    std::fs::create_dir(dir.path().join("config.d")).unwrap();
    std::fs::write(
        dir.path().join("config.d/10-mem.toml"),
        "[vm]\nmemory_mib = 1024\n",
    )
    .unwrap();
    let output = hull(&["config", "show"], Some(&conf));
    let text = all_output(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("vcpus = 2") && text.contains("memory_mib = 1024"),
        "{text}"
    );
    assert!(text.contains("10-mem.toml"), "{text}");
}

#[test]
fn show_default_paths_lists_the_search_order() {
    let output = hull(
        &["config", "show-default-paths"],
        Some(Path::new("/tmp/hull-env.toml")),
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "/tmp/hull-env.toml",
            "/etc/hull/configuration.toml",
            "/usr/share/defaults/hull/configuration.toml"
        ]
    );
}

#[test]
fn env_reports_the_files_the_resolved_paths_and_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("configuration.toml");
    std::fs::write(
        &conf,
        "hypervisor = \"qemu\"\n[vm]\ninitrd = \"/nonexistent/initrd.img\"\nvcpus = 3\n",
    )
    .unwrap();
    let output = hull(&["env"], Some(&conf));
    let text = all_output(&output);
    assert!(output.status.success(), "{text}");
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
            .to_owned()
    };
    assert_eq!(value("config.files"), conf.display().to_string());
    assert_eq!(value("hypervisor"), "qemu");
    assert_eq!(value("vm.initrd"), "/nonexistent/initrd.img (missing)");
    assert_eq!(value("vm.vcpus"), "3");
    assert_eq!(value("hull.version"), env!("CARGO_PKG_VERSION"));
}

#[test]
fn bash_completion_registers_for_hull_and_knows_its_subcommands() {
    let output = hull(&["completions", "bash"], None);
    assert!(output.status.success(), "{}", all_output(&output));
    let script = String::from_utf8_lossy(&output.stdout).into_owned();
    for subcommand in [
        "check",
        "env",
        "config",
        "show-default-paths",
        "completions",
        "man",
    ] {
        assert!(
            script.contains(subcommand),
            "{subcommand} missing from the script"
        );
    }
    // Sourced by bash, it registers a completion function for `hull`.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("hull.bash");
    std::fs::write(&file, &script).expect("writing the script");
    let bash = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p hull", file.display()))
        .output()
        .expect("bash runs");
    let registered = String::from_utf8_lossy(&bash.stdout);
    assert!(
        registered.contains("-F _hull") && registered.trim_end().ends_with("hull"),
        "{registered}"
    );
}

#[test]
fn completions_for_an_unknown_shell_name_the_shells_there_are() {
    let output = hull(&["completions", "tcsh"], None);
    assert!(!output.status.success());
    let text = all_output(&output);
    assert!(
        text.contains("tcsh") && text.contains("bash") && text.contains("zsh"),
        "{text}"
    );
}

#[test]
fn the_manual_page_is_roff_covering_every_subcommand() {
    let output = hull(&["man"], None);
    assert!(output.status.success(), "{}", all_output(&output));
    let page = String::from_utf8_lossy(&output.stdout);
    assert!(page.contains(".TH hull 1"), "{page}");
    for subcommand in ["check", "env", "config", "completions", "man"] {
        assert!(page.contains(subcommand), "{subcommand} missing: {page}");
    }
}
