//! What a template can read of the effective model, decided from its
//! source: the rule that lets the long-running renderer
//! ([`crate::incremental`]) skip a template whose inputs did not change.
//!
//! A template is [`Reads::Services`] when every way it has into the model
//! goes through `$self` (its service's `<service>` element) or `id('NAME')`
//! with a literal name (that service's element) and stays below it; its
//! output is then a function of its own bytes, its parameters and those
//! elements. Anything the check cannot prove makes
//! it [`Reads::WholeModel`], whose output is a function of the whole
//! effective model. The check is conservative, never clever:
//!
//! - the stylesheet is one file (no `xsl:import`, `xsl:include`), has a
//!   template for `/` and no other match pattern, and no
//!   `xsl:apply-templates`, `xsl:apply-imports`, `xsl:key`, `xsl:number`
//!   or extension elements;
//! - where the context node is the model's root (a template's body, a
//!   top-level variable, anything outside an `xsl:for-each`) no expression
//!   has a relative path, `.`, `current()` or a context-reading function
//!   without its argument (`string()`, `name()`, ...);
//! - no expression has an absolute path (`/...`, `//...`), `..`, an axis
//!   other than child, attribute, self, descendant and descendant-or-self,
//!   or a function outside a fixed list of pure ones (`key()`,
//!   `document()`, `lang()`, `generate-id()`, `id()` of anything but one
//!   string literal, and unknown extension functions are out);
//! - namespace prefixes are declared on the stylesheet element only.
//!
//! So every node set a template can hold comes from a variable or `id()`,
//! and by induction from `$self`, a named service or a tree the template
//! built itself.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use std::collections::{BTreeSet, HashMap};

/// What a template's output depends on, besides its own bytes and
/// parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reads {
    /// Only its service's element of the effective model (`$self`) and
    /// the elements of the services it names with `id('NAME')`.
    Services { named: BTreeSet<String> },
    /// Possibly anything in the effective model.
    WholeModel,
}

/// What `source` (a template's bytes) can read.
pub fn reads(source: &[u8]) -> Reads {
    let mut named = BTreeSet::new();
    match check_stylesheet(source, &mut named) {
        Ok(()) => Reads::Services { named },
        Err(_) => Reads::WholeModel,
    }
}

/// Why `source` may read more than the services it names, or `None`.
pub fn why_whole_model(source: &[u8]) -> Option<String> {
    check_stylesheet(source, &mut BTreeSet::new()).err()
}

const XSLT_NAMESPACE: &[u8] = b"http://www.w3.org/1999/XSL/Transform";

/// The context node of an expression: the model's root, or a node below
/// `$self` (or in a tree the template built).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Root,
    Inside,
}

/// The stylesheet's namespace prefixes, from its root element.
type Prefixes = HashMap<Vec<u8>, Vec<u8>>;

/// Checks the stylesheet; the services it names with `id()` go to `named`.
fn check_stylesheet(source: &[u8], named: &mut BTreeSet<String>) -> Result<(), String> {
    let mut reader = Reader::from_reader(source);
    let mut prefixes = Prefixes::new();
    // The context of each open element's children.
    let mut open: Vec<Context> = Vec::new();
    let mut root_template = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("not well-formed XML: {e}"))?;
        match event {
            Event::Start(element) => {
                let inner = check_element(&element, open.last().copied(), &mut prefixes, named)?;
                root_template |= is_root_template(&element, &prefixes);
                open.push(inner);
            }
            Event::Empty(element) => {
                check_element(&element, open.last().copied(), &mut prefixes, named)?;
                root_template |= is_root_template(&element, &prefixes);
            }
            Event::End(_) => {
                open.pop();
            }
            Event::DocType(_) => return Err("has a DOCTYPE".to_string()),
            Event::Eof => break,
            _ => {}
        }
    }
    if !root_template {
        return Err("has no template for `/` (the built-in rules read the whole model)".into());
    }
    Ok(())
}

/// The XSLT instruction's local name, when `element` is one.
fn xslt_name<'e>(element: &'e BytesStart, prefixes: &Prefixes) -> Option<&'e [u8]> {
    let full = element.name().into_inner();
    let colon = full.iter().position(|b| *b == b':')?;
    (prefixes.get(&full[..colon]).map(Vec::as_slice) == Some(XSLT_NAMESPACE))
        .then_some(&full[colon + 1..])
}

fn is_root_template(element: &BytesStart, prefixes: &Prefixes) -> bool {
    xslt_name(element, prefixes) == Some(b"template")
        && attribute(element, b"match").is_some_and(|m| m.trim() == "/")
}

