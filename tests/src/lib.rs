//! Shared harness for docmesh integration tests.
pub mod netns;
