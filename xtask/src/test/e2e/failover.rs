//! The failover pair: two appliances of the failover-test profile (the
//! failover profile plus the test agent) on a private link, keepalived
//! deciding which one is active. One boot of the pair serves every check,
//! each a step; the power-off comes last because it ends one machine.
//! `cargo xtask bench --only failover` reuses `Pair` for the figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use super::{check_mode_services, model_text, model_value, READY_TIMEOUT};
use crate::boot::BuiltImage;
use crate::qemu::{Accel, Link, Vm};

/// The image profile of the pair.
pub const PROFILE: &str = "failover-test";
/// The nodes' server ids (models/default.xml).
pub const SERVERS: [&str; 2] = ["fo1", "fo2"];
/// The link's id in both machines (their eth1).
const LINK: &str = "link0";
/// An election, a takeover, a mode switch: seconds under TCG, minutes never.
const ROLE_TIMEOUT: Duration = Duration::from_secs(90);
const CLIENT_LOG: &str = "/run/nodows-client.log";

/// What a node says about itself: VRRP state, nodows mode, whether it holds the VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub vrrp: String,
    pub mode: String,
    pub has_vip: bool,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let vip = if self.has_vip { "with" } else { "without" };
        write!(f, "{} in mode {} {vip} the VIP", self.vrrp, self.mode)
    }
}

pub struct Node {
    pub server: String,
    pub vm: Vm,
}

pub struct Pair {
    /// A node is None once it was powered off.
    pub nodes: Vec<Option<Node>>,
    pub vip: String,
    links: Vec<Link>,
    image: BuiltImage,
    work_root: std::path::PathBuf,
    accel: Accel,
}

/// The virtual address of the model's first VRRP instance, without prefix.
pub fn model_vip() -> anyhow::Result<String> {
    let model = model_text()?;
    let instance = model_value(&model, "keepalived", "instances", "failover", None)
        .context("models/default.xml has no keepalived instances")?;
    let instance = instance
        .split_whitespace()
        .next()
        .context("keepalived instances is empty")?;
    let addresses = model_value(
        &model,
        "keepalived",
        &format!("{instance}.virtual_addresses"),
        "failover",
        None,
    )
    .with_context(|| format!("models/default.xml has no {instance}.virtual_addresses"))?;
    let first = addresses.split_whitespace().next().unwrap_or_default();
    Ok(first.split('/').next().unwrap_or_default().to_string())
}

impl Pair {
    /// Boots both nodes on one link and waits for both to be ready.
    pub fn start(
        image: &BuiltImage,
        work_root: &Path,
        accel: Accel,
        name: &str,
    ) -> anyhow::Result<Pair> {
        let (first, second) = Link::pair(LINK, 0)?;
        let mut pair = Pair {
            nodes: Vec::new(),
            vip: model_vip()?,
            links: vec![first, second],
            image: image.clone(),
            work_root: work_root.to_path_buf(),
            accel,
        };
        for (index, server) in SERVERS.iter().enumerate() {
            let node = pair.boot(index, &format!("{name}-{server}"))?;
            pair.nodes.push(Some(node));
        }
        for node in pair.nodes.iter_mut().flatten() {
            node.vm.wait_for_ready(READY_TIMEOUT)?;
        }
        Ok(pair)
    }

    fn boot(&self, index: usize, name: &str) -> anyhow::Result<Node> {
        let server = SERVERS[index];
        let mut config = self.image.config(
            name,
            false,
            &format!("nodows.server={server}"),
            &self.work_root,
        );
        config.accel = self.accel;
        config.links = vec![self.links[index].clone()];
        Ok(Node {
            server: server.to_string(),
            vm: Vm::start(&config)?,
        })
    }