fn attribute(element: &BytesStart, name: &[u8]) -> Option<String> {
    element
        .attributes()
        .flatten()
        .find(|a| a.key.into_inner() == name)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

/// Checks one element; returns the context of its children. `parent` is
/// `None` for the stylesheet element.
fn check_element(
    element: &BytesStart,
    parent: Option<Context>,
    prefixes: &mut Prefixes,
    named: &mut BTreeSet<String>,
) -> Result<Context, String> {
    let shown = String::from_utf8_lossy(element.name().into_inner()).into_owned();
    let mut attributes = Vec::new();
    for attribute in element.attributes() {
        let attribute = attribute.map_err(|e| format!("<{shown}>: bad attribute: {e}"))?;
        let key = attribute.key.into_inner().to_vec();
        let value = attribute
            .unescape_value()
            .map_err(|e| format!("<{shown}>: bad attribute value: {e}"))?
            .into_owned();
        if let Some(prefix) = key.strip_prefix(b"xmlns:") {
            if parent.is_some() {
                return Err(format!(
                    "<{shown}> declares a namespace prefix below the stylesheet element"
                ));
            }
            prefixes.insert(prefix.to_vec(), value.into_bytes());
        } else if key == b"xmlns" {
            if value.as_bytes() == XSLT_NAMESPACE {
                return Err("uses XSLT as the default namespace".into());
            }
        } else if key.ends_with(b"extension-element-prefixes") {
            return Err("declares extension elements".into());
        } else {
            attributes.push((key, value));
        }
    }
    let Some(context) = parent else {
        return match xslt_name(element, prefixes) {
            Some(b"stylesheet" | b"transform") => Ok(Context::Root),
            _ => Err("is not an xsl:stylesheet".into()),
        };
    };
    let Some(instruction) = xslt_name(element, prefixes) else {
        // A literal result element: every attribute is a value template.
        for (_, value) in &attributes {
            check_value_template(value, context, prefixes, named)?;
        }
        return Ok(context);
    };
    match instruction {
        b"import" | b"include" | b"apply-templates" | b"apply-imports" | b"key" | b"number" => {
            return Err(format!("uses <{shown}>"));
        }
        b"template" => {
            let matched = attribute(element, b"match");
            if matched.as_deref().is_some_and(|m| m.trim() != "/")
                || attribute(element, b"mode").is_some()
            {
                return Err(format!(
                    "has a template matching {:?}",
                    matched.unwrap_or_default()
                ));
            }
            return Ok(Context::Root);
        }
        _ => {}
    }
    for (key, value) in &attributes {
        match key.as_slice() {
            b"select" | b"test" => check_expression(value, context, prefixes, named)?,
            b"match" | b"use" | b"count" | b"from" | b"value" => {
                return Err(format!("<{shown}> has a pattern"));
            }
            _ => check_value_template(value, context, prefixes, named)?,
        }
    }
    Ok(if instruction == b"for-each" {
        Context::Inside
    } else {
        context
    })
}

/// Checks the `{expression}` parts of an attribute value template.
fn check_value_template(
    value: &str,
    context: Context,
    prefixes: &Prefixes,
    named: &mut BTreeSet<String>,
) -> Result<(), String> {
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        if let Some(escaped) = rest.strip_prefix('{') {
            rest = escaped;
            continue;
        }
        let close = expression_end(rest)
            .ok_or_else(|| format!("unterminated {{ in attribute value {value:?}"))?;
        check_expression(&rest[..close], context, prefixes, named)?;
        rest = &rest[close + 1..];
    }
    Ok(())
}

/// Where the `}` closing an expression is, skipping string literals.
fn expression_end(text: &str) -> Option<usize> {
    let mut quote = None;
    for (index, c) in text.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '}') => return Some(index),
            _ => {}
        }
    }
    None
}

/// One XPath token; names keep their text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    Number,
    Variable,
    Name(String),
    Axis(String),
    Star,
    Dot,
    DotDot,
    At,
    Slash,
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    /// `,` `|` `+` `-` `=` `!=` `<` `<=` `>` `>=`
    Operator,
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.') || !c.is_ascii()
}

