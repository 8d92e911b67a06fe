//! `make install` and the default configuration file it installs, as an operator meets them:
//! the real script, real binaries, a staging root (DESTDIR).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hull_shim::config::{self, Config, ConfigSearch};

const BINARIES: [&str; 8] = [
    "containerd-shim-hull-v2",
    "hull",
    "hull-agent",
    "hull-vsock",
    "hull-blk",
    "hull-net",
    "hull-fs",
    "hull-vmm",
];

fn shim_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn all_output(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every dotted key of a TOML table (`vm.vcpus`), tables themselves excluded.
fn keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let dotted = format!("{prefix}{key}");
        match value {
            toml::Value::Table(inner) => keys(inner, &format!("{dotted}."), out),
            _ => {
                out.insert(dotted);
            }
        }
    }
}

#[test]
fn the_shipped_configuration_sets_every_key_to_its_built_in_default() {
    let path = shim_dir().join("configuration.toml");
    let loaded = config::load(&ConfigSearch {
        explicit: Some(path.clone()),
        ..Default::default()
    })
    .expect("the shipped configuration loads");
    assert_eq!(loaded.config, Config::default(), "{}", path.display());

    // Every key is present (and so documented beside its value), none is left out.
    let shipped: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let defaults: toml::Table =
        toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
    let (mut shipped_keys, mut default_keys) = (BTreeSet::new(), BTreeSet::new());
    keys(&shipped, "", &mut shipped_keys);
    keys(&defaults, "", &mut default_keys);
    assert_eq!(shipped_keys, default_keys);
}

/// Where the workspace's binaries were built for this test run, if they were.
fn built_binaries() -> Option<PathBuf> {
    let dir = hull_tests::artifacts::workspace_binary("hull")
        .ok()?
        .parent()?
        .to_owned();
    BINARIES
        .iter()
        .all(|bin| dir.join(bin).is_file())
        .then_some(dir)
}

fn install(bin_src: &Path, image_src: &Path, destdir: &Path) -> Output {
    Command::new(shim_dir().join("install.sh"))
        .env("DESTDIR", destdir)
        .env("PREFIX", "/usr/local")
        .env("BIN_SRC", bin_src)
        .env("IMAGE_SRC", image_src)
        .output()
        .expect("install.sh runs")
}

fn fake_image(dir: &Path) {
    std::fs::write(dir.join("vmlinux"), b"kernel bytes").unwrap();
    std::fs::write(dir.join("initrd.img"), b"initrd bytes").unwrap();
}

#[test]
fn install_stages_binaries_image_and_a_configuration_pointing_at_them() {
    let Some(bin_src) = built_binaries() else {
        hull_tests::prereq::skip(
            "install_stages_binaries_image_and_a_configuration_pointing_at_them",
            &hull_tests::prereq::Missing::new(
                "the workspace's binaries built beside this test",
                "run 'cargo test --workspace' (make test)",
            ),
        );
        return;
    };
    let image = tempfile::tempdir().unwrap();
    fake_image(image.path());
    let dest = tempfile::tempdir().unwrap();

    let output = install(&bin_src, image.path(), dest.path());
    let text = all_output(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("runtime_type = \"io.containerd.hull.v2\""),
        "{text}"
    );

    let root = dest.path();
    for bin in BINARIES {
        let installed = root.join("usr/local/bin").join(bin);
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(bin_src.join(bin)).unwrap(),
            "{}",
            installed.display()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{}", installed.display());
    }
    assert_eq!(
        std::fs::read(root.join("usr/local/share/hull/vmlinux")).unwrap(),
        b"kernel bytes"
    );

    let completion =
        std::fs::read_to_string(root.join("usr/local/share/bash-completion/completions/hull"))
            .unwrap();
    assert!(completion.contains("_hull()"), "{completion}");
    assert!(
        std::fs::read_to_string(root.join("usr/local/share/zsh/vendor-completions/_hull"))
            .unwrap()
            .contains("#compdef hull")
    );
    assert!(std::fs::read_to_string(
        root.join("usr/local/share/fish/vendor_completions.d/hull.fish")
    )
    .unwrap()
    .contains("complete -c hull"));
    let man = std::fs::read_to_string(root.join("usr/local/share/man/man1/hull.1")).unwrap();
    assert!(man.contains(".TH hull 1"), "{man}");

    // The installed hull reads the installed configuration: the image is the installed one,
    // everything else the built-in default.
    let conf = root.join("usr/share/defaults/hull/configuration.toml");
    let loaded = config::load(&ConfigSearch {
        explicit: Some(conf.clone()),
        ..Default::default()
    })
    .expect("the installed configuration loads");
    assert_eq!(
        loaded.config.kernel(),
        Path::new("/usr/local/share/hull/vmlinux")
    );
    assert_eq!(
        loaded.config.initrd(),
        Path::new("/usr/local/share/hull/initrd.img")
    );
    let mut expected = Config::default();
    expected.vm.kernel = "/usr/local/share/hull/vmlinux".into();
    expected.vm.initrd = "/usr/local/share/hull/initrd.img".into();
    assert_eq!(loaded.config, expected);

    let shown = Command::new(root.join("usr/local/bin/hull"))
        .args(["config", "show"])
        .env("HULL_CONF_FILE", &conf)
        .output()
        .unwrap();
    let text = all_output(&shown);
    assert!(shown.status.success(), "{text}");
    assert!(text.contains("/usr/local/share/hull/vmlinux"), "{text}");
}

#[test]
fn install_without_a_build_names_what_is_missing_and_writes_nothing() {
    let empty = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    fake_image(image.path());
    let dest = tempfile::tempdir().unwrap();
    let output = install(empty.path(), image.path(), dest.path());
    let text = all_output(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("containerd-shim-hull-v2 is missing"),
        "{text}"
    );
    assert!(text.contains("make build"), "{text}");
    assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);

    let no_image = tempfile::tempdir().unwrap();
    if let Some(bin_src) = built_binaries() {
        let output = install(&bin_src, no_image.path(), dest.path());
        let text = all_output(&output);
        assert!(!output.status.success(), "{text}");
        assert!(
            text.contains("vmlinux is missing: run 'make image'"),
            "{text}"
        );
        assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);
    }
}
