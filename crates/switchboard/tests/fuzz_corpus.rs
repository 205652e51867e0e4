//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! fuzz targets' own property checks, so that CI runs them on stable,
//! without libFuzzer or nightly. The targets live in `fuzz/targets.rs`; the
//! `fuzz` crate is outside the workspace, so its file is included here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../fuzz/targets.rs"]
mod targets;

use std::panic::catch_unwind;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Runs every file of `fuzz/corpus/<name>` through the target; fails with
/// the names of the inputs that broke a property (an empty or missing
/// corpus fails too: a target nobody seeds is not tested).
fn replay(name: &str) {
    let (_, target) = targets::TARGETS
        .into_iter()
        .find(|(n, _)| *n == name)
        .expect("a known target");
    let dir = fuzz_dir().join("corpus").join(name);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} has no seeds", dir.display());
    let failed: Vec<String> = inputs
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("corpus file");
            catch_unwind(|| target(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} inputs of {name} break a property (messages above): {failed:#?}",
        failed.len(),
        inputs.len()
    );
}

#[test]
fn client_frame_corpus() {
    replay("client_frame");
}

#[test]
fn cursor_corpus() {
    replay("cursor");
}

#[test]
fn room_name_corpus() {
    replay("room_name");
}

#[test]
fn http_body_corpus() {
    replay("http_body");
}

#[test]
fn jwt_header_corpus() {
    replay("jwt_header");
}

/// Each target has its cargo-fuzz binary and its corpus, and no corpus
/// is left without a target.
#[test]
fn targets_binaries_and_corpora_match() {
    let fuzz = fuzz_dir();
    for (name, _) in targets::TARGETS {
        let binary = fuzz.join("fuzz_targets").join(format!("{name}.rs"));
        assert!(binary.is_file(), "{} is missing", binary.display());
    }
    for entry in std::fs::read_dir(fuzz.join("corpus")).expect("fuzz/corpus") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            targets::TARGETS.iter().any(|(n, _)| *n == name),
            "fuzz/corpus/{name} belongs to no target"
        );
    }
}
