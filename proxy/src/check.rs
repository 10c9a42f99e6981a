//! A configuration ready to run: `config`'s own validation plus what only the layers that build
//! runtime objects from it can check (today: the authorizer, which parses the rules and reads
//! the JWT key files). `run`, `check` and `diagnose` load through here, so `check` reports every
//! problem the proxy would refuse to start with, while `config` stays at the bottom of the
//! module layers (it validates without building anything).

use std::path::Path;

use crate::config::{Config, ConfigError, Problems};

/// Loads `path` (or the defaults), applies `DOCMESH_*` overrides and validates everything.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    Config::load_checked(path, &runtime_problems)
}

/// Like [`load`] with the file text and the environment given explicitly.
pub fn from_parts(
    text: Option<&str>,
    name: &Path,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    Config::from_parts_checked(text, name, vars, &runtime_problems)
}

/// Problems found by building the runtime objects: reported under their section.
fn runtime_problems(config: &Config, problems: &mut Problems) {
    if let Err(e) = crate::authz::Authorizer::from_config(&config.authz) {
        problems.push("authz", e.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> String {
        from_parts(Some(text), Path::new("t.toml"), Vec::new())
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn authorizer_problems_are_reported_with_the_files_own() {
        let text = "[[authz.spiffe]]\nport = 8000\nallow = [\"https://nope\"]\n\
                    [admin]\nlisten = \"not-an-address\"\n";
        let err = problems(text);
        assert!(err.contains("does not start with spiffe://"), "{err}");
        assert!(err.contains("admin.listen"), "{err}");
    }

    #[test]
    fn config_alone_does_not_build_the_authorizer() {
        let text = "[[authz.spiffe]]\nport = 8000\nallow = [\"https://nope\"]\n";
        assert!(Config::from_parts(Some(text), Path::new("t.toml"), Vec::new()).is_ok());
        assert!(problems(text).contains("authz"));
    }

    #[test]
    fn a_valid_file_loads() {
        assert_eq!(problems("[authz.jwt]\nenabled = false\n"), "");
    }
}
