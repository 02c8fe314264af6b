//! A static file server over HTTP/1.0 on 127.0.0.1, which a guest on
//! QEMU's user network reaches as 10.0.2.2 (the update artifacts of the
//! tests and the benchmark).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::Path;

use anyhow::Context as _;

/// Serves files under a directory over HTTP/1.0 on 127.0.0.1 (the guest's 10.0.2.2).
pub struct FileServer {
    pub port: u16,
}

impl FileServer {
    /// Serves `root` until the process ends.
    pub fn start(root: &Path) -> anyhow::Result<FileServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let root = root.clone();
                std::thread::spawn(move || {
                    let _ = serve(&root, stream);
                });
            }
        });
        Ok(FileServer { port })
    }
}

fn serve(root: &Path, stream: std::net::TcpStream) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut stream = stream;
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let file = (!path.contains(".."))
        .then(|| root.join(path.trim_start_matches('/')))
        .and_then(|file| std::fs::File::open(file).ok());
    match file {
        Some(mut file) => {
            let length = file.metadata()?.len();
            write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {length}\r\nContent-Type: application/octet-stream\r\n\r\n")?;
            std::io::copy(&mut file, &mut stream)?;
        }
        None => write!(
            stream,
            "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        )?,
    }
    Ok(())
}
