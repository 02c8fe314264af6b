//! Typed model keys: what a service declares it reads from the model.
//!
//! ```xml
//! <key name="port" type="port" default="80">TCP port nginx listens on</key>
//! <key name="level" type="enum" values="debug info warn" default="warn">log level</key>
//! <key name="*" type="string">every other key: a kernel parameter</key>
//! ```
//!
//! Every type is checked by [`KeyType::check`] before any template runs, so
//! the types are chosen to be safe in line-oriented formats by
//! construction: only `string` (and `url`'s query characters) can hold
//! characters that a format may treat as syntax, and no type holds a
//! control character (no newline, no tab, no NUL).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The type of a model key's value.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyType {
    /// Any text without control characters (no newline, tab, NUL, DEL, C1).
    String,
    /// A name: a letter or `_`, then letters, digits, `_ . -` (64 at most).
    Identifier,
    /// An RFC 1123 host name (labels of letters, digits and `-`).
    Hostname,
    Ipv4,
    Ipv6,
    /// An IPv4 or IPv6 address.
    Ip,
    /// An address with a prefix length: `10.0.2.15/24`, `fd00::1/64`.
    Cidr,
    /// A TCP or UDP port, 1 to 65535.
    Port,
    /// A whole number within the bounds.
    Integer {
        min: i64,
        max: i64,
    },
    /// A decimal number within the bounds (`0.5`, `3`).
    Decimal {
        min: f64,
        max: f64,
    },
    /// `yes` or `no`.
    Boolean,
    /// One of the listed words.
    Enum(Vec<String>),
    /// A whole number with a unit: `100ms`, `10s`, `5m`, `1h`.
    Duration,
    /// An absolute path of letters, digits and `. _ - + @ : /`, without `..`.
    Path,
    /// One OpenSSH public key line: `TYPE BASE64 [COMMENT]`, the blob's
    /// own type matching TYPE (an `authorized_keys` line without options).
    SshPublicKey,
    /// `scheme://...` with the characters of RFC 3986 (no space, quote,
    /// backslash or angle bracket).
    Url,
    /// Items of one type separated by spaces.
    List(Box<KeyType>),
}

/// Bounds are parsed from plain decimal digits, never NaN, so equality is
/// reflexive.
impl Eq for KeyType {}

/// One declared key of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDeclaration {
    /// The key's name; `*` for every key not declared by name, `PREFIX.*`
    /// for every such key whose name starts with `PREFIX.`.
    pub name: String,
    pub key_type: KeyType,
    /// The value must be set (by the model or `default`) for every server
    /// and profile the service is rendered for.
    pub required: bool,
    /// Merged under the model's defaults layer.
    pub default: Option<String>,
    /// Words accepted besides the type (`also="off"` for a path or `off`).
    pub also: Vec<String>,
    /// One line saying what the key does.
    pub description: String,
    /// Line of the `<key>` element in service.xml.
    pub line: u32,
}

/// The name of a wildcard declaration.
pub const ANY_KEY: &str = "*";

/// The type names of `<key type="...">`, for messages and the schema.
pub const TYPE_NAMES: &[&str] = &[
    "string",
    "identifier",
    "hostname",
    "ipv4",
    "ipv6",
    "ip",
    "cidr",
    "port",
    "integer",
    "decimal",
    "boolean",
    "enum",
    "duration",
    "path",
    "url",
    "ssh-public-key",
    "list",
];

/// The key algorithms `ssh-public-key` accepts (OpenSSH 9's).
pub const SSH_KEY_ALGORITHMS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
];

impl KeyDeclaration {
    /// Checks a value against the type (and the `also` words).
    pub fn check(&self, value: &str) -> Result<(), String> {
        if self.also.iter().any(|word| word == value) {
            return Ok(());
        }
        self.key_type.check(value).map_err(|problem| {
            if self.also.is_empty() {
                problem
            } else {
                format!("{problem}, or one of: {}", self.also.join(", "))
            }
        })
    }

