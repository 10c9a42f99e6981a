//! The import graph between the top-level modules of a crate, and its cycles.
//!
//! A crate's `src/` is read as text: every `crate::<module>` path (including the names inside
//! `use crate::{a, b::c}` groups) and every `super::` chain that climbs to the crate root is an
//! edge from the top-level module whose file contains it to `<module>`. Comments are ignored;
//! binary roots (`src/bin/`, files with a `fn main`) are not part of the library's graph.
//! [`cycles`] returns the strongly connected components with more than one module, which is
//! what `tests/tests/module_cycles.rs` keeps empty.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Edges `from -> {to}` between the top-level modules of one crate.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Why a crate's module graph could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A file or directory under `src/` could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> GraphError + '_ {
    move |source| GraphError::Read {
        path: path.to_owned(),
        source,
    }
}

/// Builds the graph of the crate whose sources are in `src` (the directory holding `lib.rs`).
pub fn crate_graph(src: &Path) -> Result<Graph, GraphError> {
    let mut graph = Graph::new();
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(read_err(src))?
        .collect::<Result<_, _>>()
        .map_err(read_err(src))?;
    entries.sort_by_key(|e| e.path());
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "bin" {
                collect_rs(&path, &mut files)?;
            }
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if stem != "lib" && stem != "main" {
                files.push(path);
            }
        }
    }
    for file in files {
        let rel = file.strip_prefix(src).unwrap_or(&file);
        let module_path = module_path(rel);
        let Some(top) = module_path.first().cloned() else {
            continue;
        };
        let text = fs::read_to_string(&file).map_err(read_err(&file))?;
        if text.contains("\nfn main(") || text.starts_with("fn main(") {
            continue;
        }
        let targets = graph.entry(top.clone()).or_default();
        for target in references(&strip_comments(&text), module_path.len()) {
            if target != top {
                targets.insert(target);
            }
        }
    }
    Ok(graph)
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), GraphError> {
    for entry in fs::read_dir(dir).map_err(read_err(dir))? {
        let path = entry.map_err(read_err(dir))?.path();
        if path.is_dir() {
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `a.rs` and `a/mod.rs` are module `[a]`; `a/b.rs` is `[a, b]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Removes `//` comments (including doc comments) and `/* */` blocks, so that doc links and
/// prose never count as imports.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let line_c = rest.find("//");
        let block_c = rest.find("/*");
        match (line_c, block_c) {
            (Some(l), b) if b.is_none_or(|b| l < b) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |n| &rest[l + n..]);
            }
            (_, Some(b)) => {
                out.push_str(&rest[..b]);
                rest = rest[b..].find("*/").map_or("", |e| &rest[b + e + 2..]);
            }
            _ => {
                out.push_str(rest);
                rest = "";
            }
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Top-level modules named by `crate::` paths and root-climbing `super::` chains in `code`, a
/// file at module depth `depth` (1 for `src/a.rs`).
fn references(code: &str, depth: usize) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    let word_start = |i: usize| {
        i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':')
    };
    for (i, _) in code.match_indices("crate::") {
        if !word_start(i) {
            continue;
        }
        let after = &code[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            found.extend(group_heads(group));
        } else {
            found.insert(ident_at(after).to_owned());
        }
    }
    for (i, _) in code.match_indices("super::") {
        if !word_start(i) {
            continue;
        }
        let mut after = &code[i..];
        let mut climbs = 0;
        while let Some(rest) = after.strip_prefix("super::") {
            climbs += 1;
            after = rest;
        }
        if climbs == depth {
            if let Some(group) = after.strip_prefix('{') {
                found.extend(group_heads(group));
            } else {
                found.insert(ident_at(after).to_owned());
            }
        }
    }
    found.retain(|m| !m.is_empty() && m != "self" && m != "super");
    found
}

/// The first segment of every path in a `{a, b::c, d::{e, f}}` group (the text after `{`).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut nesting = 0usize;
    let mut expect_head = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => nesting += 1,
            '}' if nesting == 0 => break,
            '}' => nesting -= 1,
            ',' if nesting == 0 => expect_head = true,
            c if expect_head && (c.is_ascii_alphanumeric() || c == '_') => {
                heads.push(ident_at(&group[i..]).to_owned());
                expect_head = false;
            }
            _ => {}
        }
    }
    heads
}

/// The strongly connected components with more than one module (each sorted), i.e. the import
/// cycles, found with Tarjan's algorithm.
pub fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.out.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    let nodes: Vec<&str> = graph
        .iter()
        .flat_map(|(k, vs)| std::iter::once(k.as_str()).chain(vs.iter().map(String::as_str)))
        .collect();
    for v in nodes {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out.sort();
    t.out
}

/// Removes the edges `from -> to` listed in `allowed` (known cycles awaiting a fix elsewhere).
pub fn without_edges(graph: &Graph, allowed: &[(&str, &str)]) -> Graph {
    let mut g = graph.clone();
    for (from, to) in allowed {
        if let Some(tos) = g.get_mut(*from) {
            tos.remove(*to);
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_groups_and_super_chains_are_edges() {
        let code = "use crate::{a, b::c, d::{e, f}};\nfn x() { crate::g::h(); }\n\
                    use super::super::k;\nuse super::same;\n// crate::comment\n\
                    /* crate::block */ let s = my_crate::z;";
        let got: Vec<_> = references(&strip_comments(code), 2).into_iter().collect();
        assert_eq!(got, ["a", "b", "d", "g", "k"]);
    }

    #[test]
    fn a_cycle_is_one_component_and_removing_an_edge_breaks_it() {
        let mut g = Graph::new();
        g.entry("a".into()).or_default().insert("b".into());
        g.entry("b".into()).or_default().insert("c".into());
        g.entry("c".into()).or_default().insert("a".into());
        g.entry("c".into()).or_default().insert("d".into());
        assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
        assert!(cycles(&without_edges(&g, &[("c", "a")])).is_empty());
    }
}
