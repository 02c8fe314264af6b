//! A property test over every shipped template: for random values of each
//! declared key's type, the rendered file has the structure it has with a
//! plain value, and values outside the type are refused before rendering.
//!
//! Structure: the same number of lines; line-oriented formats keep each
//! line's first word and their count of `; { } #`; HTML keeps its count of
//! `<`; shell scripts parse (`sh -n`); net.sh, run with a stub `ip`, runs the
//! same commands with the value as one argument; rc.conf, sourced by `sh`,
//! sets its variable to exactly the value.
//! The generator is a seeded xorshift, so a failure names its seed and
//! repeats.

use crate::support::{repo, TempDir};
use model::Model;
use servicedef::{KeyDeclaration, KeyType, ServiceDefinition, ANY_KEY};
use std::path::Path;
use std::process::Command;

/// Random values per key (each one render of the key's service).
const SAMPLES: usize = 24;

struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn word(&mut self, alphabet: &str, min: u64, max: u64) -> String {
        let characters: Vec<char> = alphabet.chars().collect();
        let length = min + self.below(max - min + 1);
        (0..length).map(|_| *self.pick(&characters)).collect()
    }
}

const LETTERS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS: &str = "0123456789";
/// Everything a format might treat as syntax, and some non-ASCII.
const HOSTILE: &str = "a Z0'\"`$;&|<>(){}[]#\\*?!~%=,.:-_/ é日\u{200b}";

