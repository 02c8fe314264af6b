//! A small element tree over quick-xml that remembers line numbers, so that
//! every message about an image, profile or service file names file:line.

use quick_xml::events::Event;
use quick_xml::Reader;
use std::path::{Path, PathBuf};

use super::BadInput;

#[derive(Debug, Clone)]
pub struct Element {
    pub name: String,
    pub attributes: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
    pub line: usize,
}

impl Element {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |child| child.name == name)
    }

    pub fn text(&self) -> &str {
        self.text.trim()
    }
}

/// A parsed XML document: its root element and the file it came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub path: PathBuf,
    pub root: Element,
}

impl Document {
    pub fn load(path: &Path) -> Result<Document, BadInput> {
        let source = std::fs::read_to_string(path)
            .map_err(|error| BadInput(format!("{}: cannot read: {error}", path.display())))?;
        Document::parse(path, &source)
    }

    pub fn parse(path: &Path, source: &str) -> Result<Document, BadInput> {
        let line_of = |offset: usize| source[..offset.min(source.len())].matches('\n').count() + 1;
        let mut reader = Reader::from_str(source);
        let mut stack: Vec<Element> = Vec::new();
        let mut root: Option<Element> = None;
        loop {
            let start = reader.buffer_position() as usize;
            let event = reader.read_event().map_err(|error| {
                BadInput(format!(
                    "{}:{}: invalid xml: {error}",
                    path.display(),
                    line_of(reader.error_position() as usize)
                ))
            })?;
            let line = line_of(start);
            let element_of = |tag: &quick_xml::events::BytesStart| -> Result<Element, BadInput> {
                let mut attributes = Vec::new();
                for attribute in tag.attributes() {
                    let attribute = attribute.map_err(|error| {
                        BadInput(format!("{}:{line}: invalid xml: {error}", path.display()))
                    })?;
                    let value = attribute.unescape_value().map_err(|error| {
                        BadInput(format!("{}:{line}: invalid xml: {error}", path.display()))
                    })?;
                    attributes.push((
                        String::from_utf8_lossy(attribute.key.as_ref()).into_owned(),
                        value.into_owned(),
                    ));
                }
                Ok(Element {
                    name: String::from_utf8_lossy(tag.name().as_ref()).into_owned(),
                    attributes,
                    children: Vec::new(),
                    text: String::new(),
                    line,
                })
            };
            match event {
                Event::Start(tag) => stack.push(element_of(&tag)?),
                Event::Empty(tag) => {
                    let element = element_of(&tag)?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(element),
                        None if root.is_none() => root = Some(element),
                        None => {
                            return Err(BadInput(format!(
                                "{}:{line}: invalid xml: more than one root element",
                                path.display()
                            )))
                        }
                    }
                }
                Event::End(_) => {
                    let element = stack.pop().expect("quick-xml checks end tags");
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(element),
                        None if root.is_none() => root = Some(element),
                        None => {
                            return Err(BadInput(format!(
                                "{}:{line}: invalid xml: more than one root element",
                                path.display()
                            )))
                        }
                    }
                }
                Event::Text(text) => {
                    let text = text.unescape().map_err(|error| {
                        BadInput(format!("{}:{line}: invalid xml: {error}", path.display()))
                    })?;
                    match stack.last_mut() {
                        Some(parent) => parent.text.push_str(&text),
                        None if text.trim().is_empty() => {}
                        None => {
                            return Err(BadInput(format!(
                                "{}:{line}: invalid xml: text outside the root element",
                                path.display()
                            )))
                        }
                    }
                }
                Event::CData(data) => {
                    if let Some(parent) = stack.last_mut() {
                        parent.text.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        if let Some(open) = stack.last() {
            return Err(BadInput(format!(
                "{}:{}: invalid xml: element <{}> is not closed",
                path.display(),
                open.line,
                open.name
            )));
        }
        let root = root.ok_or_else(|| {
            BadInput(format!(
                "{}:1: invalid xml: no root element",
                path.display()
            ))
        })?;
        Ok(Document {
            path: path.to_path_buf(),
            root,
        })
    }

    /// `file:line` of an element, for messages.
    pub fn at(&self, element: &Element) -> String {
        format!("{}:{}", self.path.display(), element.line)
    }
}
