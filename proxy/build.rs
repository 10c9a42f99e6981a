//! Link settings for the `docmesh-proxy` binary.

fn main() {
    // Pack the position-independent executable's relative relocations (DT_RELR): the
    // ~20 000 relocation entries of a Rust binary shrink from ~470 KB to a few KB, and
    // those bytes were read by the loader at every start and stayed resident in every
    // sidecar. glibc supports it from 2.36; the linker leaves it out where the C library
    // lacks it, and static musl builds have no dynamic relocations to pack.
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-linux-gnu") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
