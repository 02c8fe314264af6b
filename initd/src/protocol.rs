//! The JSON initd reads and writes, through serde: the renderer's change
//! set (ARCHITECTURE.md, `nodows render --json`) and `initctl status --json`.

use serde::{Deserialize, Serialize};

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
    pub in_mode: bool,
    pub exit: Option<String>,
    pub reason: Option<&'a str>,
    pub backoff_ms: u128,
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
                services: vec![ServiceChange {
                    name: "web".to_string(),
                    action: ChangeAction::Reload
                }]
            })
        );
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
