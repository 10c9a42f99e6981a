//! `docmesh-bench`: docmesh against nginx, HAProxy and no proxy at all, side by side in one
//! run on 127.0.0.1 without root (issue 9; docs/benchmark.md explains the method).
//!
//! Modules: [`tools`] finds the programs, [`pki`] makes the SVIDs, [`configs`] writes the
//! pairs' configuration, [`backend`] is the 1 KiB HTTP server, [`setups`] starts the pairs,
//! [`load`] holds the load generators, [`scale`] the connection-scale test, [`procs`] reads
//! /proc, [`run`] runs the interleaved rounds, [`report`], [`targets`] and [`chart`] present
//! the figures.

pub mod backend;
pub mod chart;
pub mod configs;
pub mod load;
pub mod pki;
pub mod procs;
pub mod report;
pub mod run;
pub mod scale;
pub mod setups;
pub mod targets;
pub mod tools;
