//! Just enough JSON: string escaping for `status --json`, and a small parser
//! for the renderer's change set (initd keeps its dependency list short).

use std::collections::BTreeMap;

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            character if (character as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", character as u32))
            }
            character => out.push(character),
        }
    }
    out.push('"');
    out
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Value>),
    Object(BTreeMap<String, Value>),
}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(map) => map.get(key),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}

pub fn parse(text: &str) -> Result<Value, String> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        position: 0,
    };
    let value = parser.value(0)?;
    parser.whitespace();
    if parser.position != parser.bytes.len() {
        return Err(format!("trailing characters at byte {}", parser.position));
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Parser<'_> {
    fn whitespace(&mut self) {
        while self
            .bytes
            .get(self.position)
            .is_some_and(|byte| byte.is_ascii_whitespace())
        {
            self.position += 1;
        }
    }

    fn error<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.position))
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        self.whitespace();
        if self.bytes.get(self.position) == Some(&byte) {
            self.position += 1;
            Ok(())
        } else {
            self.error(&format!("expected '{}'", byte as char))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > 64 {
            return self.error("nested too deeply");
        }
        self.whitespace();
        match self.bytes.get(self.position) {
            Some(b'{') => {
                self.position += 1;
                let mut map = BTreeMap::new();
                self.whitespace();
                if self.bytes.get(self.position) == Some(&b'}') {
                    self.position += 1;
                    return Ok(Value::Object(map));
                }
                loop {
                    self.whitespace();
                    let key = self.string()?;
                    self.expect(b':')?;
                    let value = self.value(depth + 1)?;
                    map.insert(key, value);
                    self.whitespace();
                    match self.bytes.get(self.position) {
                        Some(b',') => self.position += 1,
                        Some(b'}') => {
                            self.position += 1;
                            return Ok(Value::Object(map));
                        }
                        _ => return self.error("expected ',' or '}'"),
                    }
                }
            }
            Some(b'[') => {
                self.position += 1;
                let mut items = Vec::new();
                self.whitespace();
                if self.bytes.get(self.position) == Some(&b']') {
                    self.position += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.whitespace();
                    match self.bytes.get(self.position) {
                        Some(b',') => self.position += 1,
                        Some(b']') => {
                            self.position += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return self.error("expected ',' or ']'"),
                    }
                }
            }
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.word("true", Value::Bool(true)),
            Some(b'f') => self.word("false", Value::Bool(false)),
            Some(b'n') => self.word("null", Value::Null),
            Some(byte) if *byte == b'-' || byte.is_ascii_digit() => {
                let start = self.position;
                while self
                    .bytes
                    .get(self.position)
                    .is_some_and(|byte| byte.is_ascii_digit() || b"+-.eE".contains(byte))
                {
                    self.position += 1;
                }
                let text = std::str::from_utf8(&self.bytes[start..self.position]).unwrap_or("");
                text.parse()
                    .map(Value::Number)
                    .or_else(|_| self.error("bad number"))
            }
            _ => self.error("expected a value"),
        }
    }

    fn word(&mut self, word: &str, value: Value) -> Result<Value, String> {
        if self.bytes[self.position..].starts_with(word.as_bytes()) {
            self.position += word.len();
            Ok(value)
        } else {
            self.error("expected a value")
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.bytes.get(self.position) != Some(&b'"') {
            return self.error("expected a string");
        }
        self.position += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            match self.bytes.get(self.position) {
                None => return self.error("unterminated string"),
                Some(b'"') => {
                    self.position += 1;
                    return String::from_utf8(out).or_else(|_| self.error("bad UTF-8"));
                }
                Some(b'\\') => {
                    self.position += 1;
                    let escaped = match self.bytes.get(self.position) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'n') => '\n',
                        Some(b't') => '\t',
                        Some(b'r') => '\r',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'u') => {
                            let hex = self
                                .bytes
                                .get(self.position + 1..self.position + 5)
                                .and_then(|hex| std::str::from_utf8(hex).ok())
                                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                                .and_then(char::from_u32);
                            self.position += 4;
                            match hex {
                                Some(character) => character,
                                None => return self.error("bad \\u escape"),
                            }
                        }
                        _ => return self.error("bad escape"),
                    };
                    self.position += 1;
                    let mut buffer = [0u8; 4];
                    out.extend_from_slice(escaped.encode_utf8(&mut buffer).as_bytes());
                }
                Some(byte) => {
                    out.push(*byte);
                    self.position += 1;
                }
            }
        }
    }
}

/// The change set: files written, and (service, "reload" | "restart").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    pub written: Vec<String>,
    pub services: Vec<(String, String)>,
}

pub fn parse_change_set(text: &str) -> Result<ChangeSet, String> {
    let value = parse(text.trim())?;
    let written = value
        .get("written")
        .and_then(Value::as_array)
        .unwrap_or(&[])
        .iter()
        .filter_map(|item| item.as_str().map(str::to_string))
        .collect();
    let mut services = Vec::new();
    for item in value
        .get("services")
        .and_then(Value::as_array)
        .unwrap_or(&[])
    {
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a services entry has no name")?;
        let action = item
            .get("action")
            .and_then(Value::as_str)
            .ok_or("a services entry has no action")?;
        if action != "reload" && action != "restart" {
            return Err(format!("bad action \"{action}\" for service {name}"));
        }
        services.push((name.to_string(), action.to_string()));
    }
    Ok(ChangeSet { written, services })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_set_from_the_architecture_parses() {
        let text = r#"{"written": ["/etc/nginx/sites-enabled/default"],
 "services": [{"name": "web", "action": "reload"}]}"#;
        assert_eq!(
            parse_change_set(text),
            Ok(ChangeSet {
                written: vec!["/etc/nginx/sites-enabled/default".to_string()],
                services: vec![("web".to_string(), "reload".to_string())]
            })
        );
    }

    #[test]
    fn bad_json_is_an_error() {
        assert!(parse_change_set("{\"services\": [").is_err());
        assert!(
            parse_change_set("{\"services\": [{\"name\": \"a\", \"action\": \"kick\"}]}").is_err()
        );
    }

    #[test]
    fn escape_round_trips() {
        let text = "a\"b\\c\nd\u{1}é";
        assert_eq!(parse(&escape(text)), Ok(Value::String(text.to_string())));
    }
}
