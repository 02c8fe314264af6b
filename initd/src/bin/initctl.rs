//! `initctl`: talks to initd over its control socket.
//! Exit codes: 0 success, 1 failure, 2 bad input or usage.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

const USAGE: &str = "usage: initctl [--socket PATH] COMMAND
commands:
  status [--json | NAME]   (NAME: exit 1 when it is failed)
  start|stop|restart|reload|check|configure|log NAME
  load [NAME]
  emit EVENT
  mode [MODE]
  render [--applied]        (--applied: act on a watcher's in-process apply)
  blame | critical-chain   (boot time by service, from initd's clock)
  poweroff|reboot|halt";

fn usage_error(message: &str) -> ! {
    eprintln!("initctl: {message}\n{USAGE}");
    std::process::exit(2)
}

fn main() {
    let mut arguments: Vec<String> = std::env::args().skip(1).collect();
    let mut socket = initd::DEFAULT_SOCKET.to_string();
    if arguments.first().map(String::as_str) == Some("--socket") {
        match arguments.get(1) {
            Some(path) => socket = path.clone(),
            None => usage_error("--socket needs a path"),
        }
        arguments.drain(..2);
    }
    if arguments.first().map(String::as_str) == Some("--help") {
        println!("{USAGE}");
        return;
    }
    let words: Vec<&str> = arguments.iter().map(String::as_str).collect();
    // The same parser as initd's: a request initd would refuse is a usage
    // error here, before connecting.
    if let Err(problem) = initd::protocol::Request::parse(&words) {
        usage_error(&problem);
    }
    if words
        .iter()
        .any(|word| word.chars().any(char::is_whitespace) || word.is_empty())
    {
        usage_error("arguments cannot contain white space");
    }
    let mut stream = match UnixStream::connect(&socket) {
        Ok(stream) => stream,
        Err(error) => {
            eprintln!(
                "initctl: cannot connect to {socket}: {error}: is initd running, and are you root?"
            );
            std::process::exit(1)
        }
    };
    // initd may refuse a peer before reading its request and close: the
    // write then fails, but the refusal is there to read.
    let written = stream.write_all(format!("{}\n", words.join(" ")).as_bytes());
    let mut reply = String::new();
    let read = stream.read_to_string(&mut reply);
    if reply.is_empty() {
        if let Err(error) = written.and(read) {
            eprintln!("initctl: {socket}: {error}");
            std::process::exit(1)
        }
    }
    let (first, body) = reply.split_once('\n').unwrap_or((reply.as_str(), ""));
    let code = first
        .strip_prefix("exit ")
        .and_then(|code| code.trim().parse::<i32>().ok())
        .unwrap_or(1);
    if code == 0 {
        print!("{body}");
    } else {
        eprint!("initctl: {body}");
    }
    std::process::exit(code)
}
