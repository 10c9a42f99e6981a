//! Shared harness for docmesh integration tests.
#![forbid(unsafe_code)]
pub mod bench;
pub mod modgraph;
pub mod netns;