    /// Boots node `index` again (a fresh disk) after it was powered off;
    /// waits for its ready line. A boot that does not get there (a kernel
    /// under TCG on a starved host may panic in its timer check) is tried
    /// once more, saying so.
    pub fn restart(&mut self, index: usize, name: &str) -> anyhow::Result<()> {
        let mut node = self.boot(index, name)?;
        if let Err(error) = node.vm.wait_for_ready(READY_TIMEOUT) {
            let first = format!("{error:#}");
            let line = first.lines().next().unwrap_or_default();
            eprintln!("    {name} did not boot ({line}); booting it again");
            drop(node);
            node = self.boot(index, &format!("{name}-again"))?;
            node.vm.wait_for_ready(READY_TIMEOUT)?;
        }
        self.nodes[index] = Some(node);
        Ok(())
    }

    pub fn node(&mut self, index: usize) -> anyhow::Result<&mut Node> {
        self.nodes[index]
            .as_mut()
            .with_context(|| format!("{} was powered off", SERVERS[index]))
    }

    pub fn role(&mut self, index: usize) -> anyhow::Result<Role> {
        let vip = self.vip.clone();
        let node = self.node(index)?;
        let output = node.vm.succeed(&format!(
            "printf '%s %s %s\\n' \"$(cat /run/nodows/vrrp-state 2>/dev/null || echo NONE)\" \"$(initctl mode)\" \"$(ip -o -4 address show dev eth1 | grep -c ' {vip}/')\""
        ))?;
        let words: Vec<&str> = output.split_whitespace().collect();
        match words.as_slice() {
            [vrrp, mode, count] => Ok(Role {
                vrrp: vrrp.to_string(),
                mode: mode.to_string(),
                has_vip: *count != "0",
            }),
            _ => bail!("{}: unexpected role line `{output}`", node.server),
        }
    }

    fn roles(&mut self) -> anyhow::Result<BTreeMap<usize, Role>> {
        let mut roles = BTreeMap::new();
        for index in 0..self.nodes.len() {
            if self.nodes[index].is_some() {
                roles.insert(index, self.role(index)?);
            }
        }
        Ok(roles)
    }

