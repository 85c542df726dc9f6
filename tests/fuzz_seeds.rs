//! The fuzz targets on stable: every file of `fuzz/seeds/TARGET` goes through the same function
//! libFuzzer drives (`fuzz/src`, included here as a module), so the oracles are built and run
//! by `cargo test` and `.ci/run` without nightly or libFuzzer. Fuzzing itself is
//! `scripts/fuzz.sh` (docs/reliability.md).
//!
//! The targets that need the Lehnz client and simulator run with `--features lehnz,sim`
//! (`cargo test --all-features` does).

#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../fuzz/src/lib.rs"]
mod fuzz;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The seed files of one target, sorted.
fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("seeds").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no seeds for {target} in {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_fuzz_target_passes_its_committed_seeds() {
    for (target, run) in fuzz::TARGETS {
        let files = seeds(target);
        assert!(!files.is_empty(), "fuzz/seeds/{target} holds no seed");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(
                outcome.is_ok(),
                "fuzz target {target} failed on {}",
                file.display()
            );
            assert_eq!(
                outcome.ok(),
                Some(true),
                "fuzz target {target} did not use its seed {}: it is not a {target} input",
                file.display()
            );
        }
    }
}

/// Every binary of fuzz/Cargo.toml is a target here (with the features it needs), has seeds,
/// and hands its input to the function of the same name: a target cannot be added, renamed or
/// left without seeds unseen.
#[test]
fn the_fuzz_binaries_and_the_targets_run_here_are_the_same() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let mut binaries = BTreeSet::new();
    for block in manifest.split("[[bin]]").skip(1) {
        let field = |key: &str| {
            block
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .map(|rest| {
                    rest.trim()
                        .trim_start_matches('=')
                        .trim()
                        .trim_matches('"')
                        .to_owned()
                })
        };
        let name = field("name").expect("every [[bin]] has a name");
        let lehnz = field("required-features").is_some();
        if !lehnz || cfg!(all(feature = "lehnz", feature = "sim")) {
            let source = std::fs::read_to_string(fuzz_dir().join(field("path").unwrap())).unwrap();
            assert!(
                source.contains("tower_outbound_fuzz::") && source.contains("fuzz_target!"),
                "{name}: not a one-line entry into fuzz/src"
            );
            binaries.insert(name);
        }
    }
    let here: BTreeSet<String> = fuzz::TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(binaries, here);
    for (name, _) in fuzz::TARGETS {
        let entry =
            std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{name}.rs"))).unwrap();
        let function = entry
            .split("tower_outbound_fuzz::")
            .nth(2)
            .and_then(|rest| rest.split('(').next())
            .unwrap_or_default()
            .to_owned();
        let expected_function = if *name == "header_map" {
            "header_map_target"
        } else {
            name
        };
        assert!(
            function.ends_with(&format!("::{expected_function}")),
            "fuzz_targets/{name}.rs calls {function}"
        );
    }
}