    /// The type as a user writes it, with its parameters: `integer 1..64`,
    /// `enum: debug, info`, `list of ipv4`.
    pub fn type_text(&self) -> String {
        let text = self.key_type.describe();
        if self.also.is_empty() {
            text
        } else {
            format!("{text} or {}", self.also.join(", "))
        }
    }
}

impl KeyType {
    /// The type from `<key type="..." ...>`'s attributes (`values` for enum,
    /// `min`/`max` for integer and decimal, `item` for list).
    pub fn from_attributes(
        type_name: &str,
        attribute: &dyn Fn(&str) -> Option<String>,
    ) -> Result<KeyType, String> {
        Ok(match type_name {
            "string" => KeyType::String,
            "identifier" => KeyType::Identifier,
            "hostname" => KeyType::Hostname,
            "ipv4" => KeyType::Ipv4,
            "ipv6" => KeyType::Ipv6,
            "ip" => KeyType::Ip,
            "cidr" => KeyType::Cidr,
            "port" => KeyType::Port,
            "integer" => {
                let bound = |name: &str, default: i64| -> Result<i64, String> {
                    match attribute(name) {
                        None => Ok(default),
                        Some(text) => text.trim().parse().map_err(|_| {
                            format!(
                                "bad {name} \"{text}\" for type integer: expected a whole number"
                            )
                        }),
                    }
                };
                let (min, max) = (bound("min", i64::MIN)?, bound("max", i64::MAX)?);
                if min > max {
                    return Err(format!("min {min} is larger than max {max}: swap them"));
                }
                KeyType::Integer { min, max }
            }
            "decimal" => {
                let bound = |name: &str, default: f64| -> Result<f64, String> {
                    match attribute(name) {
                        None => Ok(default),
                        Some(text) => parse_decimal(text.trim()).ok_or_else(|| {
                            format!("bad {name} \"{text}\" for type decimal: expected a number like 0.5")
                        }),
                    }
                };
                let (min, max) = (bound("min", f64::MIN)?, bound("max", f64::MAX)?);
                if min > max {
                    return Err(format!("min {min} is larger than max {max}: swap them"));
                }
                KeyType::Decimal { min, max }
            }
            "boolean" => KeyType::Boolean,
            "enum" => {
                let values: Vec<String> = attribute("values")
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                if values.is_empty() {
                    return Err(
                        "type enum needs values=\"...\": the accepted words, separated by spaces"
                            .to_string(),
                    );
                }
                if let Some(bad) = values.iter().find(|value| !is_word(value)) {
                    return Err(format!(
                        "enum value \"{bad}\" is not a plain word (letters, digits, . _ - +)"
                    ));
                }
                KeyType::Enum(values)
            }
            "duration" => KeyType::Duration,
            "path" => KeyType::Path,
            "url" => KeyType::Url,
            "ssh-public-key" => KeyType::SshPublicKey,
            "list" => {
                let item = attribute("item").ok_or_else(|| {
                    "type list needs item=\"...\": the type of each item, e.g. ipv4".to_string()
                })?;
                if item == "list" || item == "string" {
                    return Err(format!(
                        "a list's items cannot be of type {item}: items are separated by spaces"
                    ));
                }
                KeyType::List(Box::new(KeyType::from_attributes(&item, attribute)?))
            }
            other => {
                return Err(format!(
                    "unknown key type \"{other}\": expected one of {}",
                    TYPE_NAMES.join(", ")
                ))
            }
        })
    }

    /// The type in a few words, for messages and documentation.
    pub fn describe(&self) -> String {
        match self {
            KeyType::String => "string".to_string(),
            KeyType::Identifier => "identifier".to_string(),
            KeyType::Hostname => "hostname".to_string(),
            KeyType::Ipv4 => "ipv4".to_string(),
            KeyType::Ipv6 => "ipv6".to_string(),
            KeyType::Ip => "ip".to_string(),
            KeyType::Cidr => "cidr".to_string(),
            KeyType::Port => "port".to_string(),
            KeyType::Integer { min, max } => match (*min, *max) {
                (i64::MIN, i64::MAX) => "integer".to_string(),
                (min, i64::MAX) => format!("integer >= {min}"),
                (i64::MIN, max) => format!("integer <= {max}"),
                (min, max) => format!("integer {min}..{max}"),
            },
            KeyType::Decimal { min, max } => {
                if *min == f64::MIN && *max == f64::MAX {
                    "decimal".to_string()
                } else {
                    format!("decimal {min}..{max}")
                }
            }
            KeyType::Boolean => "boolean (yes or no)".to_string(),
            KeyType::Enum(values) => format!("one of {}", values.join(", ")),
            KeyType::Duration => "duration".to_string(),
            KeyType::Path => "path".to_string(),
            KeyType::Url => "url".to_string(),
            KeyType::SshPublicKey => "ssh-public-key".to_string(),
            KeyType::List(item) => format!("list of {}", item.describe()),
        }
    }

