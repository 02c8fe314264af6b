//! Results of the suites: figures with median and spread, BENCHMARKS.md
//! and results.json.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// Samples of one figure.
#[derive(Clone, Debug)]
pub struct Stat {
    pub samples: Vec<f64>,
}

impl Stat {
    pub fn new(samples: Vec<f64>) -> Option<Stat> {
        if samples.is_empty() {
            None
        } else {
            Some(Stat { samples })
        }
    }

    pub fn one(value: f64) -> Stat {
        Stat {
            samples: vec![value],
        }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut sorted = self.samples.clone();
        sorted.sort_by(f64::total_cmp);
        sorted
    }

    pub fn median(&self) -> f64 {
        let sorted = self.sorted();
        let middle = sorted.len() / 2;
        if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        }
    }

    /// The nearest-rank percentile `p` (0 < p <= 100): the smallest sample
    /// with at least p % of the samples at or below it.
    pub fn percentile(&self, p: f64) -> f64 {
        let sorted = self.sorted();
        let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    pub fn min(&self) -> f64 {
        self.sorted()[0]
    }

    pub fn max(&self) -> f64 {
        self.sorted()[self.samples.len() - 1]
    }

    fn to_json(&self) -> Value {
        json!({
            "median": self.median(),
            "min": self.min(),
            "max": self.max(),
            "samples": self.samples,
        })
    }
}

/// Unit of a figure; values are stored in this unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Milliseconds,
    KiB,
    MiB,
    MiBPerSecond,
    Count,
    Percent,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Seconds => "s",
            Unit::Milliseconds => "ms",
            Unit::KiB => "KiB",
            Unit::MiB => "MiB",
            Unit::MiBPerSecond => "MiB/s",
            Unit::Count => "",
            Unit::Percent => "%",
        }
    }

    fn format(self, value: f64) -> String {
        let number = match self {
            Unit::Count => format!("{value:.0}"),
            Unit::Seconds | Unit::MiB | Unit::Percent => format!("{value:.2}"),
            Unit::MiBPerSecond => format!("{value:.0}"),
            Unit::Milliseconds => {
                if value < 10.0 {
                    format!("{value:.2}")
                } else {
                    format!("{value:.1}")
                }
            }
            Unit::KiB => format!("{value:.0}"),
        };
        if self.name().is_empty() {
            number
        } else {
            format!("{number} {}", self.name())
        }
    }
}

/// One line of a suite's table: a nodows figure beside a peer's.
#[derive(Clone, Debug)]
pub struct Row {
    pub figure: String,
    pub unit: Unit,
    pub nodows: Option<Stat>,
    pub peer: String,
    pub peer_stat: Option<Stat>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        let nodows = self.nodows.as_ref()?.median();
        let peer = self.peer_stat.as_ref()?.median();
        if peer == 0.0 {
            None
        } else {
            Some(nodows / peer)
        }
    }
}

fn cell(unit: Unit, stat: &Option<Stat>) -> String {
    match stat {
        None => "n/a".to_owned(),
        Some(stat) if stat.samples.len() == 1 => unit.format(stat.median()),
        Some(stat) => format!(
            "{} ({}–{}, n={})",
            unit.format(stat.median()),
            unit.format(stat.min()),
            unit.format(stat.max()),
            stat.samples.len()
        ),
    }
}

#[derive(Clone, Debug)]
pub struct Suite {
    pub name: String,
    pub title: String,
    /// When the suite ran (UTC).
    pub date: String,
    /// None when the suite ran; otherwise why it could not.
    pub not_available: Option<String>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub seconds: f64,
}

impl Suite {
    pub fn new(name: &str, title: &str) -> Suite {
        Suite {
            name: name.to_owned(),
            title: title.to_owned(),
            date: String::new(),
            not_available: None,
            rows: Vec::new(),
            notes: Vec::new(),
            seconds: 0.0,
        }
    }

    pub fn row(
        &mut self,
        figure: impl Into<String>,
        unit: Unit,
        nodows: Option<Stat>,
        peer: impl Into<String>,
        peer_stat: Option<Stat>,
    ) {
        self.rows.push(Row {
            figure: figure.into(),
            unit,
            nodows,
            peer: peer.into(),
            peer_stat,
        });
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }
}

const EMBEDDED_START: &str = "<!-- results.json (read back by `cargo xtask bench --only`)\n";

