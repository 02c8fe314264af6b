//! initd's protocols, typed: the control requests (`Request`, one line of
//! words on the socket, parsed here for both initd and initctl), and the
//! JSON initd reads and writes through serde: the renderer's change set
//! (docs/interfaces.md, "The change set") and `initctl status --json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sys::Shutdown;

/// One control request. On the wire: its words on one line (`stop web`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status {
        json: bool,
    },
    /// One service's state; exit 1 when it is failed (a health probe, as
    /// keepalived's track script uses it).
    ServiceStatus(String),
    Start(String),
    Stop(String),
    Restart(String),
    Reload(String),
    Check(String),
    Configure(String),
    Log(String),
    /// Re-read the definitions (NAME: only if it exists then).
    Load(Option<String>),
    /// A built-in or declared custom event, as text (`servicedef::Event`).
    Emit(String),
    /// The current mode, or a switch to MODE.
    Mode(Option<String>),
    Render,
    /// `render --applied`: a watcher has applied a render in process (its
    /// journal names the change set); initd finishes the journal through
    /// `nodows journal` and reloads exactly its owners, as after a render.
    RenderApplied,
    /// Services by the time from spawn to ready, slowest first.
    Blame,
    /// The chain of needs that the last service to become ready waited on.
    CriticalChain,
    Shutdown(Shutdown),
    /// Panics while handling it; only with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    DebugPanic,
}

impl Request {
    /// The request of a line's words; Err is the usage problem.
    pub fn parse(words: &[&str]) -> Result<Request, String> {
        let name = |name: &str| name.to_string();
        Ok(match words {
            ["status"] => Request::Status { json: false },
            ["status", "--json"] => Request::Status { json: true },
            ["status", service] => Request::ServiceStatus(name(service)),
            ["start", service] => Request::Start(name(service)),
            ["stop", service] => Request::Stop(name(service)),
            ["restart", service] => Request::Restart(name(service)),
            ["reload", service] => Request::Reload(name(service)),
            ["check", service] => Request::Check(name(service)),
            ["configure", service] => Request::Configure(name(service)),
            ["log", service] => Request::Log(name(service)),
            ["load"] => Request::Load(None),
            ["load", service] => Request::Load(Some(name(service))),
            ["emit", event] => Request::Emit(name(event)),
            ["mode"] => Request::Mode(None),
            ["mode", mode] => Request::Mode(Some(name(mode))),
            ["render"] => Request::Render,
            ["render", "--applied"] => Request::RenderApplied,
            ["blame"] => Request::Blame,
            ["critical-chain"] => Request::CriticalChain,
            ["poweroff"] => Request::Shutdown(Shutdown::Poweroff),
            ["reboot"] => Request::Shutdown(Shutdown::Reboot),
            ["halt"] => Request::Shutdown(Shutdown::Halt),
            #[cfg(feature = "test-hooks")]
            ["debug-panic"] => Request::DebugPanic,
            _ => {
                return Err(format!(
                    "bad request \"{}\": see initctl --help",
                    words.join(" ")
                ))
            }
        })
    }
}

/// What a render did to one service's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeAction {
    Reload,
    Restart,
}

impl ChangeAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeAction::Reload => "reload",
            ChangeAction::Restart => "restart",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServiceChange {
    pub name: String,
    pub action: ChangeAction,
}

/// The change set: files written, and what each service must do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChangeSet {
    #[serde(default)]
    pub written: Vec<String>,
    #[serde(default)]
    pub services: Vec<ServiceChange>,
    /// Every service the model disables (`enabled` no); `None` from a
    /// renderer that does not say, which changes nothing.
    #[serde(default)]
    pub disabled: Option<Vec<String>>,
    /// Per service, the model's values of the keys its `{KEY}` fields name.
    #[serde(default)]
    pub values: BTreeMap<String, BTreeMap<String, String>>,
}

pub fn parse_change_set(text: &str) -> Result<ChangeSet, String> {
    serde_json::from_str(text.trim()).map_err(|error| error.to_string())
}

/// One object of `initctl status --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStatus<'a> {
    pub name: &'a str,
    pub state: &'static str,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub wanted: bool,
    /// The model's key `enabled` (false: the service does not run).
    pub enabled: bool,
    pub in_mode: bool,
    pub exit: Option<String>,
    pub reason: Option<&'a str>,
    pub backoff_ms: u128,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_of_the_usage_parses_and_nothing_else() {
        assert_eq!(
            Request::parse(&["stop", "web"]),
            Ok(Request::Stop("web".to_string()))
        );
        assert_eq!(
            Request::parse(&["status", "--json"]),
            Ok(Request::Status { json: true })
        );
        assert_eq!(Request::parse(&["load"]), Ok(Request::Load(None)));
        assert_eq!(
            Request::parse(&["render", "--applied"]),
            Ok(Request::RenderApplied)
        );
        assert_eq!(
            Request::parse(&["reboot"]),
            Ok(Request::Shutdown(Shutdown::Reboot))
        );
        for bad in [
            &[][..],
            &["stop"][..],
            &["stop", "a", "b"][..],
            &["render", "x"][..],
            &["frobnicate"][..],
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn change_set_from_the_architecture_parses() {
        let text = r#"{"written": ["/etc/nginx/sites-enabled/default"],
 "services": [{"name": "web", "action": "reload"}],
 "disabled": ["standby"], "values": {"web": {"port": "8080"}}}"#;
        assert_eq!(
            parse_change_set(text),
            Ok(ChangeSet {
                written: vec!["/etc/nginx/sites-enabled/default".to_string()],
                services: vec![ServiceChange {
                    name: "web".to_string(),
                    action: ChangeAction::Reload
                }],
                disabled: Some(vec!["standby".to_string()]),
                values: BTreeMap::from([(
                    "web".to_string(),
                    BTreeMap::from([("port".to_string(), "8080".to_string())])
                )]),
            })
        );
        // A renderer that says nothing about them changes nothing.
        let older = parse_change_set(r#"{"written": [], "services": []}"#);
        assert_eq!(older.map(|change_set| change_set.disabled), Ok(None));
    }

    #[test]
    fn bad_json_is_an_error() {
        assert!(parse_change_set("{\"services\": [").is_err());
        assert!(
            parse_change_set("{\"services\": [{\"name\": \"a\", \"action\": \"kick\"}]}").is_err()
        );
        assert!(parse_change_set("{\"services\": [{\"action\": \"reload\"}]}").is_err());
    }
}
