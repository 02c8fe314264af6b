//! The long-running renderer (`render::incremental`) against a full render:
//! after every change of the model, the same staged files, byte for byte,
//! or the same refusal.

use crate::support::{repo, Random, TempDir};
use model::Model;
use render::incremental::Renderer;
use render::{Error, Request};
use servicedef::ServiceDefinition;
use std::path::{Path, PathBuf};

/// One render target: services, server and profile.
struct Case {
    services_dir: PathBuf,
    definitions: Vec<ServiceDefinition>,
    server: Option<String>,
    profile: String,
}

impl Case {
    fn full(&self, model: &Model) -> Result<Vec<render::StagedFile>, Error> {
        render::stage(&Request {
            model,
            definitions: &self.definitions,
            services_dir: &self.services_dir,
            server: self.server.as_deref(),
            profile: &self.profile,
            only: &[],
        })
    }

    fn renderer(&self) -> Renderer {
        Renderer::new(
            &self.services_dir,
            self.definitions.clone(),
            self.server.as_deref(),
            &self.profile,
        )
        .unwrap()
    }
}

/// Renders `model` both ways and checks they agree; the indexes re-rendered.
fn agree(case: &Case, renderer: &mut Renderer, model: &Model, what: &str) -> Option<Vec<usize>> {
    match (renderer.render(model), case.full(model)) {
        (Ok(rendered), Ok(full)) => {
            assert!(rendered.staged == full, "{what}: the staged files differ");
            Some(rendered.rerendered)
        }
        (Err(incremental), Err(full)) => {
            assert_eq!(incremental.to_string(), full.to_string(), "{what}");
            None
        }
        (incremental, full) => panic!(
            "{what}: the incremental render gave {:?}, the full one {:?}",
            incremental.map(|_| ()),
            full.map(|_| ())
        ),
    }
}

/// Sets (or, one time in five, removes) a random key of a random service in
/// a random layer, to a value taken from the model or a few others (some
/// of them invalid for their key, so refusals are compared too).
fn mutate(
    model: &mut Model,
    definitions: &[ServiceDefinition],
    values: &[String],
    random: &mut Random,
) -> String {
    let definition = random.pick(definitions);
    let key = if definition.keys.is_empty() {
        "unknown".to_string()
    } else {
        random.pick(&definition.keys).name.replace('*', "x")
    };
    let value = random.pick(values).clone();
    let mut layers: Vec<&mut model::Layer> = vec![&mut model.defaults];
    layers.extend(model.profiles.values_mut());
    layers.extend(model.servers.values_mut());
    let index = random.below(layers.len() as u64) as usize;
    let keys = layers[index].entry(definition.name.clone()).or_default();
    if random.below(5) == 0 {
        keys.keys.remove(&key);
        keys.locations.remove(&key);
        format!("layer {index}: {}.{key} removed", definition.name)
    } else {
        keys.set(&key, value.clone(), "test".into());
        format!("layer {index}: {}.{key} = {value:?}", definition.name)
    }
}

fn values_of(model: &Model) -> Vec<String> {
    let mut values: Vec<String> = ["changed", "8080", "yes", "no", "10.0.0.7", ""]
        .iter()
        .map(|v| v.to_string())
        .collect();
    let layers = std::iter::once(&model.defaults)
        .chain(model.profiles.values())
        .chain(model.servers.values());
    for layer in layers {
        for keys in layer.values() {
            values.extend(keys.keys.values().cloned());
        }
    }
    values
}

/// The golden cases' inputs (test_data/render/*/args): services, model,
/// server and profile.
fn golden_cases() -> Vec<(String, Case, Model)> {
    let repo = repo();
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(repo.join("test_data/render")).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(args) = std::fs::read_to_string(dir.join("args")) else {
            continue;
        };
        let args: Vec<&str> = args.split_whitespace().collect();
        let value = |name: &str| {
            args.iter()
                .position(|a| *a == name)
                .map(|i| args[i + 1].replace("$REPO", &repo.to_string_lossy()))
        };
        let services_dir = if dir.join("services").is_dir() {
            dir.join("services")
        } else {
            repo.join("services")
        };
        let model_path = value("--model").unwrap_or_else(|| {
            let own = dir.join("model.xml");
            let path = if own.is_file() {
                own
            } else {
                repo.join("models/default.xml")
            };
            path.to_string_lossy().into_owned()
        });
        let Ok(model) = Model::load(&model_path) else {
            continue;
        };
        let case = Case {
            definitions: servicedef::load_dir(&services_dir).unwrap(),
            services_dir,
            server: value("--server"),
            profile: value("--profile").unwrap(),
        };
        cases.push((
            dir.file_name().unwrap().to_string_lossy().into_owned(),
            case,
            model,
        ));
    }
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    cases
}

