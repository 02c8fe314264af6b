//! Benchmark: one key changed, re-rendered inside a long-running process
//! (`render::incremental::Renderer`, as the fleet watcher keeps it).
//!
//! `rerender MODEL SERVICES ROOT SERVER PROFILE KEY ROUNDS`: loads the
//! services once (templates read and compiled), renders MODEL into ROOT,
//! then ROUNDS times sets KEY of one service (a different one each round)
//! in MODEL's defaults, writes MODEL, and times: loading MODEL, validating
//! it, applying the templates whose inputs changed, the diff and the
//! journaled sync of those files. Each round checks that the staged files
//! are byte for byte those of a full render (`render::stage`, not timed)
//! and that one file was written and one service reloaded; exits 1 if not.
//!
//! Prints `templates N`, `whole_model_templates N`, `startup MS`,
//! `samples rerender_one_key v1,v2,...` (ms; `cargo xtask bench` reads
//! them) and the same for its phases (`rerender_load`, `rerender_render`
//! for validation and templates, `rerender_sync`).

use model::Model;
use render::incremental::Renderer;
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Setup {
    model: PathBuf,
    services: PathBuf,
    root: PathBuf,
    server: String,
    profile: String,
    key: String,
    rounds: usize,
}

fn fail(message: String) -> ! {
    eprintln!("rerender: {message}");
    std::process::exit(1);
}

fn setup() -> Setup {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, services, root, server, profile, key, rounds] = args.as_slice() else {
        eprintln!("usage: rerender MODEL SERVICES ROOT SERVER PROFILE KEY ROUNDS");
        std::process::exit(2);
    };
    Setup {
        model: model.into(),
        services: services.into(),
        root: root.into(),
        server: server.clone(),
        profile: profile.clone(),
        key: key.clone(),
        rounds: rounds
            .parse()
            .unwrap_or_else(|_| fail(format!("{rounds}: not a number"))),
    }
}

fn milliseconds(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// The full render of `model`, for the byte-for-byte check.
fn full_render(
    setup: &Setup,
    model: &Model,
    definitions: &[servicedef::ServiceDefinition],
) -> Vec<render::StagedFile> {
    render::stage(&render::Request {
        model,
        definitions,
        services_dir: &setup.services,
        server: Some(&setup.server),
        profile: &setup.profile,
        only: &[],
    })
    .unwrap_or_else(|e| fail(format!("the full render failed: {e}")))
}

/// What one re-render produced, and its phases' times in ms (load,
/// validate + render, sync).
struct Outcome {
    change_set: render::sync::ChangeSet,
    staged: Vec<render::StagedFile>,
    phases: [f64; 3],
}

/// Loads the model, renders it and syncs the re-rendered files: what the
/// watcher does for one change.
fn rerender(renderer: &mut Renderer, setup: &Setup) -> Outcome {
    let started = Instant::now();
    let model = Model::load(&setup.model.to_string_lossy())
        .unwrap_or_else(|e| fail(format!("{}: {e}", setup.model.display())));
    let loaded = milliseconds(started);
    let rendered = renderer
        .render(&model)
        .unwrap_or_else(|e| fail(format!("the render failed: {e}")));
    let staged = milliseconds(started);
    let change_set = render::sync::sync(&setup.root, &rendered.rerendered_files(), false)
        .and_then(|change_set| render::sync::finish_journal(&setup.root).map(|()| change_set))
        .unwrap_or_else(|e| fail(format!("the sync failed: {e}")));
    Outcome {
        change_set,
        staged: rendered.staged,
        phases: [loaded, staged - loaded, milliseconds(started) - staged],
    }
}

fn write_model(path: &Path, model: &Model) {
    std::fs::write(path, model.to_model_xml())
        .unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
}

fn main() {
    let setup = setup();
    let started = Instant::now();
    let definitions =
        servicedef::load_dir(&setup.services).unwrap_or_else(|e| fail(e.problems.join("\n")));
    let mut renderer = Renderer::new(
        &setup.services,
        definitions.clone(),
        Some(&setup.server),
        &setup.profile,
    )
    .unwrap_or_else(|e| fail(e.to_string()));
    let original = Model::load(&setup.model.to_string_lossy())
        .unwrap_or_else(|e| fail(format!("{}: {e}", setup.model.display())));
    std::fs::create_dir_all(&setup.root).unwrap_or_else(|e| fail(e.to_string()));
    rerender(&mut renderer, &setup);
    println!(
        "templates {}",
        definitions.iter().map(|d| d.files.len()).sum::<usize>()
    );
    println!("whole_model_templates {}", renderer.whole_model_templates());
    println!("startup {:.3}", milliseconds(started));
    let services: Vec<&str> = definitions
        .iter()
        .filter(|d| d.keys.iter().any(|k| k.name == setup.key))
        .map(|d| d.name.as_str())
        .collect();
    if services.is_empty() {
        fail(format!("no service declares the key {}", setup.key));
    }
    let mut samples = Vec::new();
    let mut phases: Vec<[f64; 3]> = Vec::new();
    for round in 0..setup.rounds {
        let service = services[(round * 197 + 500) % services.len()];
        let mut model = original.clone();
        model.defaults.entry(service.to_string()).or_default().set(
            &setup.key,
            format!("in-process-{round}"),
            "bench".into(),
        );
        write_model(&setup.model, &model);
        let timed = Instant::now();
        let outcome = rerender(&mut renderer, &setup);
        samples.push(milliseconds(timed));
        phases.push(outcome.phases);
        let change_set = &outcome.change_set;
        if (change_set.written.len(), change_set.services.len()) != (1, 1) {
            fail(format!(
                "one key changed, but the change set is {change_set:?}"
            ));
        }
        if outcome.staged != full_render(&setup, &model, &definitions) {
            fail(format!(
                "round {round}: the staged files differ from a full render"
            ));
        }
        write_model(&setup.model, &original);
        rerender(&mut renderer, &setup);
    }
    let samples: Vec<String> = samples.iter().map(|s| format!("{s:.3}")).collect();
    println!("samples rerender_one_key {}", samples.join(","));
    for (index, name) in ["load", "render", "sync"].iter().enumerate() {
        let values: Vec<String> = phases.iter().map(|p| format!("{:.3}", p[index])).collect();
        println!("samples rerender_{name} {}", values.join(","));
    }
}