/// A random valid value of `key_type`.
fn valid_value(key_type: &KeyType, random: &mut Random) -> String {
    match key_type {
        KeyType::String => random.word(HOSTILE, 0, 24),
        KeyType::Identifier => {
            random.word(LETTERS, 1, 1) + &random.word(&format!("{LETTERS}{DIGITS}_.-"), 0, 14)
        }
        KeyType::Hostname => (0..1 + random.below(3))
            .map(|_| random.word(LETTERS, 1, 1) + &random.word(&format!("{LETTERS}{DIGITS}"), 0, 8))
            .collect::<Vec<_>>()
            .join("."),
        KeyType::Ipv4 => ipv4(random),
        KeyType::Ipv6 => ipv6(random),
        KeyType::Ip => {
            if random.below(2) == 0 {
                ipv4(random)
            } else {
                ipv6(random)
            }
        }
        KeyType::Cidr => {
            if random.below(2) == 0 {
                format!("{}/{}", ipv4(random), random.below(33))
            } else {
                format!("{}/{}", ipv6(random), random.below(129))
            }
        }
        KeyType::Port => (1 + random.below(65535)).to_string(),
        KeyType::Integer { min, max } => {
            let span = (*max as i128 - *min as i128).min(1_000_000) as u64;
            (*min as i128 + random.below(span + 1) as i128).to_string()
        }
        KeyType::Decimal { min, max } => {
            let low = min.max(-1000.0);
            let high = max.min(1000.0);
            let value = low + (high - low) * (random.below(1000) as f64 / 1000.0);
            format!("{:.3}", value.clamp(low, high))
        }
        KeyType::Boolean => random.pick(&["yes", "no"]).to_string(),
        KeyType::Enum(values) => random.pick(values).clone(),
        KeyType::Duration => format!(
            "{}{}",
            random.below(1000),
            random.pick(&["ms", "s", "m", "h"])
        ),
        KeyType::Path => (0..1 + random.below(4))
            .map(|_| "/".to_string() + &random.word(&format!("{LETTERS}{DIGITS}._-+@:"), 1, 8))
            .collect::<String>()
            .replace("/..", "/x."),
        KeyType::Url => format!(
            "https://{}/{}?{}={}&x=%20",
            random.word(LETTERS, 1, 8),
            random.word(&format!("{LETTERS}{DIGITS}-._~"), 0, 8),
            random.word(LETTERS, 1, 4),
            random.word(&format!("{DIGITS}();,*!"), 1, 4)
        ),
        KeyType::SshPublicKey => {
            use base64::Engine as _;
            let algorithm = "ssh-ed25519";
            let mut blob = (algorithm.len() as u32).to_be_bytes().to_vec();
            blob.extend_from_slice(algorithm.as_bytes());
            blob.extend_from_slice(&32u32.to_be_bytes());
            blob.extend((0..32).map(|_| random.below(256) as u8));
            format!(
                "{algorithm} {} {}",
                base64::engine::general_purpose::STANDARD.encode(blob),
                random.word(&format!("{LETTERS}{DIGITS}@.-"), 0, 16)
            )
            .trim_end()
            .to_string()
        }
        KeyType::List(item) => (0..1 + random.below(3))
            .map(|_| valid_value(item, random))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn ipv4(random: &mut Random) -> String {
    (0..4)
        .map(|_| random.below(256).to_string())
        .collect::<Vec<_>>()
        .join(".")
}

fn ipv6(random: &mut Random) -> String {
    format!(
        "fd{:02x}::{:x}",
        random.below(256),
        1 + random.below(0xffff)
    )
}

/// Values that no type but `string` accepts (and `string` refuses the
/// first three): a command after a separator, a newline, a NUL.
const OUTSIDE_EVERY_TYPE: &[&str] = &[
    "ok\nPermitEmptyPasswords yes",
    "x\u{0}",
    "tab\tx",
    "1; reboot",
    "$(reboot)",
];

/// The key names a test sets: declared names, and one name for a wildcard;
/// not the built-in `enabled`, which no template reads (it decides whether
/// the service runs; `sync.rs` tests it).
fn key_names(definition: &ServiceDefinition) -> Vec<(&KeyDeclaration, String)> {
    definition
        .keys
        .iter()
        .filter(|declaration| declaration.name != servicedef::ENABLED_KEY)
        .map(|declaration| {
            let name = if declaration.name == ANY_KEY {
                "kernel.nodows_test".to_string()
            } else {
                declaration.name.clone()
            };
            (declaration, name)
        })
        .collect()
}

/// `base` with `service`'s `key` set to `value` in the server layer
/// `prop` (built directly, so that any value, NUL included, can be tried).
fn model_with(base: &Model, service: &str, key: &str, value: &str) -> Model {
    let mut model = base.clone();
    model
        .servers
        .entry("prop".to_string())
        .or_default()
        .entry(service.to_string())
        .or_default()
        .set(key, value.to_string(), "model.xml: server prop".to_string());
    model
}

/// The rendered files of `service` (target -> text), or the problems.
fn render_service(
    model: &Model,
    definitions: &[ServiceDefinition],
    services_dir: &Path,
    profile: &str,
    service: &str,
) -> Result<Vec<(String, String)>, String> {
    let only = [service.to_string()];
    render::stage(&render::Request {
        model,
        definitions,
        services_dir,
        server: Some("prop"),
        profile,
        only: &only,
    })
    .map(|files| {
        files
            .into_iter()
            .map(|file| (file.target, String::from_utf8(file.bytes).unwrap()))
            .collect()
    })
    .map_err(|error| error.to_string())
}

fn first_words(text: &str) -> Vec<&str> {
    text.lines()
        .map(|line| line.split_whitespace().next().unwrap_or(""))
        .collect()
}

fn count(text: &str, characters: &str) -> usize {
    text.chars().filter(|c| characters.contains(*c)).count()
}

fn is_shell(target: &str, text: &str) -> bool {
    text.starts_with("#!/bin/sh") || target == "/etc/rc.conf"
}

/// Asserts that `text` (rendered with `value`) has the structure of `plain`.
fn assert_same_structure(target: &str, plain: &str, text: &str, value: &str, scratch: &Path) {
    let context = format!("{target} with {value:?}");
    assert_eq!(
        plain.lines().count(),
        text.lines().count(),
        "{context}: line count changed:\n{text}"
    );
    if target.ends_with(".html") {
        assert_eq!(
            count(plain, "<"),
            count(text, "<"),
            "{context}: markup changed:\n{text}"
        );
        return;
    }
    if is_shell(target, text) {
        let file = scratch.join("script.sh");
        std::fs::write(&file, text).unwrap();
        let status = Command::new("sh").arg("-n").arg(&file).status().unwrap();
        assert!(status.success(), "{context}: sh -n refuses it:\n{text}");
        return;
    }
    assert_eq!(
        first_words(plain),
        first_words(text),
        "{context}: a directive changed:\n{text}"
    );
    if !target.starts_with("/etc/sysctl.d/") {
        assert_eq!(
            count(plain, ";{}#"),
            count(text, ";{}#"),
            "{context}: syntax changed:\n{text}"
        );
    }
}

/// net.sh run with stub `ip` and `sleep` on PATH: the `ip` commands it runs,
/// one line of arguments each (separated by a unit separator).
fn net_script_commands(text: &str, scratch: &Path) -> Vec<String> {
    let bin = scratch.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = scratch.join("ip.log");
    let _ = std::fs::remove_file(&log);
    let stub = format!(
        "#!/bin/sh\nfor argument in \"$@\"; do printf '%s\\037' \"$argument\"; done >> {}\necho >> {}\n",
        log.display(),
        log.display()
    );
    for (name, body) in [("ip", stub.as_str()), ("sleep", "#!/bin/sh\n")] {
        let path = bin.join(name);
        std::fs::write(&path, body).unwrap();
        let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&path, executable).unwrap();
    }
    let script = scratch.join("net.sh");
    std::fs::write(&script, text.replace("/sbin/ip ", "ip ")).unwrap();
    let output = Command::new("sh")
        .arg(&script)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "net.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The value of `variable` after sourcing rc.conf with `sh`.
fn sourced_variable(text: &str, variable: &str, scratch: &Path) -> String {
    let file = scratch.join("rc.conf");
    std::fs::write(&file, text).unwrap();
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(". \"$1\"; printf '%s' \"${variable}\""))
        .arg("sh")
        .arg(&file)
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap()
}

/// Checks the extra, format-specific properties of the shell files.
fn assert_shell_semantics(
    target: &str,
    plain: &str,
    text: &str,
    key: &str,
    value: &str,
    scratch: &Path,
) {
    if target == "/etc/nodows/net.sh" {
        let plain_commands = net_script_commands(plain, scratch);
        let commands = net_script_commands(text, scratch);
        assert_eq!(
            plain_commands.len(),
            commands.len(),
            "net.sh with {value:?} runs other commands: {commands:?}"
        );
        assert!(
            commands
                .iter()
                .any(|command| command.split('\u{1f}').any(|argument| argument == value)),
            "net.sh with {key}={value:?} never passes the value as one argument: {commands:?}"
        );
    }
    if target == "/etc/rc.conf" {
        let variable = match key {
            "hostname" => "hostname",
            "ifconfig" => "ifconfig_DEFAULT",
            _ => return,
        };
        assert_eq!(
            sourced_variable(text, variable, scratch),
            value,
            "rc.conf with {key}={value:?}"
        );
    }
}

/// Keys whose valid values a template may still refuse because of how they
/// fit with other keys (its own check, an `xsl:message` naming the service):
/// keepalived's virtual addresses must lie in the link of `address`, every
/// name in `instances` needs its router id and addresses, VRRPv2 has whole
/// seconds only and VRRPv3 no password. A sample of such a key is either
/// refused by that check or keeps the structure.
const CROSS_KEY_CHECKED: &[(&str, &str)] = &[
    ("keepalived", "address"),
    ("keepalived", "instances"),
    ("keepalived", "vrrp_version"),
    ("keepalived", "auth_pass"),
];

/// Keys whose value decides the file's shape, of types that cannot carry
/// syntax: keepalived's preempt picks `preempt_delay` or `nopreempt`, and
/// unicast_peers (IPv4 addresses) writes one line per peer. Their samples
/// must render; their shape is not compared.
const SHAPE_CHOOSING: &[(&str, &str)] =
    &[("keepalived", "preempt"), ("keepalived", "unicast_peers")];

/// A refusal by the service's own cross-key check (see CROSS_KEY_CHECKED).
fn refused_by_cross_key_check(service: &str, key: &str, problem: &str) -> bool {
    CROSS_KEY_CHECKED.contains(&(service, key))
        && problem.contains(&format!("/{service}/"))
        && problem.contains(&format!(": service {service}: "))
}

/// Runs the property over every key of every service in `services_dir`.
fn check_services(services_dir: &Path, base_model: &str, profile: &str, seed: u64) {
    let base_model = &Model::from_xml(base_model, "model.xml").unwrap();
    let definitions = servicedef::load_dir(services_dir).unwrap();
    let scratch = TempDir::new("properties");
    let mut random = Random(seed);
    let mut checked = 0;
    for definition in &definitions {
        for (declaration, key) in key_names(definition) {
            let plain_value = valid_value(&declaration.key_type, &mut Random(1));
            let plain_model = model_with(base_model, &definition.name, &key, &plain_value);
            let plain = match render_service(
                &plain_model,
                &definitions,
                services_dir,
                profile,
                &definition.name,
            ) {
                Ok(plain) => plain,
                // The model's own value is the plain one then.
                Err(problem) if refused_by_cross_key_check(&definition.name, &key, &problem) => {
                    let own = base_model
                        .effective(None, profile)
                        .ok()
                        .and_then(|effective| {
                            effective.services.get(&definition.name)?.get(&key).cloned()
                        });
                    let mut model = base_model.clone();
                    model.servers.entry("prop".to_string()).or_default();
                    if let Some(own) = own {
                        model = model_with(base_model, &definition.name, &key, &own);
                    }
                    render_service(
                        &model,
                        &definitions,
                        services_dir,
                        profile,
                        &definition.name,
                    )
                    .unwrap_or_else(|problem| panic!("{}: {problem}", definition.name))
                }
                Err(problem) => panic!("{} {key}={plain_value:?}: {problem}", definition.name),
            };
            for sample in 0..SAMPLES {
                let value = valid_value(&declaration.key_type, &mut random);
                let model = model_with(base_model, &definition.name, &key, &value);
                let files = match render_service(
                    &model,
                    &definitions,
                    services_dir,
                    profile,
                    &definition.name,
                ) {
                    Ok(files) => files,
                    Err(problem)
                        if refused_by_cross_key_check(&definition.name, &key, &problem) =>
                    {
                        continue;
                    }
                    Err(problem) => panic!(
                        "seed {seed} sample {sample}: {} {key}={value:?} refused: {problem}",
                        definition.name
                    ),
                };
                if SHAPE_CHOOSING.contains(&(definition.name.as_str(), key.as_str())) {
                    checked += 1;
                    continue;
                }
                for ((target, plain_text), (_, text)) in plain.iter().zip(&files) {
                    assert_same_structure(target, plain_text, text, &value, scratch.path());
                    assert_shell_semantics(target, plain_text, text, &key, &value, scratch.path());
                }
                checked += 1;
            }
            for value in OUTSIDE_EVERY_TYPE {
                if declaration.check(value).is_ok() {
                    continue;
                }
                let model = model_with(base_model, &definition.name, &key, value);
                let problem = render_service(
                    &model,
                    &definitions,
                    services_dir,
                    profile,
                    &definition.name,
                )
                .expect_err(&format!("{} {key}={value:?} was rendered", definition.name));
                assert!(
                    problem.contains(&format!("key `{key}` of service `{}`", definition.name)),
                    "{problem}"
                );
            }
        }
    }
    assert!(
        checked > 0,
        "no declared keys in {}",
        services_dir.display()
    );
}

#[test]
fn every_linux_template_keeps_its_structure_for_any_valid_value() {
    let base = std::fs::read_to_string(repo().join("models/default.xml")).unwrap();
    check_services(
        &repo().join("services"),
        &base,
        "production",
        0x9e37_79b9_7f4a_7c15,
    );
}

#[test]
fn every_freebsd_template_keeps_its_structure_for_any_valid_value() {
    let base = "<model><defaults/><profile name=\"production\"/></model>";
    check_services(
        &repo().join("freebsd/services"),
        base,
        "production",
        0x2545_f491_4f6c_dd1d,
    );
}
