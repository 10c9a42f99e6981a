//! A fake machine for docmesh-init's flow tests: canned `*-save` output, recorded commands.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;

use docmesh_init::host::{classify, Host, HostError};

/// A recorded command: binary, args, stdin.
pub type Call = (String, Vec<String>, Option<String>);

/// The fake host.
pub struct FakeHost {
    /// Binaries that exist.
    pub installed: Vec<String>,
    /// stdout per binary for `*-save`; missing means an empty nat table.
    pub saves: HashMap<String, String>,
    /// stderr per binary that fails.
    pub failures: HashMap<String, String>,
    /// Capabilities.
    pub net_admin: bool,
    /// CAP_NET_RAW.
    pub net_raw: bool,
    /// IPv6 present.
    pub ipv6: bool,
    /// What ran.
    pub calls: RefCell<Vec<Call>>,
}

pub const EMPTY_NAT: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

impl FakeHost {
    /// nft and legacy installed, empty tables, root, IPv6.
    pub fn new() -> FakeHost {
        let mut installed = Vec::new();
        for fam in ["iptables", "ip6tables"] {
            for v in ["-nft", "-legacy", ""] {
                for t in ["save", "restore"] {
                    installed.push(format!("{fam}{v}-{t}"));
                }
            }
        }
        installed.push("iptables".into());
        FakeHost {
            installed,
            saves: HashMap::new(),
            failures: HashMap::new(),
            net_admin: true,
            net_raw: true,
            ipv6: true,
            calls: RefCell::new(Vec::new()),
        }
    }

    /// The calls of one binary.
    pub fn calls_of(&self, binary: &str) -> Vec<Call> {
        self.calls
            .borrow()
            .iter()
            .filter(|c| c.0 == binary)
            .cloned()
            .collect()
    }
}

impl Host for FakeHost {
    fn find(&self, binary: &str) -> Option<PathBuf> {
        self.installed
            .iter()
            .any(|b| b == binary)
            .then(|| PathBuf::from(format!("/usr/sbin/{binary}")))
    }

    fn run(&self, binary: &str, args: &[&str], stdin: Option<&str>) -> Result<String, HostError> {
        self.calls.borrow_mut().push((
            binary.to_string(),
            args.iter().map(|s| s.to_string()).collect(),
            stdin.map(str::to_string),
        ));
        if self.find(binary).is_none() {
            return Err(HostError::Missing {
                binary: binary.to_string(),
            });
        }
        if let Some(stderr) = self.failures.get(binary) {
            return Err(classify(binary, args, "exit status: 1", stderr));
        }
        if binary == "iptables" {
            return Ok("iptables v1.8.9 (nf_tables)\n".into());
        }
        if binary.ends_with("-save") {
            return Ok(self
                .saves
                .get(binary)
                .cloned()
                .unwrap_or_else(|| EMPTY_NAT.to_string()));
        }
        Ok(String::new())
    }

    fn has_net_admin(&self) -> bool {
        self.net_admin
    }

    fn has_net_raw(&self) -> bool {
        self.net_raw
    }

    fn ipv6_enabled(&self) -> bool {
        self.ipv6
    }
}

/// Runs the CLI on the fake host; returns stdout or the error message.
pub fn run(host: &FakeHost, args: &[&str]) -> Result<String, String> {
    let mut out = Vec::new();
    let mut argv = vec!["docmesh-init"];
    argv.extend_from_slice(args);
    docmesh_init::cli::run(argv, host, &mut out).map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).unwrap())
}
