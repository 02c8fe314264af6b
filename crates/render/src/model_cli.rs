//! `nodows model ...`: moving a model between XML, SQLite and PostgreSQL,
//! the PostgreSQL schema, history and revert.
//!
//! ```text
//! nodows model import --model DEST --from SOURCE [--note TEXT]
//! nodows model export --model SOURCE --to DEST
//! nodows model migrate --model postgres://...
//! nodows model history --model postgres://... [--limit N]
//! nodows model revert --model postgres://... REV [--note TEXT]
//! ```
//!
//! SOURCE and DEST are an XML file, `sqlite:PATH` or `postgres://...`; the
//! destination is replaced whole (files atomically, PostgreSQL in one
//! transaction, which is one revision).

use crate::{Arguments, Failure, Usage};
use model::postgres as pg;
use model::Model;

pub const USAGE: &str = "  nodows model import --model DEST --from SOURCE [--note TEXT]
  nodows model export --model SOURCE --to DEST
  nodows model migrate --model postgres://...
  nodows model history --model postgres://... [--limit N]
  nodows model revert --model postgres://... REV";

fn model_error(error: model::Error) -> Failure {
    Failure::Render(render::Error::from(error))
}

fn require_postgres(spec: &str) -> Result<(), Failure> {
    if pg::is_postgres(spec) {
        Ok(())
    } else {
        Err(Failure::Usage(Usage(format!(
            "--model {spec}: this command needs a PostgreSQL model (postgres://...)"
        ))))
    }
}

fn copy(from: &str, to: &str, note: &str) -> Result<(), Failure> {
    let model = Model::load(from).map_err(model_error)?;
    if pg::is_postgres(to) {
        let mut client = pg::connect(to).map_err(model_error)?;
        let name = pg::display_name(to);
        match pg::write(&mut client, &name, &model, note).map_err(model_error)? {
            Some(revision) => println!("{} -> {name}: revision {revision}", display(from)),
            None => println!("{} -> {name}: no changes", display(from)),
        }
    } else {
        model.save(to, note).map_err(model_error)?;
        println!("{} -> {}", display(from), display(to));
    }
    Ok(())
}

fn display(spec: &str) -> String {
    if pg::is_postgres(spec) {
        pg::display_name(spec)
    } else {
        spec.to_string()
    }
}

pub fn run(args: &[String]) -> Result<(), Failure> {
    let Some(command) = args.first() else {
        return Err(Failure::Usage(Usage("nodows model needs a command".into())));
    };
    let rest = &args[1..];
    match command.as_str() {
        "import" => {
            let arguments = Arguments::parse(rest, &["--model", "--from", "--note"], &[])?;
            let from = arguments.required("--from")?;
            let note = arguments
                .one("--note")?
                .unwrap_or_else(|| format!("import {}", display(&from)));
            copy(&from, &arguments.required("--model")?, &note)
        }
        "export" => {
            let arguments = Arguments::parse(rest, &["--model", "--to"], &[])?;
            copy(
                &arguments.required("--model")?,
                &arguments.required("--to")?,
                "",
            )
        }
        "migrate" => {
            let arguments = Arguments::parse(rest, &["--model"], &[])?;
            let spec = arguments.required("--model")?;
            require_postgres(&spec)?;
            let mut client = pg::connect(&spec).map_err(model_error)?;
            let applied =
                pg::migrate(&mut client, &pg::display_name(&spec)).map_err(model_error)?;
            if applied.is_empty() {
                println!("{}: the schema is current", pg::display_name(&spec));
            }
            for version in applied {
                println!("{}: applied migration {version}", pg::display_name(&spec));
            }
            Ok(())
        }
        "history" => {
            let arguments = Arguments::parse(rest, &["--model", "--limit"], &[])?;
            let spec = arguments.required("--model")?;
            require_postgres(&spec)?;
            let limit: i64 = match arguments.one("--limit")? {
                None => 20,
                Some(text) => text.parse().map_err(|_| {
                    Usage(format!(
                        "--limit {text}: not a number; give a count like 20"
                    ))
                })?,
            };
            let name = pg::display_name(&spec);
            let mut client = pg::connect(&spec).map_err(model_error)?;
            let revisions = pg::history(&mut client, &name, limit).map_err(model_error)?;
            let shown = revisions.len().min(limit.max(0) as usize);
            for index in 0..shown {
                let revision = &revisions[index];
                let note = if revision.note.is_empty() {
                    String::new()
                } else {
                    format!("  {}", revision.note)
                };
                println!(
                    "revision {}  {}  by {}  affects {}{note}",
                    revision.id,
                    revision.at,
                    revision.author,
                    revision.affected.join(",")
                );
                let empty = Model::default();
                let before = revisions.get(index + 1).map_or(&empty, |r| &r.model);
                for line in pg::diff(before, &revision.model) {
                    println!("  {line}");
                }
            }
            Ok(())
        }
        "revert" => {
            let (positional, options): (Vec<String>, Vec<String>) = split_positional(rest);
            let arguments = Arguments::parse(&options, &["--model"], &[])?;
            let spec = arguments.required("--model")?;
            require_postgres(&spec)?;
            let [revision_text] = positional.as_slice() else {
                return Err(Failure::Usage(Usage(
                    "nodows model revert needs one revision number (see nodows model history)"
                        .into(),
                )));
            };
            let revision: i64 = revision_text.parse().map_err(|_| {
                Usage(format!(
                    "{revision_text}: not a revision number (see nodows model history)"
                ))
            })?;
            let name = pg::display_name(&spec);
            let mut client = pg::connect(&spec).map_err(model_error)?;
            match pg::revert(&mut client, &name, revision).map_err(model_error)? {
                Some(new) => println!("{name}: revision {new} equals revision {revision}"),
                None => println!("{name}: the model already equals revision {revision}"),
            }
            Ok(())
        }
        other => Err(Failure::Usage(Usage(format!(
            "unknown model command `{other}`"
        )))),
    }
}

/// Arguments not starting with `--` and not the value of a `--name`.
fn split_positional(args: &[String]) -> (Vec<String>, Vec<String>) {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg.starts_with("--") {
            options.push(arg.clone());
            if !arg.contains('=') {
                if let Some(value) = iter.next() {
                    options.push(value.clone());
                }
            }
        } else {
            positional.push(arg.clone());
        }
    }
    (positional, options)
}
