//! The XML form of the model.
//!
//! ```xml
//! <model>
//!   <defaults><service name="web"><key name="port">80</key></service></defaults>
//!   <profile name="dev"><service name="web"><key name="title">dev</key></service></profile>
//!   <server id="web01"><service name="web"><key name="port">8080</key></service></server>
//! </model>
//! ```
//!
//! A DOCTYPE is refused outright, so neither internal nor external entities
//! (XXE) can be declared; only the five predefined entities and character
//! references are expanded.

use crate::{Error, Layer, Model};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// Which layer the parser is in.
#[derive(Clone)]
enum LayerRef {
    Defaults,
    Profile(String),
    Server(String),
}

struct Lines {
    newlines: Vec<usize>,
}

impl Lines {
    fn new(text: &str) -> Lines {
        Lines {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&n| n < offset) + 1
    }
}

pub(crate) fn parse(text: &str, source_name: &str) -> Result<Model, Error> {
    let lines = Lines::new(text);
    let at = |offset: usize| format!("{source_name}:{}", lines.line(offset));
    let mut reader = Reader::from_str(text);
    reader.config_mut().expand_empty_elements = true;
    reader.config_mut().trim_text(false);

    let mut model = Model {
        source_name: source_name.to_string(),
        ..Model::default()
    };
    let mut problems: Vec<String> = Vec::new();
    // Element names from the root down.
    let mut stack: Vec<String> = Vec::new();
    let mut layer: Option<LayerRef> = None;
    let mut service: Option<String> = None;
    // The key being read: (name, text so far, line).
    let mut key: Option<(String, String, String)> = None;
    let mut seen_root = false;
    let mut seen_defaults = false;

    loop {
        let offset = reader.buffer_position() as usize;
        let event = reader.read_event().map_err(|e| {
            let pos = reader.error_position() as usize;
            Error::Invalid(vec![format!(
                "{}: the model is not well-formed XML: {e}",
                at(pos)
            )])
        })?;
        match event {
            Event::DocType(_) => {
                return Err(Error::Invalid(vec![format!(
                    "{}: a DOCTYPE is not allowed in the model (DTDs and external entities are refused); remove it",
                    at(offset)
                )]));
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Start(start) => {
                let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                let attrs = attributes(&start, &at(offset))?;
                let here = at(offset);
                match (stack.len(), stack.last().map(String::as_str)) {
                    (0, _) => {
                        if seen_root {
                            return Err(Error::Invalid(vec![format!(
                                "{here}: a second root element <{name}>; the model has one <model>"
                            )]));
                        }
                        seen_root = true;
                        if name != "model" {
                            return Err(Error::Invalid(vec![format!(
                                "{here}: the root element is <{name}>; expected <model>"
                            )]));
                        }
                    }
                    (1, _) => {
                        layer = match name.as_str() {
                            "defaults" => {
                                if seen_defaults {
                                    problems.push(format!(
                                        "{here}: a second <defaults>; merge them into one"
                                    ));
                                }
                                seen_defaults = true;
                                Some(LayerRef::Defaults)
                            }
                            "profile" => match required(&attrs, "name", &name, &here) {
                                Ok(profile) => {
                                    if model
                                        .profiles
                                        .insert(profile.clone(), Layer::new())
                                        .is_some()
                                    {
                                        problems.push(format!("{here}: profile `{profile}` is defined twice; merge them into one"));
                                    }
                                    Some(LayerRef::Profile(profile))
                                }
                                Err(problem) => {
                                    problems.push(problem);
                                    None
                                }
                            },
                            "server" => match required(&attrs, "id", &name, &here) {
                                Ok(server) => {
                                    if model.servers.insert(server.clone(), Layer::new()).is_some()
                                    {
                                        problems.push(format!("{here}: server `{server}` is defined twice; merge them into one"));
                                    }
                                    Some(LayerRef::Server(server))
                                }
                                Err(problem) => {
                                    problems.push(problem);
                                    None
                                }
                            },
                            _ => {
                                problems.push(format!(
                                    "{here}: unknown element <{name}> in <model>; expected <defaults>, <profile name=\"...\"> or <server id=\"...\">"
                                ));
                                None
                            }
                        };
                    }
                    (2, _) => {
                        service = None;
                        if name != "service" {
                            problems.push(format!(
                                "{here}: unknown element <{name}> in <{}>; expected <service name=\"...\">",
                                stack[1]
                            ));
                        } else {
                            match required(&attrs, "name", &name, &here) {
                                Ok(service_name) => {
                                    model
                                        .service_mentions
                                        .push((service_name.clone(), here.clone()));
                                    if let Some(layer) = &layer {
                                        layer_mut(&mut model, layer)
                                            .entry(service_name.clone())
                                            .or_default();
                                    }
                                    service = Some(service_name);
                                }
                                Err(problem) => problems.push(problem),
                            }
                        }
                    }
                    (3, _) => {
                        key = None;
                        if name != "key" {
                            problems.push(format!(
                                "{here}: unknown element <{name}> in <service>; expected <key name=\"...\">"
                            ));
                        } else {
                            match required(&attrs, "name", &name, &here) {
                                Ok(key_name) => key = Some((key_name, String::new(), here.clone())),
                                Err(problem) => problems.push(problem),
                            }
                        }
                    }
                    _ => {
                        problems.push(format!(
                            "{here}: element <{name}> inside <key>; a key holds text only"
                        ));
                    }
                }
                stack.push(name);
            }
            Event::End(_) => {
                let depth = stack.len();
                stack.pop();
                if depth == 4 {
                    if let (Some((key_name, value, here)), Some(layer_ref), Some(service_name)) =
                        (key.take(), &layer, &service)
                    {
                        let service_keys = layer_mut(&mut model, layer_ref)
                            .entry(service_name.clone())
                            .or_default();
                        if !service_keys.set(&key_name, value, here.clone()) {
                            problems.push(format!(
                                "{here}: key `{key_name}` of service `{service_name}` is set twice in the same layer; keep one"
                            ));
                        }
                    }
                }
            }
            Event::Text(text) => {
                let value = text.unescape().map_err(|e| {
                    Error::Invalid(vec![format!(
                        "{}: bad character or entity reference in the model: {e} (only &lt; &gt; &amp; &quot; &apos; and &#N; are allowed)",
                        at(offset)
                    )])
                })?;
                push_text(&mut key, &stack, &value, &at(offset), &mut problems);
            }
            Event::CData(cdata) => {
                let value = String::from_utf8_lossy(&cdata).into_owned();
                push_text(&mut key, &stack, &value, &at(offset), &mut problems);
            }
            // expand_empty_elements turns <a/> into Start + End.
            Event::Empty(_) => {}
            Event::Eof => break,
        }
    }
    if !seen_root {
        problems.push(format!(
            "{source_name}:1: the model is empty; expected <model>"
        ));
    }
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(Error::Invalid(problems))
    }
}