    /// Checks `value`; the error says what was expected.
    pub fn check(&self, value: &str) -> Result<(), String> {
        let valid = match self {
            KeyType::String => !value.chars().any(char::is_control),
            KeyType::Identifier => is_identifier(value),
            KeyType::Hostname => is_hostname(value),
            KeyType::Ipv4 => value.parse::<Ipv4Addr>().is_ok(),
            KeyType::Ipv6 => value.parse::<Ipv6Addr>().is_ok(),
            KeyType::Ip => value.parse::<IpAddr>().is_ok(),
            KeyType::Cidr => is_cidr(value),
            KeyType::Port => is_decimal_digits(value) && matches!(value.parse::<u16>(), Ok(1..)),
            KeyType::Integer { min, max } => {
                is_integer_text(value)
                    && value
                        .parse::<i64>()
                        .is_ok_and(|number| (*min..=*max).contains(&number))
            }
            KeyType::Decimal { min, max } => {
                parse_decimal(value).is_some_and(|number| number >= *min && number <= *max)
            }
            KeyType::Boolean => value == "yes" || value == "no",
            KeyType::Enum(values) => values.iter().any(|word| word == value),
            KeyType::Duration => {
                is_ascii_word(value)
                    && crate::parse_duration(value).is_some()
                    && value.trim() == value
            }
            KeyType::Path => is_path(value),
            KeyType::Url => is_url(value),
            KeyType::SshPublicKey => is_ssh_public_key(value),
            KeyType::List(item) => {
                // Single spaces only: an item never holds a space, so the
                // list's text is its items joined by spaces.
                let mut problems = Vec::new();
                if value.is_empty() || value.split(' ').any(str::is_empty) {
                    return Err(format!(
                        "expected a {}: items separated by single spaces",
                        self.describe()
                    ));
                }
                for item_value in value.split(' ') {
                    if let Err(problem) = item.check(item_value) {
                        problems.push(format!("item \"{item_value}\": {problem}"));
                    }
                }
                return if problems.is_empty() {
                    Ok(())
                } else {
                    Err(problems.join("; "))
                };
            }
        };
        if valid {
            Ok(())
        } else {
            Err(format!("expected {}", self.expectation()))
        }
    }

    fn expectation(&self) -> String {
        match self {
            KeyType::String => {
                "a string without control characters (no newline, tab or NUL)".to_string()
            }
            KeyType::Identifier => {
                "an identifier (a letter or _, then letters, digits, _ . -; 64 at most)".to_string()
            }
            KeyType::Hostname => {
                "a hostname (labels of letters, digits and -, separated by dots)".to_string()
            }
            KeyType::Ipv4 => "an IPv4 address like 192.0.2.1".to_string(),
            KeyType::Ipv6 => "an IPv6 address like fd00::1".to_string(),
            KeyType::Ip => "an IPv4 or IPv6 address".to_string(),
            KeyType::Cidr => "an address with a prefix length, like 10.0.2.15/24".to_string(),
            KeyType::Port => "a port number 1-65535".to_string(),
            KeyType::Integer { .. } => format!("an {}", self.describe()),
            KeyType::Decimal { .. } => format!("a {}", self.describe()),
            KeyType::Boolean => "yes or no".to_string(),
            KeyType::Enum(values) => format!("one of {}", values.join(", ")),
            KeyType::Duration => "a duration like 100ms, 10s, 5m or 1h".to_string(),
            KeyType::Path => {
                "an absolute path of letters, digits and . _ - + @ : / without ..".to_string()
            }
            KeyType::SshPublicKey => format!(
                "an OpenSSH public key line like `ssh-ed25519 AAAAC3Nz... user@host` (one of {}; the key as ssh-keygen wrote it into the .pub file)",
                SSH_KEY_ALGORITHMS.join(", ")
            ),
            KeyType::Url => {
                "a URL like https://host/path (no spaces, quotes, backslashes or angle brackets)"
                    .to_string()
            }
            KeyType::List(_) => format!("a {}", self.describe()),
        }
    }
}

