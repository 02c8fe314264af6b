//! Fuzz targets, bounded, run by `cargo test` (and so by `cargo xtask
//! test`): the control-request parser, the change-set parser, the kernel
//! uevent parser, the service-definition parser and the model parser get
//! mutations of the seed corpus in `test_data/fuzz/` and must return,
//! never panic (PID 1 parses the first three; initd and the renderer parse
//! the last two).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../test_data/fuzz")
        .join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths
        .iter()
        .map(|path| std::fs::read(path).unwrap())
        .collect();
    assert!(!seeds.is_empty(), "{}: no seeds", dir.display());
    seeds
}

/// One edit of a seed: (kind, where, byte).
type Edit = (u8, usize, u8);

fn mutate(seeds: &[Vec<u8>], seed: usize, edits: &[Edit]) -> Vec<u8> {
    let mut bytes = seeds[seed % seeds.len()].clone();
    for &(kind, at, byte) in edits {
        let at = if bytes.is_empty() {
            0
        } else {
            at % (bytes.len() + 1)
        };
        match kind % 5 {
            0 if at < bytes.len() => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            2 if at < bytes.len() => {
                bytes.remove(at);
            }
            // Splice: the tail of another seed from here on.
            3 => {
                let other = &seeds[usize::from(byte) % seeds.len()];
                let from = at.min(other.len());
                bytes.truncate(at);
                bytes.extend_from_slice(&other[from..]);
            }
            // Repeat a slice: deep nesting, long lines.
            _ => {
                let end = (at + usize::from(byte)).min(bytes.len());
                let slice = bytes[at.min(end)..end].to_vec();
                for _ in 0..8 {
                    bytes.splice(at..at, slice.iter().copied());
                }
            }
        }
    }
    bytes
}

fn cases() -> u32 {
    std::env::var("NODOWS_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(5000)
}

/// Runs `parse` on `cases()` mutations of the target's seeds (and on every
/// seed as it is).
fn fuzz(target: &str, parse: impl Fn(&[u8])) {
    let seeds = corpus(target);
    for seed in &seeds {
        parse(seed);
    }
    let mut config = Config::with_cases(cases());
    config.failure_persistence = Some(Box::new(FileFailurePersistence::WithSource(
        "proptest-regressions",
    )));
    let mut runner = TestRunner::new(config);
    let strategy = (
        0..seeds.len(),
        proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..8),
    );
    runner
        .run(&strategy, |(seed, edits)| {
            parse(&mutate(&seeds, seed, &edits));
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{target}: {failure}"));
}

#[test]
fn fuzz_control_requests() {
    fuzz("control-request", |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let words: Vec<&str> = text.split_whitespace().collect();
        if let Ok(request) = initd::protocol::Request::parse(&words) {
            // Whatever parses names only what the words said.
            let described = format!("{request:?}");
            assert!(!described.is_empty());
        }
    });
}

#[test]
fn fuzz_change_sets() {
    fuzz("change-set", |bytes| {
        let _ = initd::protocol::parse_change_set(&String::from_utf8_lossy(bytes));
    });
}

#[test]
fn fuzz_uevents() {
    fuzz("uevent", |bytes| {
        if let Ok(uevent) = initd::uevent::parse(bytes) {
            if let Some(device) = uevent.device_event() {
                // A device event names one device, never a pattern, and
                // reads back as the event it prints.
                let event = device.event();
                assert!(servicedef::is_device_name(&device.device.name));
                assert_eq!(servicedef::Event::parse(&event.to_string()), Ok(event));
            }
        }
    });
}

#[test]
fn fuzz_service_definitions() {
    fuzz("service-definition", |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let _ = servicedef::parse_str(Path::new("/fuzz/web/service.xml"), &text);
    });
}

#[test]
fn fuzz_models() {
    fuzz("model", |bytes| {
        let text = String::from_utf8_lossy(bytes);
        if let Ok(model) = model::Model::from_xml(&text, "fuzz.xml") {
            let _ = model.effective(None, "dev");
        }
    });
}
