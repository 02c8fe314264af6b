//! Suite `flash`: the dev image with every output format, each output's
//! size against the raw disk's allocated size, and `cargo xtask flash`
//! against `dd bs=4M conv=fsync` and `bmaptool copy` onto a file and onto a
//! loop device, in the same run.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use xshell::cmd;

use super::report::{Stat, Suite, Unit};
use super::Context;
use crate::image::bmap::Bmap;
use crate::image::outputs::Format;

const MIB: f64 = (1 << 20) as f64;

/// One flash: wall seconds and bytes written; for nodows also the
/// seconds to written and fsynced, before its read-back check.
struct Run {
    seconds: f64,
    bytes: u64,
    write_seconds: f64,
}

pub fn run(context: &Context, suite: &mut Suite) -> anyhow::Result<()> {
    let sh = &context.sh;
    let dir = context.work.join("flash");
    let out = dir.join("out");
    std::fs::create_dir_all(&out)?;
    let formats = Format::ALL.map(Format::name).join(",");
    let out_text = out.to_string_lossy().into_owned();
    eprintln!("    the dev image with every format");
    cmd!(
        sh,
        "cargo xtask image --image debian --profile dev --format {formats} --out {out_text}"
    )
    .quiet()
    .ignore_stdout()
    .run()
    .context("cargo xtask image --format (every format)")?;
    let image_dir = out.join("debian-dev");
    let raw = image_dir.join("debian-dev.raw");
    let raw_allocated = (std::fs::metadata(&raw)?.blocks() * 512) as f64 / MIB;
    for format in Format::ALL {
        for file in format.files("debian-dev") {
            let metadata = std::fs::metadata(image_dir.join(&file))?;
            let (size, allocated) = (metadata.len() as f64, (metadata.blocks() * 512) as f64);
            let (unit, scale) = if size < MIB {
                (Unit::KiB, 1024.0)
            } else {
                (Unit::MiB, MIB)
            };
            suite.row(
                format!("{file} ({format}): file size"),
                unit,
                Some(Stat::one(size / scale)),
                "the raw disk's allocated size",
                Some(Stat::one(raw_allocated * MIB / scale)),
            );
            if allocated < size * 0.9 {
                suite.row(
                    format!("{file} ({format}): allocated (sparse)"),
                    Unit::MiB,
                    Some(Stat::one(allocated / MIB)),
                    "the raw disk's allocated size",
                    Some(Stat::one(raw_allocated)),
                );
            }
        }
    }

    let bmap_path = image_dir.join("debian-dev.bmap");
    let bmap = Bmap::read(&bmap_path)?;
    let runs = if context.quick { 1 } else { 3 };
    let target_file = dir.join("target.raw");
    let (raw_text, target_text, bmap_text) = (
        raw.to_string_lossy().into_owned(),
        target_file.to_string_lossy().into_owned(),
        bmap_path.to_string_lossy().into_owned(),
    );
    let image_size = bmap.image_size;

    // Onto a file: each run starts from no file.
    let fresh_file = || {
        let _ = std::fs::remove_file(&target_file);
    };
    let mut file_runs: [Vec<Run>; 3] = Default::default();
    for _ in 0..runs {
        fresh_file();
        let started = Instant::now();
        let stats = crate::flash::to_file(&raw, &bmap, &target_file, true)?;
        file_runs[0].push(Run {
            seconds: started.elapsed().as_secs_f64(),
            bytes: stats.bytes_written,
            write_seconds: stats.write_time.as_secs_f64(),
        });
        fresh_file();
        file_runs[1].push(timed(image_size, || {
            cmd!(
                sh,
                "dd if={raw_text} of={target_text} bs=4M conv=fsync status=none"
            )
            .run()?;
            Ok(())
        })?);
        fresh_file();
        file_runs[2].push(timed(bmap.mapped_bytes(), || {
            cmd!(
                sh,
                "bmaptool --quiet copy --bmap {bmap_text} {raw_text} {target_text}"
            )
            .run()?;
            Ok(())
        })?);
    }
    fresh_file();
    rows(suite, "file", image_size, &file_runs);

    // Onto a loop device over a fresh backing file, where losetup works.
    let backing = dir.join("loop-backing");
    let mut loop_runs: [Vec<Run>; 3] = Default::default();
    let mut loop_available = true;
    'runs: for _ in 0..runs {
        for (peer, runs) in loop_runs.iter_mut().enumerate() {
            let _ = std::fs::remove_file(&backing);
            std::fs::File::create(&backing)?.set_len(image_size)?;
            let backing_text = backing.to_string_lossy().into_owned();
            let Ok(device) = cmd!(sh, "losetup --find --show {backing_text}")
                .quiet()
                .read()
            else {
                loop_available = false;
                break 'runs;
            };
            let result = match peer {
                0 => {
                    let started = Instant::now();
                    crate::flash::check_device(Path::new(&device), false, image_size)
                        .and_then(|target| crate::flash::open_target(&target))
                        .and_then(|file| {
                            crate::flash::write_and_verify(
                                &raw,
                                &bmap,
                                &file,
                                Path::new(&device),
                                false,
                            )
                        })
                        .map(|stats| Run {
                            seconds: started.elapsed().as_secs_f64(),
                            bytes: stats.bytes_written,
                            write_seconds: stats.write_time.as_secs_f64(),
                        })
                }
                1 => timed(image_size, || {
                    cmd!(
                        sh,
                        "dd if={raw_text} of={device} bs=4M conv=fsync status=none"
                    )
                    .run()?;
                    Ok(())
                }),
                _ => timed(bmap.mapped_bytes(), || {
                    cmd!(
                        sh,
                        "bmaptool --quiet copy --bmap {bmap_text} {raw_text} {device}"
                    )
                    .run()?;
                    Ok(())
                }),
            };
            let _ = cmd!(sh, "losetup --detach {device}").quiet().run();
            runs.push(result?);
        }
    }
    let _ = std::fs::remove_file(&backing);
    if loop_available {
        rows(suite, "loop device", image_size, &loop_runs);
    } else {
        suite.note("Not available: the loop device rows (`losetup --find` failed: not root, or no loop devices).");
    }
    suite.note(format!(
        "The dev image, built here with every format: {:.0} MiB apparent, {raw_allocated:.0} MiB allocated, {:.0} MiB in its bmap's mapped ranges. Wall time of each tool from no target file (or a fresh loop device over a new sparse file) to data on disk: nodows (`cargo xtask flash`'s code, in process) writes the bmap's ranges in 4 MiB writes, fsyncs, drops the target's cache and reads every range back to check its sha256; bmaptool copy writes the same ranges and checks the image's ranges as it reads them; dd writes the whole disk, zeros included. MiB/s is the image's size (1024 MiB) over the wall time, so the three compare as time to a flashed medium; median of {runs} runs each, alternating.",
        image_size as f64 / MIB,
        bmap.mapped_bytes() as f64 / MIB,
    ));
    Ok(())
}

