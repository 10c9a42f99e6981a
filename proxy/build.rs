//! Link settings for the `docmesh-proxy` binary.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DOCMESH_PACK_RELOCS");
    if pack_relocations() {
        // Pack the position-independent executable's relative relocations (DT_RELR): the
        // ~20 000 relocation entries of a Rust binary shrink from ~470 KB to a few KB, bytes
        // the loader read at every start and that stayed resident in every sidecar.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// DT_RELR needs glibc 2.36 or newer where the binary runs (the linker adds that version
/// need), so it is used for a native glibc build on such a system, or when
/// `DOCMESH_PACK_RELOCS=1` asks for it; `DOCMESH_PACK_RELOCS=0` turns it off. The static
/// (`+crt-static`, static-pie) build the images ship relocates itself with the same glibc
/// code, so it packs them too.
fn pack_relocations() -> bool {
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.ends_with("-linux-gnu") {
        return false;
    }
    match std::env::var("DOCMESH_PACK_RELOCS")
        .ok()
        .as_deref()
        .map(str::trim)
    {
        Some("0") => return false,
        Some("1") => return true,
        None | Some("") => {}
        Some(other) => println!(
            "cargo:warning=DOCMESH_PACK_RELOCS={other:?} is neither 0 nor 1; \
             deciding from the build machine's glibc instead"
        ),
    }
    let native = std::env::var("HOST").is_ok_and(|host| host == target);
    native && host_glibc().is_some_and(|v| v >= (2, 36))
}

/// The build machine's glibc version, from `getconf GNU_LIBC_VERSION` ("glibc 2.36").
fn host_glibc() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.trim().strip_prefix("glibc ")?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some((major, minor))
}
