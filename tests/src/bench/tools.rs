//! Finding the programs the benchmark runs: nginx, haproxy, wrk (on PATH or in /usr/sbin,
//! installed with apt-get when we are root), and the release `docmesh-proxy` binary (built
//! with the cargo that runs the benchmark, so it is never stale).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a program the benchmark needs is not available.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Not installed and we may not install it.
    #[error(
        "`{bin}` was not found on PATH or in /usr/sbin and we are not root: install it with \
         `sudo apt-get install {pkg}` and run the benchmark again"
    )]
    Missing {
        /// Program name.
        bin: String,
        /// Debian package providing it.
        pkg: String,
    },
    /// apt-get ran but failed (or the program is still missing after it).
    #[error("installing `{pkg}` with apt-get failed: {detail}")]
    InstallFailed {
        /// Debian package.
        pkg: String,
        /// What went wrong.
        detail: String,
    },
    /// Building the proxy failed.
    #[error("building the release docmesh-proxy failed ({detail}); run `bash tests/scripts/build-static.sh` to see why")]
    Build {
        /// What went wrong.
        detail: String,
    },
}

/// The programs used by the benchmark.
#[derive(Debug, Clone)]
pub struct Tools {
    /// nginx binary.
    pub nginx: PathBuf,
    /// haproxy binary.
    pub haproxy: PathBuf,
    /// wrk binary (closed-loop throughput generator).
    pub wrk: PathBuf,
    /// Release docmesh-proxy binary.
    pub docmesh: PathBuf,
    /// What was installed or built on the way, for the report.
    pub notes: Vec<String>,
}

/// `bin` on PATH or in /usr/sbin, /usr/local/sbin, /sbin.
pub fn find(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(bin))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `bin` found, or installed from Debian package `pkg` when we are root.
pub fn find_or_install(
    bin: &str,
    pkg: &str,
    notes: &mut Vec<String>,
) -> Result<PathBuf, ToolError> {
    if let Some(p) = find(bin) {
        notes.push(format!("{bin}: found {}", p.display()));
        return Ok(p);
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(ToolError::Missing {
            bin: bin.into(),
            pkg: pkg.into(),
        });
    }
    eprintln!("docmesh-bench: {bin} is missing; installing Debian package {pkg} with apt-get");
    let fail = |detail: String| ToolError::InstallFailed {
        pkg: pkg.into(),
        detail,
    };
    for args in [
        vec!["update", "-qq"],
        vec!["install", "-y", "-qq", "--no-install-recommends", pkg],
    ] {
        let st = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| fail(format!("cannot run apt-get: {e}")))?;
        if !st.success() {
            return Err(fail(format!("apt-get {} exited with {st}", args.join(" "))));
        }
    }
    let p = find(bin).ok_or_else(|| fail(format!("{bin} still not found after installing")))?;
    notes.push(format!(
        "{bin}: installed package {pkg} with apt-get ({})",
        p.display()
    ));
    Ok(p)
}

/// The release `docmesh-proxy`: `explicit` if given, else the binary the images ship, built
/// as `tests/scripts/build-static.sh` builds it (`--target <arch>-unknown-linux-gnu`, glibc
/// linked statically; a no-op when up to date) into the target dir of the running benchmark.
pub fn docmesh_proxy(
    explicit: Option<PathBuf>,
    notes: &mut Vec<String>,
) -> Result<PathBuf, ToolError> {
    if let Some(p) = explicit {
        notes.push(format!("docmesh-proxy: given {}", p.display()));
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(ToolError::Build {
                detail: format!("{} is not an executable file", p.display()),
            })
        };
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let exe = std::env::current_exe().map_err(|e| ToolError::Build {
        detail: format!("cannot find our own executable: {e}"),
    })?;
    // We are <target>/release/docmesh-bench: build the proxy into the same target dir, also
    // when the benchmark binary is started directly rather than through `cargo run`.
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let target_dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    eprintln!(
        "docmesh-bench: building docmesh-proxy (release, static, {triple}) into {} ...",
        target_dir.display()
    );
    let flags_var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        triple.to_uppercase().replace('-', "_")
    );
    let st = Command::new(&cargo)
        .args(["build", "--release", "--target", &triple])
        .args(["-p", "docmesh-proxy", "--bin", "docmesh-proxy"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(flags_var, "-C target-feature=+crt-static")
        .status()
        .map_err(|e| ToolError::Build {
            detail: format!("cannot run {}: {e}", Path::new(&cargo).display()),
        })?;
    if !st.success() {
        return Err(ToolError::Build {
            detail: format!("cargo exited with {st}"),
        });
    }
    let p = target_dir
        .join(&triple)
        .join("release")
        .join("docmesh-proxy");
    if !is_executable(&p) {
        return Err(ToolError::Build {
            detail: format!("{} missing after the build", p.display()),
        });
    }
    notes.push(format!(
        "docmesh-proxy: static release build {}",
        p.display()
    ));
    Ok(p)
}

/// Finds (or installs) everything.
pub fn all(docmesh: Option<PathBuf>) -> Result<Tools, ToolError> {
    let mut notes = Vec::new();
    let nginx = find_or_install("nginx", "nginx", &mut notes)?;
    let haproxy = find_or_install("haproxy", "haproxy", &mut notes)?;
    let wrk = find_or_install("wrk", "wrk", &mut notes)?;
    let docmesh = docmesh_proxy(docmesh, &mut notes)?;
    Ok(Tools {
        nginx,
        haproxy,
        wrk,
        docmesh,
        notes,
    })
}

/// First line of `bin ARG`'s output (stdout or stderr), for the report.
pub fn version(bin: &Path, arg: &str) -> String {
    Command::new(bin)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}