/// Guards the skip rule's soundness on the shipped templates: over random
/// edits of every golden case's model, the long-running renderer stages
/// exactly what a full render does (or refuses with the same problems).
#[test]
fn incremental_render_equals_full_render_over_golden_cases() {
    let cases = golden_cases();
    assert!(cases.len() >= 5, "too few golden cases: {}", cases.len());
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for (name, case, mut model) in cases {
        let mut renderer = case.renderer();
        agree(
            &case,
            &mut renderer,
            &model,
            &format!("{name}: first render"),
        );
        let values = values_of(&model);
        for step in 0..40 {
            let what = mutate(&mut model, &case.definitions, &values, &mut random);
            agree(
                &case,
                &mut renderer,
                &model,
                &format!("{name} step {step}: {what}"),
            );
        }
    }
}

const TEMPLATE_OWN: &str = r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text"/>
  <xsl:param name="server"/><xsl:param name="mode"/><xsl:param name="service"/><xsl:param name="self"/>
  <xsl:template match="/"># <xsl:value-of select="$service"/> on <xsl:value-of select="$server"/> (<xsl:value-of select="$mode"/>)
port = <xsl:value-of select="$self/key[@name = 'port']"/>
value = <xsl:value-of select="$self/key[@name = 'value']"/>
</xsl:template>
</xsl:stylesheet>
"#;

/// Reads every service's value: only a whole-model template can.
const TEMPLATE_WHOLE: &str = r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text"/>
  <xsl:template match="/"><xsl:for-each select="/model/service/key[@name = 'value']"><xsl:value-of select="."/><xsl:text>&#10;</xsl:text></xsl:for-each></xsl:template>
</xsl:stylesheet>
"#;

fn write_service(dir: &Path, name: &str, template: &str) {
    let service = dir.join(name);
    std::fs::create_dir_all(&service).unwrap();
    std::fs::write(
        service.join("service.xml"),
        format!(
            "<service name=\"{name}\">\n  <exec path=\"/bin/true\"/>\n  <file target=\"/etc/bench/{name}.conf\" template=\"t.xsl\" on-change=\"reload\"/>\n  <key name=\"port\" type=\"port\">a port</key>\n  <key name=\"value\" type=\"string\">a value</key>\n</service>\n"
        ),
    )
    .unwrap();
    std::fs::write(service.join("t.xsl"), template).unwrap();
}

/// Guards the figure's claim on 1,000 services: one key changed re-renders
/// that service's file and the whole-model template only, and the result
/// is still byte for byte the full render's.
#[test]
fn one_key_changed_among_1000_services_rerenders_only_its_readers() {
    const SERVICES: usize = 1000;
    let temp = TempDir::new("incremental");
    let services_dir = temp.path().join("services");
    let mut model = Model {
        source_name: "generated".into(),
        ..Model::default()
    };
    for index in 0..SERVICES {
        let name = format!("svc{index:04}");
        write_service(&services_dir, &name, TEMPLATE_OWN);
        let keys = model.defaults.entry(name).or_default();
        keys.set("port", (10000 + index).to_string(), "generated".into());
        keys.set("value", format!("value-{index}"), "generated".into());
    }
    write_service(&services_dir, "summary", TEMPLATE_WHOLE);
    let summary = model.defaults.entry("summary".into()).or_default();
    summary.set("port", "9999".into(), "generated".into());
    summary.set("value", "all".into(), "generated".into());
    model
        .profiles
        .insert("production".into(), Default::default());
    model.servers.insert("bench01".into(), Default::default());
    let case = Case {
        definitions: servicedef::load_dir(&services_dir).unwrap(),
        services_dir,
        server: Some("bench01".into()),
        profile: "production".into(),
    };
    let mut renderer = case.renderer();
    assert_eq!(renderer.whole_model_templates(), 1);
    let first = agree(&case, &mut renderer, &model, "first render").unwrap();
    assert_eq!(first.len(), SERVICES + 1);
    let unchanged = agree(&case, &mut renderer, &model, "same model").unwrap();
    assert!(
        unchanged.is_empty(),
        "an unchanged model re-rendered {unchanged:?}"
    );
    let mut random = Random(42);
    for step in 0..30 {
        let index = random.below(SERVICES as u64) as usize;
        let name = format!("svc{index:04}");
        let key = *random.pick(&["port", "value"]);
        let value = if key == "port" {
            (20000 + step).to_string()
        } else {
            format!("changed-{step}")
        };
        let layer = if step % 2 == 0 {
            &mut model.defaults
        } else {
            model.servers.get_mut("bench01").unwrap()
        };
        layer
            .entry(name.clone())
            .or_default()
            .set(key, value, "test".into());
        let rerendered = agree(
            &case,
            &mut renderer,
            &model,
            &format!("step {step}: {name}.{key}"),
        )
        .unwrap();
        let targets: Vec<String> = {
            let rendered = renderer.render(&model).unwrap();
            assert!(rendered.rerendered.is_empty());
            rerendered
                .iter()
                .map(|i| rendered.staged[*i].target.clone())
                .collect()
        };
        assert_eq!(
            targets,
            [
                "/etc/bench/summary.conf".to_string(),
                format!("/etc/bench/{name}.conf")
            ],
            "step {step}"
        );
    }
    // After a failed apply the watcher forgets: every template runs again.
    renderer.forget();
    let again = agree(&case, &mut renderer, &model, "after forget").unwrap();
    assert_eq!(again.len(), SERVICES + 1);
}
