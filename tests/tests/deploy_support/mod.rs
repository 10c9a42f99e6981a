//! Shared by the deploy_* tests: `docmesh-proxy check` on an example config, with the files
//! the containers mount at run time standing in.

use std::path::Path;

use docmesh_proxy::config::Config;

/// The services of the OnlyOffice mesh profile (examples/onlyoffice/), one config each.
pub const MESH: [&str; 8] = [
    "ingress",
    "documentserver",
    "converter",
    "integrator",
    "postgresql",
    "rabbitmq",
    "redis",
    "storage",
];

/// `docmesh-proxy check FILE` (the same loader and validation, with an empty environment
/// otherwise). `check` also loads the authorization key files, which the containers mount at
/// run time (the JWT secret at `/etc/docmesh/jwt/secret`): a temporary file stands in for it
/// through the documented override `DOCMESH_AUTHZ__JWT__SECRET_FILE`, as an operator would
/// run `check` on a workstation.
pub fn check(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut env = Vec::new();
    let jwt = table
        .get("authz")
        .and_then(|a| a.get("jwt"))
        .and_then(|j| j.as_table());
    if let Some(file) = jwt
        .and_then(|j| j.get("secret_file"))
        .and_then(|f| f.as_str())
    {
        // Only the documented mount point is stood in for; any other path must exist.
        if file == "/etc/docmesh/jwt/secret" {
            let stand_in = dir.path().join("secret");
            std::fs::write(&stand_in, "stand-in-secret").map_err(|e| e.to_string())?;
            env.push((
                "DOCMESH_AUTHZ__JWT__SECRET_FILE".to_owned(),
                stand_in.to_string_lossy().into_owned(),
            ));
        }
    }
    docmesh_proxy::check::from_parts(Some(&text), path, env).map_err(|e| e.to_string())
}
