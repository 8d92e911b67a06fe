//! Finding and merging configuration files.
//!
//! The first existing file of: the path from the shim options (or a pod annotation),
//! `HULL_CONF_FILE`, `/etc/hull/configuration.toml`, `/usr/share/defaults/hull/configuration.toml`.
//! A path named explicitly (the first two) must exist. Then every `*.toml` in `config.d/`
//! beside that file, in alphabetical order, each overriding the keys it sets. With no file at
//! all, the built-in defaults apply.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Config, Error, Result};

/// Where to look for configuration.
#[derive(Debug, Clone, Default)]
pub struct ConfigSearch {
    /// The path from the shim options (`ConfigPath`) or a pod annotation.
    pub explicit: Option<PathBuf>,
    /// The path from `HULL_CONF_FILE`.
    pub env_file: Option<PathBuf>,
    /// The system files, in order (normally [`crate::paths::system_config_files`]).
    pub system_files: Vec<PathBuf>,
}

impl ConfigSearch {
    /// The search a shim or `hull` CLI makes: this process's environment and the system
    /// paths.
    pub fn from_env(explicit: Option<PathBuf>) -> Self {
        Self {
            explicit,
            env_file: std::env::var_os(crate::paths::CONF_FILE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            system_files: crate::paths::system_config_files(),
        }
    }

    /// The configuration file this search selects, if any, and who named it.
    fn select(&self) -> Result<Option<PathBuf>> {
        for (path, origin) in [
            (&self.explicit, "the shim options"),
            (&self.env_file, crate::paths::CONF_FILE_ENV),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err(Error::NotFound {
                        path: path.clone(),
                        origin,
                    });
                }
                return Ok(Some(path.clone()));
            }
        }
        Ok(self.system_files.iter().find(|p| p.is_file()).cloned())
    }
}

/// A configuration and the files it came from, in the order applied.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The merged, validated configuration.
    pub config: Config,
    /// The main file, then its drop-ins; empty when only defaults apply.
    pub sources: Vec<PathBuf>,
}

impl LoadedConfig {
    /// Where the configuration came from, for messages: the files, or "built-in defaults".
    pub fn origin(&self) -> String {
        origin_of(&self.sources)
    }
}