/// Splits an XPath 1.0 expression into tokens (`//` is two slashes).
fn tokens(expression: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = expression.chars().collect();
    let mut out = Vec::new();
    let mut at = 0;
    let name_at = |mut at: usize| {
        while at < chars.len() && is_name_char(chars[at]) {
            at += 1;
        }
        at
    };
    while at < chars.len() {
        let c = chars[at];
        let next = chars.get(at + 1).copied();
        at += 1;
        let token = match c {
            c if c.is_whitespace() => continue,
            '\'' | '"' => {
                let end = chars[at..]
                    .iter()
                    .position(|q| *q == c)
                    .ok_or_else(|| format!("unterminated string in {expression:?}"))?;
                let literal: String = chars[at..at + end].iter().collect();
                at += end + 1;
                Token::Literal(literal)
            }
            '.' if next == Some('.') => {
                at += 1;
                Token::DotDot
            }
            '.' if !next.is_some_and(|n| n.is_ascii_digit()) => Token::Dot,
            c if c.is_ascii_digit() || c == '.' => {
                while at < chars.len() && (chars[at].is_ascii_digit() || chars[at] == '.') {
                    at += 1;
                }
                Token::Number
            }
            '$' => {
                at = name_at(at);
                if chars.get(at) == Some(&':') {
                    at = name_at(at + 1);
                }
                Token::Variable
            }
            '@' => Token::At,
            '/' => Token::Slash,
            '(' => Token::Open,
            ')' => Token::Close,
            '[' => Token::OpenBracket,
            ']' => Token::CloseBracket,
            '*' => Token::Star,
            '!' if next == Some('=') => {
                at += 1;
                Token::Operator
            }
            '<' | '>' if next == Some('=') => {
                at += 1;
                Token::Operator
            }
            ',' | '|' | '+' | '-' | '=' | '<' | '>' => Token::Operator,
            c if is_name_char(c) => {
                let start = at - 1;
                at = name_at(at);
                if chars.get(at) == Some(&':') && chars.get(at + 1) != Some(&':') {
                    at = if chars.get(at + 1) == Some(&'*') {
                        at + 2
                    } else {
                        name_at(at + 1)
                    };
                }
                let name: String = chars[start..at].iter().collect();
                let mut after = at;
                while after < chars.len() && chars[after].is_whitespace() {
                    after += 1;
                }
                if chars.get(after) == Some(&':') && chars.get(after + 1) == Some(&':') {
                    at = after + 2;
                    Token::Axis(name)
                } else {
                    Token::Name(name)
                }
            }
            other => return Err(format!("unexpected {other:?} in {expression:?}")),
        };
        out.push(token);
    }
    Ok(out)
}

const ALLOWED_AXES: [&str; 5] = [
    "child",
    "attribute",
    "self",
    "descendant",
    "descendant-or-self",
];

/// Functions of XPath 1.0 and XSLT 1.0 that read nothing but their
/// arguments (and the context, see [`CONTEXT_FUNCTIONS`]).
const PURE_FUNCTIONS: [&str; 30] = [
    "last",
    "position",
    "count",
    "local-name",
    "namespace-uri",
    "name",
    "string",
    "concat",
    "starts-with",
    "contains",
    "substring-before",
    "substring-after",
    "substring",
    "string-length",
    "normalize-space",
    "translate",
    "boolean",
    "not",
    "true",
    "false",
    "number",
    "sum",
    "floor",
    "ceiling",
    "round",
    "format-number",
    "system-property",
    "element-available",
    "function-available",
    "current",
];

/// Functions that read the context node when called without an argument.
const CONTEXT_FUNCTIONS: [&str; 7] = [
    "local-name",
    "namespace-uri",
    "name",
    "string",
    "string-length",
    "normalize-space",
    "number",
];

const NODE_TESTS: [&str; 4] = ["node", "text", "comment", "processing-instruction"];

/// Whether the extension function `prefix:name` is allowed.
fn allowed_extension(qname: &str, prefixes: &Prefixes) -> bool {
    let Some((prefix, name)) = qname.split_once(':') else {
        return false;
    };
    match prefixes.get(prefix.as_bytes()).map(Vec::as_slice) {
        Some(b"urn:nodows") => matches!(name, "line" | "sh-quote"),
        Some(b"http://exslt.org/common") => matches!(name, "node-set" | "object-type"),
        Some(b"http://exslt.org/strings" | b"http://exslt.org/math") => true,
        _ => false,
    }
}

