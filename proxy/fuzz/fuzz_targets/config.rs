#![no_main]
//! `cargo fuzz run config`: see proxy/fuzz/README.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| docmesh_proxy::fuzz::config(data));