fn origin_of(sources: &[PathBuf]) -> String {
    if sources.is_empty() {
        "built-in defaults".to_owned()
    } else {
        sources
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// Finds, parses, merges and validates the configuration.
pub fn load(search: &ConfigSearch) -> Result<LoadedConfig> {
    let Some(main) = search.select()? else {
        let config = Config::default();
        config.validate("built-in defaults")?;
        return Ok(LoadedConfig {
            config,
            sources: Vec::new(),
        });
    };
    let mut sources = vec![main.clone()];
    sources.extend(drop_ins(&main)?);

    let mut merged = toml::Table::new();
    for path in &sources {
        let table = parse_file(path)?;
        merge(&mut merged, table);
    }
    let config = into_config(merged, &sources)?;
    config.validate(&origin_of(&sources))?;
    Ok(LoadedConfig { config, sources })
}

/// The `*.toml` files of `config.d/` beside `main`, sorted by name.
fn drop_ins(main: &Path) -> Result<Vec<PathBuf>> {
    let dir = main
        .parent()
        .unwrap_or(Path::new("/"))
        .join(crate::paths::DROP_IN_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Read { path: dir, source }),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Read {
            path: dir.clone(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads one file, checking it alone against the schema so that an error names this file.
fn parse_file(path: &Path) -> Result<toml::Table> {
    let text = fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let parse_error = |message: String| Error::Parse {
        path: path.to_owned(),
        message,
    };
    toml::from_str::<Config>(&text).map_err(|e| parse_error(e.to_string()))?;
    text.parse::<toml::Table>()
        .map_err(|e| parse_error(e.to_string()))
}

/// Deserializes a merged table. Each part was checked alone, so an error here is a conflict
/// between files; it names all of them.
pub(super) fn into_config(table: toml::Table, sources: &[PathBuf]) -> Result<Config> {
    Config::deserialize_table(table).map_err(|message| Error::Parse {
        path: PathBuf::from(origin_of(sources)),
        message,
    })
}

impl Config {
    fn deserialize_table(table: toml::Table) -> std::result::Result<Config, String> {
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())
    }
}

/// Merges `overlay` into `base`: tables merge key by key, any other value replaces.
pub(super) fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(overlay_table)) => {
                merge(base_table, overlay_table);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::HypervisorKind;
    use super::*;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn search_system(files: &[&Path]) -> ConfigSearch {
        ConfigSearch {
            system_files: files.iter().map(|p| p.to_path_buf()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn no_file_means_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = load(&search_system(&[&dir.path().join("missing.toml")])).unwrap();
        assert_eq!(loaded.config, Config::default());
        assert!(loaded.sources.is_empty());
        assert_eq!(loaded.origin(), "built-in defaults");
    }

    #[test]
    fn the_builtin_vmm_runs_in_the_shim_unless_hull_vmm_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("configuration.toml");
        write(&file, "hypervisor = \"builtin\"\n");
        let loaded = load(&search_system(&[&file])).unwrap();
        assert_eq!(
            loaded.config.vm.builtin_process,
            super::super::BuiltinProcess::Shim
        );
        write(&file, "[vm]\nbuiltin_process = \"hull-vmm\"\n");
        let loaded = load(&search_system(&[&file])).unwrap();
        assert_eq!(
            loaded.config.vm.builtin_process,
            super::super::BuiltinProcess::HullVmm
        );
        write(&file, "[vm]\nbuiltin_process = \"qemu\"\n");
        let err = format!(
            "{:#}",
            anyhow::Error::from(load(&search_system(&[&file])).unwrap_err())
        );
        assert!(
            err.contains("builtin_process") && err.contains("shim") && err.contains("hull-vmm"),
            "the bad value's error names the key and the choices: {err}"
        );
    }

    #[test]
    fn first_existing_system_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc/configuration.toml");
        let usr = dir.path().join("usr/configuration.toml");
        write(&usr, "[vm]\nvcpus = 3\n");
        let loaded = load(&search_system(&[&etc, &usr])).unwrap();
        assert_eq!(loaded.config.vm.vcpus, 3);
        write(&etc, "[vm]\nvcpus = 2\n");
        let loaded = load(&search_system(&[&etc, &usr])).unwrap();
        assert_eq!(loaded.config.vm.vcpus, 2);
        assert_eq!(loaded.sources, [etc]);
    }

    #[test]
    fn drop_ins_apply_in_alphabetical_order_and_keep_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("configuration.toml");
        write(
            &main,
            "hypervisor = \"qemu\"\n[vm]\nvcpus = 2\nmemory_mib = 512\n",
        );
        write(
            &dir.path().join("config.d/20-more.toml"),
            "[vm]\nvcpus = 4\n",
        );
        write(
            &dir.path().join("config.d/10-first.toml"),
            "[vm]\nvcpus = 3\nkernel_params = \"quiet\"\n",
        );
        write(&dir.path().join("config.d/README"), "not toml, ignored");
        let loaded = load(&search_system(&[&main])).unwrap();
        assert_eq!(loaded.config.hypervisor, HypervisorKind::Qemu);
        assert_eq!(
            loaded.config.vm.vcpus, 4,
            "20-more.toml applies after 10-first.toml"
        );
        assert_eq!(
            loaded.config.vm.memory_mib, 512,
            "keys a drop-in does not set are kept"
        );
        assert_eq!(loaded.config.vm.kernel_params, "quiet");
        let names: Vec<_> = loaded
            .sources
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            ["configuration.toml", "10-first.toml", "20-more.toml"]
        );
    }

    #[test]
    fn invalid_drop_in_is_named_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("configuration.toml");
        write(&main, "[vm]\nvcpus = 2\n");
        let bad = dir.path().join("config.d/50-typo.toml");
        write(&bad, "[vm]\nvcpu = 4\n");
        let err = load(&search_system(&[&main])).unwrap_err().to_string();
        assert!(err.contains("50-typo.toml"), "{err}");
        assert!(err.contains("vcpu"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn the_network_backend_is_chosen_by_name_and_a_wrong_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("configuration.toml");
        write(&main, "[network]\nbackend = \"hull-net\"\n");
        let loaded = load(&search_system(&[&main])).unwrap();
        assert_eq!(
            loaded.config.network.backend,
            super::super::NetworkBackend::HullNet
        );
        write(&main, "[network]\nbackend = \"vhost-net\"\n");
        let err = load(&search_system(&[&main])).unwrap_err().to_string();
        assert!(
            err.contains("vhost-net") && err.contains("hull-net") && err.contains("qemu"),
            "the error names the value and the choices: {err}"
        );
    }

    #[test]
    fn wrong_type_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("configuration.toml");
        write(&main, "[vm]\nmemory_mib = \"lots\"\n");
        let err = load(&search_system(&[&main])).unwrap_err().to_string();
        assert!(
            err.contains("configuration.toml") && err.contains("memory_mib"),
            "{err}"
        );
    }

    #[test]
    fn explicit_path_must_exist_and_beats_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = dir.path().join("explicit.toml");
        let env_file = dir.path().join("env.toml");
        write(&env_file, "[vm]\nvcpus = 5\n");
        let search = ConfigSearch {
            explicit: Some(explicit.clone()),
            env_file: Some(env_file.clone()),
            system_files: vec![],
        };
        let err = load(&search).unwrap_err().to_string();
        assert!(
            err.contains("explicit.toml") && err.contains("shim options"),
            "{err}"
        );
        write(&explicit, "[vm]\nvcpus = 6\n");
        assert_eq!(load(&search).unwrap().config.vm.vcpus, 6);
        let search = ConfigSearch {
            explicit: None,
            ..search
        };
        assert_eq!(load(&search).unwrap().config.vm.vcpus, 5);
    }

    #[test]
    fn validation_errors_name_the_sources() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("configuration.toml");
        write(&main, "[vm]\nvcpus = 300\n");
        let err = load(&search_system(&[&main])).unwrap_err().to_string();
        assert!(
            err.contains("vm.vcpus = 300") && err.contains("configuration.toml"),
            "{err}"
        );
    }

    proptest::proptest! {
        /// Any text at all as a configuration file: an error or a valid config, never a panic.
        #[test]
        fn arbitrary_files_never_panic(text in "\\PC{0,200}") {
            let dir = tempfile::tempdir().unwrap();
            let main = dir.path().join("configuration.toml");
            fs::write(&main, &text).unwrap();
            if let Ok(loaded) = load(&search_system(&[&main])) {
                loaded.config.validate("x").unwrap();
            }
        }
    }
}
