#![no_main]
//! `cargo fuzz run jwt`: see proxy/fuzz/README.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| docmesh_proxy::fuzz::jwt(data));
