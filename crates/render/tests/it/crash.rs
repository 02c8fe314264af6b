//! A crash never loses a reload: the renderer is killed at random points
//! of an apply (SIGKILL after a random delay, or the fault hook after a
//! random number of renames) and the caller, acting like initd (`--json
//! --keep-journal`, the output of a killed render ignored, the journal
//! removed once a change set was taken), must see every changed service
//! exactly once.

use crate::support::{nodows, tree, Random, TempDir};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

const SERVICES: usize = 100;

/// SERVICES services with one reloading file each, and a model per value.
fn fixture(work: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let services = work.join("services");
    for index in 0..SERVICES {
        let name = format!("svc{index:03}");
        let dir = services.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("service.xml"),
            format!("<service name=\"{name}\">\n  <exec path=\"/bin/true\"/>\n  <file target=\"/etc/crash/{}/{name}.conf\" template=\"t.xsl\" on-change=\"reload\"/>\n  <key name=\"v\" type=\"string\">the file's text</key>\n</service>\n", index % 7),
        )
        .unwrap();
        std::fs::write(
            dir.join("t.xsl"),
            r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text"/>
  <xsl:param name="self"/>
  <xsl:template match="/"><xsl:value-of select="$self/key"/></xsl:template>
</xsl:stylesheet>
"#,
        )
        .unwrap();
    }
    let model = |value: &str| {
        let mut text = String::from("<model>\n  <defaults>\n");
        for index in 0..SERVICES {
            text.push_str(&format!(
                "    <service name=\"svc{index:03}\"><key name=\"v\">{value} {index}</key></service>\n"
            ));
        }
        text.push_str("  </defaults>\n  <profile name=\"dev\"/>\n</model>\n");
        let path = work.join(format!("{value}.xml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    (services, model("old"), model("new"))
}

fn command(model: &Path, services: &Path, root: &Path) -> std::process::Command {
    let mut command = nodows();
    command
        .args([
            "render",
            "--profile",
            "dev",
            "--json",
            "--keep-journal",
            "--model",
        ])
        .arg(model)
        .arg("--services")
        .arg(services)
        .arg("--root")
        .arg(root);
    command
}

/// What initd does with one render: the change set of a successful run
/// (then the journal is removed), nothing of a failed or killed one.
fn consume(output: &std::process::Output, root: &Path) -> Option<Vec<String>> {
    if !output.status.success() {
        return None;
    }
    let change_set: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let _ = std::fs::remove_file(root.join("var/lib/nodows/render-journal.json"));
    Some(
        change_set["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                assert_eq!(s["action"], "reload");
                s["name"].as_str().unwrap().to_string()
            })
            .collect(),
    )
}

#[test]
fn a_render_killed_at_random_points_reports_every_changed_service_exactly_once() {
    let work = TempDir::new("crash");
    let (services, old, new) = fixture(work.path());
    let clean = TempDir::new("crash-clean");
    let output = command(&new, &services, clean.path()).output().unwrap();
    assert!(consume(&output, clean.path()).is_some());
    let expected = tree(clean.path());
    assert_eq!(expected.len(), SERVICES);

    // How long an apply of every file takes, for the SIGKILL delays.
    let probe = TempDir::new("crash-probe");
    let output = command(&old, &services, probe.path()).output().unwrap();
    assert!(consume(&output, probe.path()).is_some());
    let started = Instant::now();
    let output = command(&new, &services, probe.path()).output().unwrap();
    let full = started.elapsed();
    assert!(consume(&output, probe.path()).is_some());

    let seed = std::env::var("NODOWS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let mut random = Random(seed);
    let mut kills = 0;
    // Kills that left a journal: inside the apply, not before or after it.
    let mut inside_apply = 0;
    let mut trial = 0;
    while kills < 24 {
        trial += 1;
        assert!(trial < 100, "too few kills landed (seed {seed})");
        let root = TempDir::new("crash-root");
        let output = command(&old, &services, root.path()).output().unwrap();
        assert!(consume(&output, root.path()).is_some());
        let mut reported: BTreeMap<String, usize> = BTreeMap::new();

        // The killed render: even trials SIGKILL after a random delay, odd
        // ones abort after a random number of renames.
        let mut killed = command(&new, &services, root.path());
        let how = if trial % 2 == 0 {
            let delay = Duration::from_micros(random.below(full.as_micros() as u64 * 11 / 10 + 1));
            let mut child = killed
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(delay);
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            if let Some(names) = consume(&output, root.path()) {
                for name in names {
                    *reported.entry(name).or_default() += 1;
                }
            } else {
                assert_eq!(output.status.signal(), Some(libc::SIGKILL));
                kills += 1;
            }
            format!("SIGKILL after {delay:?}")
        } else {
            let renames = 1 + random.below(SERVICES as u64 - 1);
            let output = killed
                .env("NODOWS_FAULT_AFTER_RENAMES", renames.to_string())
                .output()
                .unwrap();
            assert!(consume(&output, root.path()).is_none());
            kills += 1;
            format!("abort after {renames} renames")
        };

        if root
            .path()
            .join("var/lib/nodows/render-journal.json")
            .exists()
        {
            inside_apply += 1;
        }
        // The next render completes and reports what the killed one began.
        let output = command(&new, &services, root.path()).output().unwrap();
        let names = consume(&output, root.path()).unwrap_or_else(|| {
            panic!(
                "trial {trial} ({how}, seed {seed}): the next render failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        for name in names {
            *reported.entry(name).or_default() += 1;
        }
        let wrong: Vec<(&String, &usize)> = reported.iter().filter(|(_, n)| **n != 1).collect();
        assert!(
            wrong.is_empty() && reported.len() == SERVICES,
            "trial {trial} ({how}, seed {seed}): {} services reported, reported more than once: {wrong:?}",
            reported.len()
        );
        let rendered = tree(root.path());
        let differing: Vec<&String> = rendered
            .keys()
            .chain(expected.keys())
            .filter(|path| rendered.get(*path) != expected.get(*path))
            .collect();
        assert!(
            differing.is_empty(),
            "trial {trial} ({how}, seed {seed}): the root is not the clean render (temporaries or the journal left?): {differing:?}"
        );
    }
    eprintln!("{kills} kills in {trial} trials, {inside_apply} inside the apply (seed {seed})");
    assert!(
        inside_apply >= 12,
        "only {inside_apply} kills inside the apply (seed {seed})"
    );
}

/// Guards `nodows journal` (what initd runs for `initctl render --applied`):
/// it finishes a killed apply without rendering and reports its change set
/// once; without a journal it reports no changes.
#[test]
fn nodows_journal_finishes_a_killed_apply_and_reports_it_once() {
    let work = TempDir::new("journal");
    let (services, old, new) = fixture(work.path());
    let root = TempDir::new("journal-root");
    let output = command(&old, &services, root.path()).output().unwrap();
    assert!(consume(&output, root.path()).is_some());
    let output = command(&new, &services, root.path())
        .env("NODOWS_FAULT_AFTER_RENAMES", "30")
        .output()
        .unwrap();
    assert!(consume(&output, root.path()).is_none());
    let journal = || {
        nodows()
            .args(["journal", "--json", "--root"])
            .arg(root.path())
            .output()
            .unwrap()
    };
    let names = consume(&journal(), root.path()).unwrap();
    assert_eq!(names.len(), SERVICES, "{names:?}");
    let after = tree(root.path());
    assert!(
        after.keys().all(|path| !path.contains(".nodows-tmp")),
        "{after:?}"
    );
    assert_eq!(after["etc/crash/3/svc010.conf"], b"new 10");
    assert_eq!(consume(&journal(), root.path()), Some(Vec::new()));
}