    /// Waits until `accept` says yes to the live nodes' roles; returns them.
    pub fn wait_for_roles(
        &mut self,
        what: &str,
        timeout: Duration,
        accept: impl Fn(&BTreeMap<usize, Role>) -> bool,
    ) -> anyhow::Result<BTreeMap<usize, Role>> {
        let deadline = Instant::now() + timeout;
        loop {
            let roles = self.roles()?;
            if accept(&roles) {
                return Ok(roles);
            }
            if Instant::now() >= deadline {
                let mut text = String::new();
                for (index, role) in &roles {
                    let _ = write!(text, "\n  {}: {role}", SERVERS[*index]);
                }
                let node = self.nodes.iter().flatten().next().context("no node left")?;
                return Err(node.vm.failure(&format!(
                    "timed out after {}s waiting for {what}; the nodes are:{text}",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits for exactly one MASTER (active mode, the VIP) and every other
    /// node BACKUP in the backup mode without it; returns (master, backup).
    pub fn wait_for_one_master(&mut self, timeout: Duration) -> anyhow::Result<(usize, usize)> {
        let roles = self.wait_for_roles(
            "exactly one MASTER with the VIP in mode failover, the other BACKUP in mode backup",
            timeout,
            |roles| {
                let masters = roles.values().filter(|role| is_active(role)).count();
                let backups = roles
                    .values()
                    .filter(|role| is_standby(role, "BACKUP"))
                    .count();
                masters == 1 && backups + 1 == roles.len()
            },
        )?;
        let master = *roles
            .iter()
            .find(|(_, role)| is_active(role))
            .map(|(index, _)| index)
            .context("no master")?;
        let backup = *roles
            .keys()
            .find(|index| **index != master)
            .context("no backup")?;
        Ok((master, backup))
    }

    /// Starts the client loop in node `index`: a GET of the VIP every 0.1 s,
    /// one line per request in /run/nodows-client.log (`TIME ok SERVER
    /// mode=MODE` or `TIME fail`; TIME is when the request ended, by the
    /// node's clock; a request gives up after 1 s). Replaces a loop started
    /// before.
    pub fn start_client(&mut self, index: usize) -> anyhow::Result<()> {
        let vip = self.vip.clone();
        let node = self.node(index)?;
        node.vm.succeed(&format!(
            "{}; printf '{}' > /run/nodows-client.sh && : > {CLIENT_LOG} && {{ nohup bash /run/nodows-client.sh {vip} >> {CLIENT_LOG} 2>&1 & }}",
            "if [ -e /run/nodows-client.pid ]; then kill $(cat /run/nodows-client.pid) 2>/dev/null; fi",
            printf_octal(CLIENT_SCRIPT),
        ))?;
        Ok(())
    }

    /// The client's log lines in node `index`.
    pub fn client_log(&mut self, index: usize) -> anyhow::Result<Vec<ClientLine>> {
        let node = self.node(index)?;
        let text = node.vm.succeed(&format!("cat {CLIENT_LOG}"))?;
        Ok(text.lines().filter_map(ClientLine::parse).collect())
    }

    /// Waits until the client in `index` got `count` answers in a row from `server`.
    pub fn wait_for_client_answers(
        &mut self,
        index: usize,
        server: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ClientLine>> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.client_log(index)?;
            let tail = &lines[lines.len().saturating_sub(count)..];
            if tail.len() == count
                && tail
                    .iter()
                    .all(|line| line.server.as_deref() == Some(server))
            {
                return Ok(lines);
            }
            if Instant::now() >= deadline {
                let last: Vec<String> = tail.iter().map(|line| line.text.clone()).collect();
                let node = self.node(index)?;
                return Err(node.vm.failure(&format!(
                    "the client did not get {count} answers in a row from {server} on the VIP within {}s; last lines:\n{}",
                    timeout.as_secs(),
                    last.join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The node's clock (seconds since the epoch, as the client logs them).
    pub fn clock(&mut self, index: usize) -> anyhow::Result<f64> {
        let node = self.node(index)?;
        let text = node.vm.succeed("date +%s.%N")?;
        text.trim()
            .parse()
            .with_context(|| format!("date printed `{text}`"))
    }

    /// Powers node `index` off abruptly (QEMU killed, as a power loss).
    pub fn crash(&mut self, index: usize) -> anyhow::Result<()> {
        let mut node = self.nodes[index]
            .take()
            .with_context(|| format!("{} was powered off already", SERVERS[index]))?;
        node.vm.crash();
        Ok(())
    }

    /// Sets `key` of service keepalived in both nodes' models and re-renders
    /// (keepalived reloads its configuration).
    pub fn set_keepalived_key(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        for node in self.nodes.iter_mut().flatten() {
            // Replaced where the model sets it, else added to every keepalived layer.
            node.vm.succeed(&format!(
                "if grep -q '<key name=\"{key}\">' /etc/nodows/model.xml; \
                 then sed -i 's|<key name=\"{key}\">[^<]*</key>|<key name=\"{key}\">{value}</key>|g' /etc/nodows/model.xml; \
                 else sed -i 's|<service name=\"keepalived\">|&<key name=\"{key}\">{value}</key>|' /etc/nodows/model.xml; fi \
                 && grep -q '<key name=\"{key}\">{value}</key>' /etc/nodows/model.xml && initctl render"
            ))?;
        }
        Ok(())
    }
}

fn is_active(role: &Role) -> bool {
    role.vrrp == "MASTER" && role.mode == "failover" && role.has_vip
}

fn is_standby(role: &Role, vrrp: &str) -> bool {
    role.vrrp == vrrp && role.mode == "backup" && !role.has_vip
}

/// One request of the client loop.
#[derive(Clone, Debug)]
pub struct ClientLine {
    pub time: f64,
    /// The server whose active page answered; None for a failed request or
    /// the standby page.
    pub server: Option<String>,
    pub mode: Option<String>,
    pub text: String,
}

impl ClientLine {
    fn parse(line: &str) -> Option<ClientLine> {
        let mut words = line.split_whitespace();
        let time: f64 = words.next()?.parse().ok()?;
        let (server, mode) = match words.next()? {
            "ok" => (
                words.next().map(str::to_string),
                words
                    .next()
                    .and_then(|word| word.strip_prefix("mode="))
                    .map(str::to_string),
            ),
            _ => (None, None),
        };
        Some(ClientLine {
            time,
            server,
            mode,
            text: line.to_string(),
        })
    }
}

/// What a takeover cost the client: from `mark` (just before the power-off)
/// to the first answer from `server`, and the requests that failed meanwhile.
#[derive(Clone, Copy, Debug)]
pub struct Takeover {
    pub seconds: f64,
    pub failed_requests: usize,
}

/// The failed requests are those after the old MASTER's last answer.
pub fn takeover(lines: &[ClientLine], mark: f64, server: &str) -> Option<Takeover> {
    let first = lines
        .iter()
        .position(|line| line.time >= mark && line.server.as_deref() == Some(server))?;
    let last_before = lines[..first]
        .iter()
        .rposition(|line| line.server.is_some())
        .map_or(0, |index| index + 1);
    Some(Takeover {
        seconds: lines[first].time - mark,
        failed_requests: lines[last_before..first]
            .iter()
            .filter(|line| line.server.is_none())
            .count(),
    })
}

/// The client loop (bash for /dev/tcp; the image has no HTTP client).
const CLIENT_SCRIPT: &str = r#"#!/bin/bash
# nodows e2e client: GET http://VIP/ every 0.1 s, one line per request when
# it ended: "TIME ok SERVER mode=MODE" (the active page's server= and mode=),
# "TIME standby" (the standby page: not the service the VIP is for) or
# "TIME fail".
echo $$ > /run/nodows-client.pid
vip=$1
while :; do
    page=$(timeout 1 bash -c 'exec 3<>"/dev/tcp/$0/80" && printf "GET / HTTP/1.0\r\nHost: vip\r\n\r\n" >&3 && cat <&3' "$vip" 2>/dev/null)
    t=$(date +%s.%N)
    case $page in
        *"<h1>standby</h1>"*) echo "$t standby" ;;
        *" 200 OK"*"server="*) rest=${page#*server=}; echo "$t ok ${rest%%<*}" ;;
        *) echo "$t fail" ;;
    esac
    sleep 0.1
done
"#;

/// `text` as a printf format of octal escapes (no quoting problems in the
/// agent's one-line command).
fn printf_octal(text: &str) -> String {
    text.bytes().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "\\{byte:03o}");
        out
    })
}

/// The steps of the pair, in the order of the issue's list.
pub fn run(
    runner: &mut super::Runner,
    image: anyhow::Result<BuiltImage>,
    work_root: &Path,
    accel: Accel,
) {
    let mut pair: Option<Pair> = None;
    let mut image = Some(image);
    runner.step(
        "e2e 9 failover pair: two nodes boot, exactly one MASTER owns the VIP, the other is in backup mode",
        || {
            let image = image.take().context("no image")??;
            let mut started = Pair::start(&image, work_root, accel, "pair")?;
            let began = Instant::now();
            let (master, backup) = started.wait_for_one_master(ROLE_TIMEOUT)?;
            eprintln!(
                "    {} is MASTER, {} BACKUP ({:.1}s after both were ready)",
                SERVERS[master],
                SERVERS[backup],
                began.elapsed().as_secs_f64()
            );
            check_mode_services(&mut started.node(master)?.vm, "failover")?;
            check_mode_services(&mut started.node(backup)?.vm, "backup")?;
            pair = Some(started);
            Ok(())
        },
    );
    runner.step(
        "e2e 9 failover pair: a client in the BACKUP gets the active page on the VIP",
        || {
            let pair = pair.as_mut().context("no pair: an earlier step failed")?;
            let (master, backup) = pair.wait_for_one_master(ROLE_TIMEOUT)?;
            pair.start_client(backup)?;
            let lines =
                pair.wait_for_client_answers(backup, SERVERS[master], 5, ROLE_TIMEOUT)?;
            let last = lines.last().context("no answer")?;
            ensure!(
                last.mode.as_deref() == Some("failover"),
                "the VIP answered from mode {:?}, not the active mode: {}",
                last.mode,
                last.text
            );
            // The page itself is the active one: the model's title for the mode.
            let model = model_text()?;
            let title = model_value(&model, "web", "title", "failover", Some(SERVERS[master]))
                .context("no web title for mode failover")?;
            let vip = pair.vip.clone();
            let page = pair.node(backup)?.vm.wait_until_succeeds(&format!(
                "timeout 5 bash -c 'exec 3<>/dev/tcp/{vip}/80 && printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3 && cat <&3'"
            ), Duration::from_secs(30))?;
            ensure!(
                page.contains(&title),
                "the page on the VIP has not the active title `{title}`:\n{page}"
            );
            Ok(())
        },
    );
    runner.step(
        "e2e 9 failover pair: the MASTER's web crash-loops into failed: it demotes, the peer takes over; it rejoins as BACKUP without a second takeover",
        || {
            let pair = pair.as_mut().context("no pair: an earlier step failed")?;
            check_health_demotes(pair)
        },
    );
    runner.step(
        "e2e 9 failover pair: a cut link makes both MASTER; restored, one MASTER remains and the other is back in backup mode",
        || {
            let pair = pair.as_mut().context("no pair: an earlier step failed")?;
            check_partition_heals(pair)
        },
    );
    runner.step(
        "e2e 9 failover pair: power-off of the MASTER: the peer takes the VIP, switches mode and serves; requests lost and takeover time",
        || {
            let pair = pair.as_mut().context("no pair: an earlier step failed")?;
            let figures = power_off_master(pair)?.takeover;
            eprintln!(
                "    takeover {:.2}s (power-off to the first answer from the peer), {} requests failed",
                figures.seconds, figures.failed_requests
            );
            // A bound that catches a broken takeover, not a benchmark.
            ensure!(
                figures.seconds < 30.0,
                "the takeover took {:.1}s",
                figures.seconds
            );
            Ok(())
        },
    );
    drop(pair);
}

fn check_health_demotes(pair: &mut Pair) -> anyhow::Result<()> {
    let (master, backup) = pair.wait_for_one_master(ROLE_TIMEOUT)?;
    pair.start_client(backup)?;
    let backup_mark = pair.node(backup)?.vm.console_mark();
    let master_mark = pair.node(master)?.vm.console_mark();
    // nginx refuses a broken configuration at every start: a crash loop.
    let node = pair.node(master)?;
    let web = node.vm.wait_for_service("web", Duration::from_secs(60))?;
    let pid = web.pid.context("web has no pid")?;
    node.vm.succeed(&format!(
        "printf 'this is not nginx;\\n' > /etc/nginx/nginx.conf && kill -KILL {pid}"
    ))?;
    let roles = pair.wait_for_roles(
        "the broken node in FAULT and backup mode, its peer MASTER",
        ROLE_TIMEOUT,
        |roles| is_standby(&roles[&master], "FAULT") && is_active(&roles[&backup]),
    )?;
    eprintln!(
        "    {}: {}; {}: {}",
        SERVERS[master], roles[&master], SERVERS[backup], roles[&backup]
    );
    let node = pair.node(master)?;
    let (status, output) = node
        .vm
        .execute("initctl status web", Duration::from_secs(30))?;
    ensure!(
        status == 1 && output.contains("failed"),
        "web should be failed on the demoted node: `initctl status web` exited {status}: {output}"
    );
    pair.wait_for_client_answers(backup, SERVERS[backup], 3, ROLE_TIMEOUT)?;
    // The operator acknowledges (the mode switch re-rendered nginx.conf):
    // the node is healthy again and rejoins as BACKUP; nopreempt keeps the
    // peer MASTER.
    pair.node(master)?.vm.succeed("initctl stop web")?;
    pair.wait_for_roles(
        "the repaired node BACKUP in backup mode, its peer still MASTER",
        ROLE_TIMEOUT,
        |roles| is_standby(&roles[&master], "BACKUP") && is_active(&roles[&backup]),
    )?;
    // Several advertisement intervals and health checks later, still so.
    std::thread::sleep(Duration::from_secs(5));
    let roles = pair.roles()?;
    ensure!(
        is_standby(&roles[&master], "BACKUP") && is_active(&roles[&backup]),
        "a second takeover: {} is {}, {} is {}",
        SERVERS[master],
        roles[&master],
        SERVERS[backup],
        roles[&backup]
    );
    let became_master = |vm: &Vm, mark: usize| {
        let console = vm.console_text();
        console[mark.min(console.len())..]
            .matches("nodows: vrrp web MASTER")
            .count()
    };
    let peer_count = became_master(&pair.node(backup)?.vm, backup_mark);
    let repaired_count = became_master(&pair.node(master)?.vm, master_mark);
    ensure!(
        peer_count == 1 && repaired_count == 0,
        "expected one takeover: the peer became MASTER {peer_count} times, the repaired node {repaired_count} times"
    );
    check_mode_services(&mut pair.node(master)?.vm, "backup")?;
    Ok(())
}

fn check_partition_heals(pair: &mut Pair) -> anyhow::Result<()> {
    let (_, backup) = pair.wait_for_one_master(ROLE_TIMEOUT)?;
    pair.node(backup)?.vm.cut_link(LINK)?;
    pair.wait_for_roles(
        "both nodes MASTER with the VIP while the link is cut",
        ROLE_TIMEOUT,
        |roles| roles.values().all(is_active),
    )?;
    pair.node(backup)?.vm.restore_link(LINK)?;
    let restored = Instant::now();
    let (master, backup) = pair.wait_for_one_master(Duration::from_secs(30))?;
    eprintln!(
        "    one MASTER ({}) again {:.1}s after the link came back",
        SERVERS[master],
        restored.elapsed().as_secs_f64()
    );
    check_mode_services(&mut pair.node(backup)?.vm, "backup")?;
    check_mode_services(&mut pair.node(master)?.vm, "failover")?;
    Ok(())
}

/// What `power_off_master` did: which node died, which took over, and how
/// the client saw it.
pub struct PowerOff {
    pub master: usize,
    pub survivor: usize,
    pub takeover: Takeover,
}

/// Powers the MASTER off while a client in the BACKUP fetches the VIP; the
/// takeover as the client saw it.
pub fn power_off_master(pair: &mut Pair) -> anyhow::Result<PowerOff> {
    let (master, backup) = pair.wait_for_one_master(ROLE_TIMEOUT)?;
    pair.start_client(backup)?;
    pair.wait_for_client_answers(backup, SERVERS[master], 5, ROLE_TIMEOUT)?;
    let mark = pair.clock(backup)?;
    pair.crash(master)?;
    pair.wait_for_roles(
        "the survivor MASTER with the VIP in mode failover",
        ROLE_TIMEOUT,
        |roles| roles.get(&backup).is_some_and(is_active),
    )?;
    let lines = pair.wait_for_client_answers(backup, SERVERS[backup], 3, ROLE_TIMEOUT)?;
    let takeover = takeover(&lines, mark, SERVERS[backup])
        .context("no answer from the survivor after the power-off")?;
    Ok(PowerOff {
        master,
        survivor: backup,
        takeover,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_takeover_counts_from_the_mark_to_the_first_answer_of_the_survivor() {
        let log = "10.0 ok fo1 mode=failover\n10.2 ok fo1 mode=failover\n10.4 fail\n11.5 standby\n12.0 ok fo2 mode=failover\n12.1 ok fo2 mode=failover\n";
        let lines: Vec<ClientLine> = log.lines().filter_map(ClientLine::parse).collect();
        assert_eq!(lines[0].server.as_deref(), Some("fo1"));
        assert_eq!(lines[0].mode.as_deref(), Some("failover"));
        let figures = takeover(&lines, 10.3, "fo2").unwrap();
        assert!((figures.seconds - 1.7).abs() < 1e-9);
        assert_eq!(figures.failed_requests, 2);
        // A failure before the mark still counts: the request was in flight.
        let figures = takeover(&lines, 11.0, "fo2").unwrap();
        assert_eq!(figures.failed_requests, 2);
        assert!(takeover(&lines, 12.5, "fo2").is_none());
    }

    #[test]
    fn the_client_script_survives_the_agent_as_octal_escapes() {
        assert_eq!(printf_octal("a'\\\n"), "\\141\\047\\134\\012");
    }
}
