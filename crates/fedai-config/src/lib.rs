//! # fedai-config
//!
//! Every fed_AI binary takes its settings the same way: clap flags, each with a `FEDAI_*`
//! environment fallback (clap's `env`), then an optional TOML file (`--config`) whose keys are
//! the long flags with `_`, then built-in defaults. Precedence: **flag > environment > file >
//! default**.
//!
//! The file is read into the *same struct* clap parses (it derives `Serialize` and
//! `Deserialize` with `deny_unknown_fields`), so a setting exists once: its flag, its variable
//! and its file key cannot drift apart, and a misspelt key is an error naming it. [`layered`]
//! overlays what the command line and the environment gave on top of the file; the binary then
//! applies its defaults to what is still unset.
//!
//! What counts as given: a value other than `null`, a non-empty list, and `true` (a switch
//! cannot be turned off on the command line when the file turns it on).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

/// Why the settings cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, names an unknown setting, or has a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The file sets something only the command line or the environment may.
    #[error("{path}: `{key}` cannot be set in a config file")]
    NotInFile {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
}

/// Whether a flag's value was given (see the crate docs).
fn given(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::Array(a) => !a.is_empty(),
        _ => true,
    }
}

/// `flags` (parsed by clap, environment included) over the TOML file at `file`, as one `T`.
/// Keys in `not_in_file` (the file's own path, secrets) are refused in the file.
pub fn layered<T>(flags: &T, file: Option<&Path>, not_in_file: &[&str]) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    let parse = |path: &Path, message: String| ConfigError::Parse {
        path: path.to_owned(),
        message,
    };
    let mut merged = match file {
        None => Map::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let table: toml::Table =
                toml::from_str(&text).map_err(|e| parse(path, e.to_string()))?;
            if let Some(key) = not_in_file.iter().find(|k| table.contains_key(**k)) {
                return Err(ConfigError::NotInFile {
                    path: path.to_owned(),
                    key: (*key).to_owned(),
                });
            }
            // Type-checked and unknown keys refused here, against `T` itself, so the error
            // names the file.
            let from_file: T = toml::from_str(&text).map_err(|e| parse(path, e.to_string()))?;
            match serde_json::to_value(&from_file) {
                Ok(Value::Object(m)) => m
                    .into_iter()
                    .filter(|(k, _)| table.contains_key(k))
                    .collect(),
                _ => Map::new(),
            }
        }
    };
    let Ok(Value::Object(given_flags)) = serde_json::to_value(flags) else {
        unreachable!("settings are a struct");
    };
    for (k, v) in given_flags {
        if given(&v) || !merged.contains_key(&k) {
            merged.insert(k, v);
        }
    }
    serde_json::from_value(Value::Object(merged)).map_err(|e| ConfigError::Parse {
        path: file.map(Path::to_owned).unwrap_or_default(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Settings {
        config: Option<PathBuf>,
        nsec: Option<String>,
        relays: Vec<String>,
        port: Option<u16>,
        name: Option<String>,
        memory: bool,
    }

    fn file(text: &str) -> tempfile_path::Temp {
        tempfile_path::Temp::new(text)
    }

    mod tempfile_path {
        pub struct Temp(pub std::path::PathBuf);
        impl Temp {
            pub fn new(text: &str) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "fedai-config-{}-{}.toml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, text).unwrap();
                Self(p)
            }
        }
        impl Drop for Temp {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_fills_the_rest() {
        let f = file("relays = [\"ws://file\"]\nport = 1\nname = \"from file\"\nmemory = true\n");
        let flags = Settings {
            port: Some(2),
            ..Default::default()
        };
        let s = layered(&flags, Some(&f.0), &["config", "nsec"]).unwrap();
        assert_eq!(s.port, Some(2), "the flag wins");
        assert_eq!(s.relays, ["ws://file"], "an empty list is not given");
        assert_eq!(s.name.as_deref(), Some("from file"));
        assert!(s.memory, "a switch off on the command line is not given");
        let flags = Settings {
            relays: vec!["ws://flag".into()],
            ..Default::default()
        };
        assert_eq!(
            layered(&flags, Some(&f.0), &[]).unwrap().relays,
            ["ws://flag"]
        );
    }

    #[test]
    fn without_a_file_the_flags_are_the_settings() {
        let flags = Settings {
            name: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(layered(&flags, None, &[]).unwrap(), flags);
    }

    #[test]
    fn unknown_keys_wrong_types_and_secrets_in_the_file_are_errors() {
        let f = file("prot = 1\n");
        let e = layered(&Settings::default(), Some(&f.0), &[]).unwrap_err();
        assert!(e.to_string().contains("prot"), "{e}");
        let f = file("port = \"high\"\n");
        let e = layered(&Settings::default(), Some(&f.0), &[]).unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
        let f = file("nsec = \"abc\"\n");
        let e = layered(&Settings::default(), Some(&f.0), &["nsec"]).unwrap_err();
        assert!(
            matches!(e, ConfigError::NotInFile { ref key, .. } if key == "nsec"),
            "{e}"
        );
        let e = layered(
            &Settings::default(),
            Some(Path::new("/nonexistent.toml")),
            &[],
        );
        assert!(matches!(e, Err(ConfigError::Read { .. })));
    }
}
