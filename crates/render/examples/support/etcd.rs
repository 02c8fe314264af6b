//! The path a confd user would build, measured by the fleet benchmark
//! beside PostgreSQL: the appliance's model in etcd (Debian's etcd-server
//! 3.4, started for the run on 127.0.0.1), and `etcdctl watch KEY --
//! COMMAND` running, on every change, `etcdctl get` (the event's
//! `ETCD_WATCH_VALUE` is Go-quoted, not the bytes) and the same `nodows
//! render`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Puts `value` at `key` through etcd's JSON gateway (`/v3/kv/put`), as a
/// client with an open connection would: one HTTP request.
fn put(port: u16, key: &str, value: &str) -> Result<(), String> {
    use base64::Engine;
    let base64 = base64::engine::general_purpose::STANDARD;
    let body = format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        base64.encode(key),
        base64.encode(value)
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    write!(
        stream,
        "POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    match response.starts_with("HTTP/1.1 200") {
        true => Ok(()),
        false => Err(response.lines().next().unwrap_or("no answer").to_string()),
    }
}

/// Waits until `path` contains `text`.
fn wait_for(path: &Path, text: &str, timeout: Duration) -> Result<(), String> {
    let started = Instant::now();
    while !std::fs::read_to_string(path).is_ok_and(|content| content.contains(text)) {
        if started.elapsed() > timeout {
            return Err(format!("{}: no {text:?} after {timeout:?}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// 20 changes of `server`'s title put into etcd, each timed until the
/// rendered page shows it; ms. `render` renders `dir/model.xml` into
/// `dir/root`.
pub fn commit_to_applied(
    dir: &Path,
    model: &model::Model,
    server: &str,
    render: &str,
) -> Result<Vec<f64>, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("root")).map_err(|e| e.to_string())?;
    let (client, peer) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| e.to_string())?;
    let _etcd = Killed(
        Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--name", "bench", "--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run etcd ({e}); install etcd-server"))?,
    );
    let key = format!("/nodows/{server}/model");
    let model_file = dir.join("model.xml");
    let script = format!(
        "ETCDCTL_API=3 etcdctl --endpoints {client_url} get --print-value-only {key} > {} && {render} > /dev/null 2>> {}",
        model_file.display(),
        dir.join("render.log").display()
    );
    let _watch = Killed(
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &client_url,
                "watch",
                &key,
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("watch.log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot run etcdctl ({e}); install etcd-client"))?,
    );
    let page = dir.join("root/var/www/html/index.html");
    let mut model = model.clone();
    let mut set_title = |title: &str| -> Result<String, String> {
        let keys = model.servers.entry(server.to_string()).or_default();
        keys.entry("web".to_string())
            .or_default()
            .set("title", title.to_string(), String::new());
        Ok(render::fleet::slice(&model, server)?.to_model_xml())
    };
    // Until etcd answers and the watch is in place: put, wait, again.
    let first = set_title("etcd first")?;
    let started = Instant::now();
    while put(client, &key, &first).is_err()
        || wait_for(&page, "etcd first", Duration::from_secs(1)).is_err()
    {
        if started.elapsed() > Duration::from_secs(30) {
            let log = std::fs::read_to_string(dir.join("watch.log")).unwrap_or_default()
                + &std::fs::read_to_string(dir.join("render.log")).unwrap_or_default();
            return Err(format!(
                "etcd or its watch did not come up (the last put: {:?}; the watch's last words: {})",
                put(client, &key, &first),
                log.lines().last().unwrap_or("none")
            ));
        }
    }
    let mut latencies = Vec::new();
    for round in 0..20 {
        let title = format!("etcd round {round}");
        let text = set_title(&title)?;
        let started = Instant::now();
        put(client, &key, &text)?;
        wait_for(&page, &title, Duration::from_secs(30))?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(latencies)
}
