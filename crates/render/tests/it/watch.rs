//! `nodows watch` with a real inotify watch and a real child command.

use crate::support::{nodows, TempDir};
use std::path::Path;
use std::time::{Duration, Instant};

fn runs(count_file: &Path) -> usize {
    std::fs::read_to_string(count_file)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

/// Waits (at most 20 s, a hard timeout, not a performance check) until the
/// command has run `n` times.
fn wait_for_runs(count_file: &Path, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    while runs(count_file) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    runs(count_file)
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_burst_of_model_saves_runs_the_command_once() {
    let dir = TempDir::new("watch");
    let model = dir.path().join("model.xml");
    let count = dir.path().join("count");
    std::fs::write(&model, "<model/>\n").unwrap();
    let command = format!("/bin/sh -c 'echo run >> {}'", count.display());
    let _child = Child(
        nodows()
            .args([
                "watch",
                "--model",
                model.to_str().unwrap(),
                "--command",
                &command,
                "--debounce",
                "300ms",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Give the watcher time to be installed: save until the first run shows.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut version = 0;
    while runs(&count) == 0 && Instant::now() < deadline {
        version += 1;
        std::fs::write(&model, format!("<model><!-- {version} --></model>\n")).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(wait_for_runs(&count, 1), 1, "the command did not run once");
    std::thread::sleep(Duration::from_millis(800));
    let baseline = runs(&count);

    // A burst: write in place, then replace by rename, as editors do.
    std::fs::write(&model, "<model><!-- burst 1 --></model>\n").unwrap();
    let temp = dir.path().join(".model.xml.swp");
    std::fs::write(&temp, "<model><!-- burst 2 --></model>\n").unwrap();
    std::fs::rename(&temp, &model).unwrap();
    assert_eq!(wait_for_runs(&count, baseline + 1), baseline + 1);
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(
        runs(&count),
        baseline + 1,
        "the burst ran the command more than once"
    );

    // Saving the same bytes again is not a change.
    std::fs::write(&model, "<model><!-- burst 2 --></model>\n").unwrap();
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(
        runs(&count),
        baseline + 1,
        "an identical save ran the command"
    );

    // Other files in the directory are ignored.
    std::fs::write(dir.path().join("unrelated.xml"), "x").unwrap();
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(
        runs(&count),
        baseline + 1,
        "an unrelated file ran the command"
    );
}

#[test]
fn the_periodic_poll_catches_changes_the_watch_cannot_see() {
    // Why: some sources cannot be watched (network file systems, writes
    // through a hard link in another directory, which inotify reports only
    // there); `--poll` must still notice them.
    let dir = TempDir::new("poll");
    let other = TempDir::new("poll-link");
    let model = dir.path().join("model.xml");
    let link = other.path().join("link.xml");
    let count = dir.path().join("count");
    std::fs::write(&model, "<model/>\n").unwrap();
    std::fs::hard_link(&model, &link).unwrap();
    let command = format!("/bin/sh -c 'echo run >> {}'", count.display());
    let _child = Child(
        nodows()
            .args([
                "watch",
                "--model",
                model.to_str().unwrap(),
                "--command",
                &command,
                "--poll",
                "1s",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    // Write in place through the other name: same inode, other directory.
    std::fs::write(&link, "<model><!-- changed elsewhere --></model>\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(&model).unwrap(),
        "<model><!-- changed elsewhere --></model>\n"
    );
    assert_eq!(
        wait_for_runs(&count, 1),
        1,
        "the poll did not run the command"
    );
}