/// A key name a wildcard accepts (and any declared name): letters, digits,
/// `_`, then also `. - /` (sysctl names: `net.ipv4.ip_forward`).
pub fn is_key_name(name: &str) -> bool {
    name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|first| first.is_ascii_alphanumeric() || first == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
}

fn is_word(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
}

fn is_ascii_word(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric())
}

fn is_decimal_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

fn is_integer_text(text: &str) -> bool {
    is_decimal_digits(text.strip_prefix('-').unwrap_or(text))
}

fn parse_decimal(text: &str) -> Option<f64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let plain = is_decimal_digits(whole)
        && (fraction.is_empty() && !digits.ends_with('.') || is_decimal_digits(fraction));
    if plain {
        text.parse().ok()
    } else {
        None
    }
}

fn is_identifier(text: &str) -> bool {
    text.len() <= 64
        && text
            .chars()
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn is_hostname(text: &str) -> bool {
    let text = text.strip_suffix('.').unwrap_or(text);
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn is_cidr(text: &str) -> bool {
    let Some((address, prefix)) = text.split_once('/') else {
        return false;
    };
    if !is_decimal_digits(prefix) || prefix.len() > 3 {
        return false;
    }
    let Ok(prefix) = prefix.parse::<u8>() else {
        return false;
    };
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => prefix <= 32,
        Ok(IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

fn is_path(text: &str) -> bool {
    text.starts_with('/')
        && text.len() <= 4096
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+@:/".contains(c))
        && !text.split('/').any(|part| part == "..")
}

fn is_url(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
    let host_part = rest.split(['/', '?', '#']).next().unwrap_or_default();
    scheme_ok
        && !host_part.is_empty()
        && text.len() <= 4096
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&()*+,;=%".contains(c))
}

/// `TYPE BASE64 [COMMENT]`: a known TYPE, BASE64 that decodes to a blob
/// whose first field (a length-prefixed string) is TYPE again, a comment
/// without control characters.
fn is_ssh_public_key(text: &str) -> bool {
    use base64::Engine as _;
    let mut fields = text.splitn(3, ' ');
    let (Some(algorithm), Some(encoded)) = (fields.next(), fields.next()) else {
        return false;
    };
    let comment = fields.next().unwrap_or("");
    if !SSH_KEY_ALGORITHMS.contains(&algorithm) || comment.chars().any(char::is_control) {
        return false;
    }
    let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return false;
    };
    let Some(length) = blob.get(..4) else {
        return false;
    };
    let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
    blob.get(4..4 + length) == Some(algorithm.as_bytes()) && blob.len() > 4 + length
}

impl KeyDeclaration {
    /// A wildcard's prefix: `""` for `*`, `"PREFIX."` for `PREFIX.*`;
    /// None for a key declared by name.
    pub fn wildcard_prefix(&self) -> Option<&str> {
        wildcard_prefix(&self.name)
    }
}

/// See [`KeyDeclaration::wildcard_prefix`].
pub fn wildcard_prefix(name: &str) -> Option<&str> {
    if name == ANY_KEY {
        return Some("");
    }
    let prefix = name.strip_suffix('*')?;
    let stem = prefix.strip_suffix('.')?;
    is_key_name(stem).then_some(prefix)
}

/// The declared name closest to `name` (edit distance at most a third of
/// its length, at least 2), for "did you mean" hints.
pub fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(2);
    candidates
        .filter(|candidate| wildcard_prefix(candidate).is_none())
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min()
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, a_char) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, b_char) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(a_char != *b_char);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}