/// Appends results.json to the Markdown as an HTML comment, so that a fresh
/// checkout (no target/bench/results.json) keeps the suites `--only` skips.
pub fn with_embedded_json(mut markdown: String, json: &Value) -> anyhow::Result<String> {
    // `-->` would end the comment; `\u003e` is the same JSON string.
    let text = serde_json::to_string(json)?.replace("-->", "--\\u003e");
    markdown.push('\n');
    markdown.push_str(EMBEDDED_START);
    markdown.push_str(&text);
    markdown.push_str("\n-->\n");
    Ok(markdown)
}

/// The results.json embedded by `with_embedded_json`, if any.
pub fn embedded_json(markdown: &str) -> Option<&str> {
    let start = markdown.find(EMBEDDED_START)? + EMBEDDED_START.len();
    let length = markdown[start..].find("\n-->")?;
    Some(&markdown[start..start + length])
}

/// A suite read back from results.json (to keep it when `--only` runs another).
pub fn suite_from_json(value: &Value) -> Option<Suite> {
    let text = |key: &str| value[key].as_str().map(str::to_owned);
    let stat = |value: &Value| -> Option<Stat> {
        let samples = value["samples"].as_array()?;
        Stat::new(samples.iter().filter_map(Value::as_f64).collect())
    };
    let mut suite = Suite::new(&text("name")?, &text("title")?);
    suite.date = text("date").unwrap_or_default();
    suite.seconds = value["seconds"].as_f64().unwrap_or_default();
    suite.not_available = text("not_available");
    for note in value["notes"].as_array()? {
        suite.notes.push(note.as_str()?.to_owned());
    }
    for row in value["rows"].as_array()? {
        let unit = match row["unit"].as_str()? {
            "s" => Unit::Seconds,
            "ms" => Unit::Milliseconds,
            "KiB" => Unit::KiB,
            "MiB" => Unit::MiB,
            "%" => Unit::Percent,
            "MiB/s" => Unit::MiBPerSecond,
            _ => Unit::Count,
        };
        suite.row(
            row["figure"].as_str()?,
            unit,
            stat(&row["nodows"]),
            row["peer"].as_str()?,
            stat(&row["peer_value"]),
        );
    }
    Some(suite)
}

pub struct Machine {
    pub date: String,
    pub cores: usize,
    pub accel: String,
    pub kernel: String,
    pub quick: bool,
    /// The suite named by `--only`, if any.
    pub only: Option<String>,
}

pub fn markdown(machine: &Machine, suites: &[Suite]) -> String {
    let mut out = String::new();
    out.push_str("# Benchmarks\n\n");
    out.push_str(
        "Written by `cargo xtask bench` (do not edit by hand; rerun it).\n\
         Figures are medians over the runs of one benchmark run, with the min–max spread and the number of runs; the machine is shared and noisy, so read ratios, not absolute times.\n\
         A ratio is nodows divided by the peer: below 1 means nodows is faster or smaller.\n\
         A suite that could not run says why instead of showing a number.\n\n",
    );
    let _ = writeln!(
        out,
        "- Written: {} (each suite says when it was measured)",
        machine.date
    );
    let _ = writeln!(out, "- Cores: {}", machine.cores);
    let _ = writeln!(out, "- QEMU accelerator: {}", machine.accel);
    let _ = writeln!(out, "- Host kernel: {}", machine.kernel);
    let _ = writeln!(
        out,
        "- Last run: `cargo xtask bench{}{}`",
        if machine.quick { " --quick" } else { "" },
        machine
            .only
            .as_ref()
            .map(|only| format!(" --only {only}"))
            .unwrap_or_default()
    );
    for suite in suites {
        let _ = writeln!(out, "\n## {} (`--only {}`)\n", suite.title, suite.name);
        if let Some(reason) = &suite.not_available {
            let _ = writeln!(out, "Not available: {reason}.");
        }
        if !suite.rows.is_empty() {
            out.push_str("| figure | nodows | peer | peer figure | ratio |\n");
            out.push_str("|---|---|---|---|---|\n");
            for row in &suite.rows {
                let ratio = row
                    .ratio()
                    .map(|ratio| format!("{ratio:.2}x"))
                    .unwrap_or_else(|| "n/a".to_owned());
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    row.figure,
                    cell(row.unit, &row.nodows),
                    row.peer,
                    cell(row.unit, &row.peer_stat),
                    ratio
                );
            }
        }
        if !suite.notes.is_empty() {
            out.push('\n');
            for note in &suite.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        if suite.seconds > 0.0 {
            let _ = writeln!(
                out,
                "\nMeasured {}; the suite took {:.0} s.",
                suite.date, suite.seconds
            );
        }
    }
    out
}

