#![no_main]
//! `cargo fuzz run detect`: see proxy/fuzz/README.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| docmesh_proxy::fuzz::detect(data));
