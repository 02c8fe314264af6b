//! A plain HTTP/1.0 GET whose body is read as a stream (no TLS: the
//! artifact's signature, not the transport, is what is trusted).

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use crate::{Error, Result};

/// Opens `http://HOST[:PORT]/PATH` and returns the body's reader.
pub fn get(url: &str) -> Result<Box<dyn Read>> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::Refused(format!("{url}: only http:// URLs are supported")))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let address = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let failed =
        |what: &str, error: std::io::Error| Error::System(format!("{url}: {what}: {error}"));
    let socket = address
        .to_socket_addrs()
        .map_err(|error| failed("cannot resolve the host", error))?
        .next()
        .ok_or_else(|| Error::System(format!("{url}: the host has no address")))?;
    let mut stream = TcpStream::connect_timeout(&socket, Duration::from_secs(30))
        .map_err(|error| failed("cannot connect", error))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|error| failed("socket", error))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: nodows-update\r\n\r\n"
    )
    .map_err(|error| failed("cannot send the request", error))?;
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .map_err(|error| failed("no response", error))?;
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(Error::System(format!(
            "{url}: the server answered `{}`",
            status.trim()
        )));
    }
    loop {
        let mut line = String::new();
        let count = reader
            .read_line(&mut line)
            .map_err(|error| failed("reading the headers", error))?;
        if count == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    Ok(Box::new(reader))
}