pub fn json(machine: &Machine, suites: &[Suite]) -> Value {
    let suites: Vec<Value> = suites
        .iter()
        .map(|suite| {
            let rows: Vec<Value> = suite
                .rows
                .iter()
                .map(|row| {
                    json!({
                        "figure": row.figure,
                        "unit": row.unit.name(),
                        "nodows": row.nodows.as_ref().map(Stat::to_json),
                        "peer": row.peer,
                        "peer_value": row.peer_stat.as_ref().map(Stat::to_json),
                        "ratio": row.ratio(),
                    })
                })
                .collect();
            json!({
                "name": suite.name,
                "title": suite.title,
                "available": suite.not_available.is_none(),
                "not_available": suite.not_available,
                "rows": rows,
                "notes": suite.notes,
                "seconds": suite.seconds,
                "date": suite.date,
            })
        })
        .collect();
    json!({
        "date": machine.date,
        "cores": machine.cores,
        "accel": machine.accel,
        "host_kernel": machine.kernel,
        "quick": machine.quick,
        "suites": suites,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_sample_counts() {
        assert_eq!(Stat::new(vec![3.0, 1.0, 2.0]).unwrap().median(), 2.0);
        assert_eq!(Stat::new(vec![4.0, 1.0, 2.0, 3.0]).unwrap().median(), 2.5);
        assert!(Stat::new(Vec::new()).is_none());
    }

    #[test]
    fn nearest_rank_percentile() {
        let twenty = Stat::new((1..=20).rev().map(f64::from).collect()).unwrap();
        assert_eq!(twenty.percentile(95.0), 19.0);
        assert_eq!(twenty.percentile(100.0), 20.0);
        assert_eq!(twenty.percentile(50.0), 10.0);
        let three = Stat::new(vec![5.0, 1.0, 3.0]).unwrap();
        assert_eq!(three.percentile(95.0), 5.0);
        assert_eq!(three.percentile(1.0), 1.0);
    }

    #[test]
    fn table_shows_ratio_spread_and_not_available() {
        let mut ran = Suite::new("boot", "Boot");
        ran.row(
            "boot to ready",
            Unit::Seconds,
            Stat::new(vec![2.0, 3.0, 4.0]),
            "systemd",
            Some(Stat::one(10.0)),
        );
        let mut missing = Suite::new("image", "Image build");
        missing.not_available = Some("the image builder is missing".to_owned());
        let machine = Machine {
            date: "2026-01-01".to_owned(),
            cores: 2,
            accel: "tcg".to_owned(),
            kernel: "6.1".to_owned(),
            quick: false,
            only: None,
        };
        let text = markdown(&machine, &[ran.clone(), missing]);
        assert!(
            text.contains(
                "| boot to ready | 3.00 s (2.00 s–4.00 s, n=3) | systemd | 10.00 s | 0.30x |"
            ),
            "{text}"
        );
        assert!(text.contains("Not available: the image builder is missing."));
        let value = json(&machine, &[ran.clone()]);
        assert_eq!(value["cores"], 2);
        let back = suite_from_json(&value["suites"][0]).unwrap();
        assert_eq!(back.rows.len(), 1);
        assert_eq!(
            back.rows[0].nodows.as_ref().unwrap().samples,
            [2.0, 3.0, 4.0]
        );
        assert_eq!(back.rows[0].unit, Unit::Seconds);
    }

    /// Guards `--only` in a fresh checkout: the other suites come back from
    /// the copy of results.json inside BENCHMARKS.md.
    #[test]
    fn results_embedded_in_the_markdown_read_back() {
        let mut suite = Suite::new("boot", "Boot");
        suite.note("run with `--only boot --> here`");
        let value = serde_json::json!({ "suites": [{ "notes": suite.notes }] });
        let text = with_embedded_json("# Benchmarks\n".to_owned(), &value).unwrap();
        let embedded = embedded_json(&text).unwrap();
        assert!(!embedded.contains("-->"));
        let back: Value = serde_json::from_str(embedded).unwrap();
        assert_eq!(back, value);
        assert!(embedded_json("# Benchmarks\n").is_none());
    }
}
