//! The fuzz targets (`docmesh_proxy::fuzz`) over their seed corpus (`proxy/fuzz/corpus/`) and
//! a few thousand deterministic mutations of it: no input may panic. `cargo fuzz` explores
//! further (see `proxy/fuzz/README.md`); its findings are added to the corpus as regressions.

use std::path::Path;

use docmesh_proxy::fuzz;

/// Mutations per target (deterministic seed, so a failure reproduces).
const MUTATIONS: usize = 10_000;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// A small byte mutator: flips, inserts, deletes, duplicates and splices.
fn mutate(rng: &mut fastrand::Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.usize(1..=4) {
        let len = v.len();
        match rng.u8(0..6) {
            0 if len > 0 => {
                let i = rng.usize(0..len);
                v[i] ^= 1 << rng.u8(0..8);
            }
            1 => {
                let i = rng.usize(0..=len);
                let b = *rng
                    .choice(&[
                        0u8, b'\r', b'\n', b':', b' ', b'"', b'.', 0xff, b'%', b'/', b'[', b'=',
                    ])
                    .unwrap();
                v.insert(i, b);
            }
            2 if len > 0 => {
                let i = rng.usize(0..len);
                let n = rng.usize(1..=(len - i).min(16));
                v.drain(i..i + n);
            }
            3 if len > 0 => {
                let i = rng.usize(0..len);
                let n = rng.usize(1..=(len - i).min(64));
                let chunk = v[i..i + n].to_vec();
                let at = rng.usize(0..=v.len());
                v.splice(at..at, chunk.into_iter().cycle().take(n * rng.usize(1..=8)));
            }
            4 => {
                let other = &corpus[rng.usize(0..corpus.len())];
                let cut = rng.usize(0..=v.len());
                let from = rng.usize(0..=other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => {
                let i = rng.usize(0..=len);
                v.insert(i, rng.u8(..));
            }
        }
    }
    v
}

fn run(target: &str, f: fn(&[u8]), mutations: usize) {
    let corpus = seeds(target);
    for s in &corpus {
        f(s);
    }
    let mut rng = fastrand::Rng::with_seed(0x00d0_c0e5);
    for n in 0..mutations {
        let base = &corpus[n % corpus.len()];
        let input = mutate(&mut rng, base, &corpus);
        let ok = std::panic::catch_unwind(|| f(&input));
        assert!(
            ok.is_ok(),
            "{target}: input panicked (add it to proxy/fuzz/corpus/{target}/ as a regression): {:?}",
            String::from_utf8_lossy(&input)
        );
    }
}

#[test]
fn config_parser() {
    run("config", fuzz::config, MUTATIONS);
}

#[test]
fn spiffe_ids() {
    run("spiffe_id", fuzz::spiffe_id, MUTATIONS);
}

#[test]
fn svids_and_bundles() {
    run("svid", fuzz::svid, MUTATIONS);
}

#[test]
fn jwt_extraction_and_verification() {
    run("jwt", fuzz::jwt, MUTATIONS / 3);
}

#[test]
fn protocol_detection() {
    run("detect", fuzz::detect, MUTATIONS);
}

#[test]
fn header_handling() {
    run("headers", fuzz::headers, MUTATIONS);
}
