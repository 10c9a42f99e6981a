//! Shared harness for docmesh integration tests.