/// Times `body`, which writes `bytes`.
fn timed(bytes: u64, body: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Run> {
    let started = Instant::now();
    body()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Run {
        seconds,
        bytes,
        write_seconds: seconds,
    })
}

/// The rows of one kind of target: nodows against dd and against bmaptool.
fn rows(suite: &mut Suite, target: &str, image_size: u64, runs: &[Vec<Run>; 3]) {
    if runs[0].is_empty() {
        return;
    }
    let of = |index: usize, figure: &dyn Fn(&Run) -> f64| {
        Stat::new(runs[index].iter().map(figure).collect())
    };
    let speed = |run: &Run| image_size as f64 / MIB / run.seconds;
    let seconds = |run: &Run| run.seconds;
    let written = |run: &Run| run.bytes as f64 / MIB;
    for (index, peer) in [
        (1, "dd bs=4M conv=fsync"),
        (2, "bmaptool copy (bmap-tools 3.6)"),
    ] {
        suite.row(
            format!("flash onto a {target}: MiB/s (the image's size over the wall time)"),
            Unit::MiBPerSecond,
            of(0, &speed),
            peer,
            of(index, &speed),
        );
        suite.row(
            format!("flash onto a {target}: wall time"),
            Unit::Seconds,
            of(0, &seconds),
            peer,
            of(index, &seconds),
        );
        suite.row(
            format!("flash onto a {target}: MiB written"),
            Unit::MiB,
            of(0, &written),
            peer,
            of(index, &written),
        );
    }
    suite.row(
        format!("flash onto a {target}: written and fsynced, before nodows' read-back check"),
        Unit::Seconds,
        of(0, &|run: &Run| run.write_seconds),
        "bmaptool copy (bmap-tools 3.6), no read-back",
        of(2, &seconds),
    );
}
