//! No import cycles among the top-level modules of any docmesh crate (issue 21): each crate's
//! modules form layers that only point down, so each can be read and changed alone.
//! The graph is built from the sources by `docmesh_tests::modgraph`.

use std::path::{Path, PathBuf};

use docmesh_tests::modgraph::{crate_graph, cycles, without_edges, Graph};

fn src_of(krate: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src")
}

/// Fails with every remaining cycle and the edges inside it, after removing `allowed`.
fn assert_acyclic(krate: &str, allowed: &[(&str, &str)]) {
    let graph = crate_graph(&src_of(krate)).expect("crate sources are readable");
    for (from, to) in allowed {
        assert!(
            graph.get(*from).is_some_and(|t| t.contains(*to)),
            "{krate}: the allowed edge {from} -> {to} no longer exists; remove it from the \
             allow-list in tests/tests/module_cycles.rs"
        );
    }
    let remaining = cycles(&without_edges(&graph, allowed));
    assert!(
        remaining.is_empty(),
        "{krate}: import cycles among top-level modules: {}",
        describe(&graph, &remaining)
    );
}

fn describe(graph: &Graph, components: &[Vec<String>]) -> String {
    components
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|to| c.contains(to))
                        .map(move |to| format!("{from} -> {to}"))
                })
                .collect();
            format!("{{{}}} via [{}]", c.join(", "), edges.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn certs_modules_have_no_cycles() {
    assert_acyclic("certs", &[]);
}

#[test]
fn init_modules_have_no_cycles() {
    assert_acyclic("init", &[]);
}

#[test]
fn proxy_modules_have_no_cycles() {
    assert_acyclic("proxy", &[]);
}

#[test]
fn tests_harness_modules_have_no_cycles() {
    assert_acyclic("tests", &[]);
}

#[test]
fn the_check_fails_on_a_cycle_in_a_real_source_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a")).expect("mkdir");
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\npub mod c;\n").expect("write");
    std::fs::write(src.join("a/mod.rs"), "mod inner;\n").expect("write");
    std::fs::write(src.join("a/inner.rs"), "use super::super::b::B;\n").expect("write");
    std::fs::write(src.join("b.rs"), "use crate::{c::C, std_like};\n").expect("write");
    std::fs::write(
        src.join("c.rs"),
        "/// [`crate::b`] in a doc comment is no edge\npub fn f() { crate::a::g() }\n",
    )
    .expect("write");
    let graph = crate_graph(&src).expect("fixture is readable");
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
    assert!(cycles(&without_edges(&graph, &[("c", "a")])).is_empty());
    let check = std::panic::catch_unwind(|| {
        let remaining = cycles(&graph);
        assert!(remaining.is_empty(), "{}", describe(&graph, &remaining));
    });
    let message = check.expect_err("a cycle must fail the check");
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("a -> b") && text.contains("c -> a"), "{text}");
}