/// Checks one expression evaluated with `context` as its context node.
fn check_expression(
    expression: &str,
    context: Context,
    prefixes: &Prefixes,
    named: &mut BTreeSet<String>,
) -> Result<(), String> {
    let tokens = tokens(expression)?;
    // The context inside each open ( or [.
    let mut open = vec![context];
    // The previous token ends an operand (so a name is an operator name and
    // `*` multiplies), or it starts a step (`/`, `@`, `axis::`).
    let mut after_operand = false;
    let mut in_path = false;
    let refuse = |why: &str| Err(format!("{why} in {expression:?}"));
    for (index, token) in tokens.iter().enumerate() {
        let here = open.last().copied().unwrap_or(Context::Root);
        let starts_relative_path = !in_path && here == Context::Root;
        match token {
            Token::Literal(_) | Token::Number | Token::Variable => {
                after_operand = true;
                in_path = false;
            }
            Token::Slash => {
                if !after_operand && !in_path {
                    return refuse("an absolute path");
                }
                after_operand = false;
                in_path = true;
            }
            Token::Axis(axis) => {
                if !ALLOWED_AXES.contains(&axis.as_str()) {
                    return refuse(&format!("the axis {axis}::"));
                }
                if starts_relative_path {
                    return refuse("a path from the model's root");
                }
                after_operand = false;
                in_path = true;
            }
            Token::At => {
                if starts_relative_path {
                    return refuse("a path from the model's root");
                }
                after_operand = false;
                in_path = true;
            }
            Token::DotDot => return refuse("`..`"),
            Token::Dot => {
                if starts_relative_path {
                    return refuse("`.` at the model's root");
                }
                after_operand = true;
                in_path = false;
            }
            Token::Star if after_operand => {
                after_operand = false;
                in_path = false;
            }
            Token::Name(name) if after_operand => {
                if !matches!(name.as_str(), "and" | "or" | "div" | "mod") {
                    return refuse(&format!("unexpected name {name}"));
                }
                after_operand = false;
                in_path = false;
            }
            Token::Name(name) if tokens.get(index + 1) == Some(&Token::Open) => {
                let no_argument = tokens.get(index + 2) == Some(&Token::Close);
                if NODE_TESTS.contains(&name.as_str()) {
                    if starts_relative_path {
                        return refuse("a path from the model's root");
                    }
                } else if name == "id" {
                    match (tokens.get(index + 2), tokens.get(index + 3)) {
                        (Some(Token::Literal(service)), Some(Token::Close)) => {
                            // id('a b') is both services' elements.
                            named.extend(
                                service
                                    .split([' ', '\t', '\n', '\r'])
                                    .filter(|name| !name.is_empty())
                                    .map(str::to_string),
                            );
                        }
                        _ => return refuse("id() of anything but one string literal"),
                    }
                } else if name == "current" && context == Context::Root {
                    return refuse("current() at the model's root");
                } else if CONTEXT_FUNCTIONS.contains(&name.as_str()) && no_argument {
                    if here == Context::Root {
                        return refuse(&format!("{name}() of the model's root"));
                    }
                } else if !PURE_FUNCTIONS.contains(&name.as_str())
                    && !allowed_extension(name, prefixes)
                {
                    return refuse(&format!("the function {name}()"));
                }
                after_operand = false;
                in_path = false;
            }
            Token::Name(_) | Token::Star => {
                if starts_relative_path {
                    return refuse("a path from the model's root");
                }
                after_operand = true;
                in_path = false;
            }
            Token::Open => {
                open.push(here);
                after_operand = false;
                in_path = false;
            }
            Token::OpenBracket => {
                open.push(Context::Inside);
                after_operand = false;
                in_path = false;
            }
            Token::Close | Token::CloseBracket => {
                open.pop();
                after_operand = true;
                in_path = false;
            }
            Token::Operator => {
                after_operand = false;
                in_path = false;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stylesheet(body: &str) -> String {
        format!(
            r#"<?xml version="1.0"?>
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform" xmlns:nodows="urn:nodows">
  <xsl:param name="self"/>
  <xsl:template match="/">{body}</xsl:template>
</xsl:stylesheet>"#
        )
    }

    fn verdict(body: &str) -> Reads {
        reads(stylesheet(body).as_bytes())
    }

    /// Guards the rule's soundness: every way into the model other than
    /// `$self` makes the template depend on the whole model.
    #[test]
    fn anything_but_self_reads_the_whole_model() {
        let whole = [
            r#"<xsl:value-of select="/model/service[@name='b']/key"/>"#,
            r#"<xsl:value-of select="//key"/>"#,
            r#"<xsl:value-of select="model/service"/>"#,
            r#"<xsl:value-of select="."/>"#,
            r#"<xsl:value-of select="string()"/>"#,
            r#"<xsl:value-of select="$self/.."/>"#,
            r#"<xsl:value-of select="$self/parent::model"/>"#,
            r#"<xsl:value-of select="$self/following-sibling::service"/>"#,
            r#"<xsl:value-of select="$self/ancestor::*/@profile"/>"#,
            r#"<xsl:value-of select="id($service)/key"/>"#,
            r#"<xsl:value-of select="document('other.xml')"/>"#,
            r#"<xsl:value-of select="key('k', 'x')"/>"#,
            r#"<xsl:value-of select="$self/key[. = current()]"/>"#,
            r#"<xsl:value-of select="count(*)"/>"#,
            r#"<xsl:value-of select="@profile"/>"#,
            r#"<xsl:value-of select="child::model"/>"#,
            r#"<xsl:value-of select="1 + /model/@x"/>"#,
            r#"<xsl:value-of select="$self | /"/>"#,
            r#"<xsl:apply-templates select="$self"/>"#,
            r#"<out a="{/model/@profile}"/>"#,
            r#"<xsl:variable name="m" select="/"/><xsl:value-of select="$m"/>"#,
            r#"<xsl:for-each select="$self/key"><xsl:value-of select="/model"/></xsl:for-each>"#,
            r#"<xsl:for-each select="$self/key"><xsl:value-of select="../../service"/></xsl:for-each>"#,
        ];
        for body in whole {
            assert_eq!(verdict(body), Reads::WholeModel, "{body}");
        }
    }

    #[test]
    fn self_relative_reads_read_only_the_own_service() {
        let own = [
            r#"<xsl:value-of select="nodows:line($self/key[@name = 'port'])"/>"#,
            r#"<xsl:for-each select="$self/key"><xsl:value-of select="@name"/>=<xsl:value-of select="."/></xsl:for-each>"#,
            r#"<xsl:for-each select="$self//key[starts-with(@name, 'a.')]"><xsl:sort select="@name"/><xsl:value-of select="substring-after(@name, 'a.')"/></xsl:for-each>"#,
            r#"<xsl:if test="$self/key[@name='x'] = 'yes' and count($self/key) div 2 > 1">y</xsl:if>"#,
            r#"<out a="{$self/key[@name='a']}" b="{{literal}}"/>"#,
            r#"<xsl:variable name="p" select="$self/key[@name='p']"/><xsl:value-of select="concat($p, '/', $service)"/>"#,
        ];
        for body in own {
            assert_eq!(
                verdict(body),
                Reads::Services {
                    named: BTreeSet::new()
                },
                "{body}"
            );
        }
    }

    #[test]
    fn id_with_a_literal_reads_that_service() {
        let body = r#"<xsl:value-of select="id('ssh')/key[@name = 'port']"/><out a="{id(' web  dns ')/key}"/>"#;
        let named = ["dns", "ssh", "web"].map(String::from).into();
        assert_eq!(verdict(body), Reads::Services { named });
    }

    #[test]
    fn stylesheets_the_rule_cannot_see_through_read_the_whole_model() {
        let import = r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"><xsl:import href="a.xsl"/><xsl:template match="/"/></xsl:stylesheet>"#;
        let other_match = r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"><xsl:template match="/"/><xsl:template match="service"/></xsl:stylesheet>"#;
        let no_root_template = r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"><xsl:output method="text"/></xsl:stylesheet>"#;
        let nested_prefix = r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"><xsl:template match="/"><x:a xmlns:x="urn:x"/></xsl:template></xsl:stylesheet>"#;
        for source in [
            import,
            other_match,
            no_root_template,
            nested_prefix,
            "not xml <",
        ] {
            assert_eq!(reads(source.as_bytes()), Reads::WholeModel, "{source}");
        }
    }

    /// Guards the shipped templates' speed-up: all but one read only
    /// `$self`; keepalived.conf walks `preceding-sibling::*` of a token,
    /// which the rule does not follow (from `$self` that axis would reach
    /// other services), so it is re-rendered on every model change.
    #[test]
    fn shipped_templates_read_only_their_own_service_but_keepalived_conf() {
        let services = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../services");
        let mut whole = Vec::new();
        let mut own = 0;
        let mut pending = vec![services.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.extension().is_some_and(|e| e == "xsl") {
                    match reads(&std::fs::read(&path).unwrap()) {
                        Reads::Services { .. } => own += 1,
                        Reads::WholeModel => {
                            whole.push(path.strip_prefix(&services).unwrap().to_path_buf())
                        }
                    }
                }
            }
        }
        assert!(own >= 10, "{own}");
        assert_eq!(
            whole,
            [std::path::PathBuf::from(
                "keepalived/etc/keepalived/keepalived.conf.xsl"
            )]
        );
    }
}
