//! Link settings for the `docmesh-proxy` binary.

fn main() {
    // Pack the position-independent executable's relative relocations (DT_RELR): the
    // ~20 000 relocation entries of a Rust binary shrink from ~470 KB to a few KB, bytes the
    // loader read at every start and that stayed resident in every sidecar. The binary then
    // needs glibc 2.36 or newer at run time (Debian 12, Ubuntu 22.10, RHEL 10); for older
    // systems build with `DOCMESH_PACK_RELOCS=0`. Static musl builds have no dynamic
    // relocations to pack.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DOCMESH_PACK_RELOCS");
    let target = std::env::var("TARGET").unwrap_or_default();
    let wanted = std::env::var("DOCMESH_PACK_RELOCS").map_or(true, |v| v.trim() != "0");
    if wanted && target.ends_with("-linux-gnu") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
