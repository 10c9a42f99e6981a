#![no_main]
//! `cargo fuzz run svid`: see proxy/fuzz/README.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| docmesh_proxy::fuzz::svid(data));
