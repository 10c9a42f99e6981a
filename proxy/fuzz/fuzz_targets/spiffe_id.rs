#![no_main]
//! `cargo fuzz run spiffe_id`: see proxy/fuzz/README.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| docmesh_proxy::fuzz::spiffe_id(data));