fn push_text(
    key: &mut Option<(String, String, String)>,
    stack: &[String],
    value: &str,
    here: &str,
    problems: &mut Vec<String>,
) {
    if stack.len() == 4 {
        if let Some((_, text, _)) = key {
            text.push_str(value);
        }
    } else if !value.trim().is_empty() {
        let parent = stack.last().map(String::as_str).unwrap_or("the document");
        problems.push(format!(
            "{here}: text `{}` in <{parent}>; values belong in <key name=\"...\">",
            value.trim()
        ));
    }
}

fn layer_mut<'m>(model: &'m mut Model, layer: &LayerRef) -> &'m mut Layer {
    match layer {
        LayerRef::Defaults => &mut model.defaults,
        LayerRef::Profile(name) => model.profiles.entry(name.clone()).or_default(),
        LayerRef::Server(id) => model.servers.entry(id.clone()).or_default(),
    }
}

fn attributes(start: &BytesStart, here: &str) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| Error::Invalid(vec![format!("{here}: bad attribute: {e}")]))?;
        let value = attr
            .unescape_value()
            .map_err(|e| Error::Invalid(vec![format!("{here}: bad attribute value: {e}")]))?;
        out.push((
            String::from_utf8_lossy(attr.key.as_ref()).into_owned(),
            value.into_owned(),
        ));
    }
    Ok(out)
}

fn required(
    attrs: &[(String, String)],
    attr: &str,
    element: &str,
    here: &str,
) -> Result<String, String> {
    match attrs.iter().find(|(name, _)| name == attr) {
        Some((_, value)) if !value.trim().is_empty() => Ok(value.clone()),
        _ => Err(format!(
            "{here}: <{element}> needs a non-empty `{attr}` attribute"
        )),
    }
}

/// The XML form of `model`, which [`parse`] reads back to the same model.
pub(crate) fn to_text(model: &Model) -> String {
    use crate::escape;
    use std::fmt::Write as _;
    let mut out = String::from("<model>\n");
    let write_layer = |out: &mut String, layer: &Layer, indent: &str| {
        for (service, keys) in layer {
            if keys.keys.is_empty() {
                let _ = writeln!(out, "{indent}<service name=\"{}\"/>", escape(service));
                continue;
            }
            let _ = writeln!(out, "{indent}<service name=\"{}\">", escape(service));
            for (key, value) in &keys.keys {
                let _ = writeln!(
                    out,
                    "{indent}  <key name=\"{}\">{}</key>",
                    escape(key),
                    escape(value)
                );
            }
            let _ = writeln!(out, "{indent}</service>");
        }
    };
    if !model.defaults.is_empty() {
        out.push_str("  <defaults>\n");
        write_layer(&mut out, &model.defaults, "    ");
        out.push_str("  </defaults>\n");
    }
    for (kind, attribute, layers) in [
        ("profile", "name", &model.profiles),
        ("server", "id", &model.servers),
    ] {
        for (name, layer) in layers {
            if layer.is_empty() {
                let _ = writeln!(out, "  <{kind} {attribute}=\"{}\"/>", escape(name));
            } else {
                let _ = writeln!(out, "  <{kind} {attribute}=\"{}\">", escape(name));
                write_layer(&mut out, layer, "    ");
                let _ = writeln!(out, "  </{kind}>");
            }
        }
    }
    out.push_str("</model>\n");
    out
}

/// Writes the XML form to `path` atomically (temporary file beside it,
/// fsync, rename).
pub(crate) fn write(path: &std::path::Path, model: &Model) -> Result<(), Error> {
    write_atomically(path, to_text(model).as_bytes()).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// `bytes` to `path` through `.NAME.nodows-tmp` beside it: fsync, rename,
/// directory fsync. `path` is either the old file or the new one.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(".nodows-tmp");
    let temporary = directory.join(temporary_name);
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(&directory)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}
