//! Shared harness for docmesh integration tests.
pub mod bench;
pub mod netns;
