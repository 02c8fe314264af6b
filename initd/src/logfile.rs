//! Per-service output: each service writes stdout and stderr into a pipe
//! that initd holds open for the service's whole life (across restarts);
//! initd appends what it reads to `<dir>/<name>.log` and rotates by size
//! (`<name>.log.1`, `<name>.log.2`; older output is dropped).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use crate::sys;

pub const KEEP: u32 = 2;

pub struct ServiceLog {
    pub read_fd: RawFd,
    pub write_fd: RawFd,
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
}

impl ServiceLog {
    pub fn open(dir: &Path, name: &str, max_bytes: u64) -> std::io::Result<ServiceLog> {
        let (read_fd, write_fd) = sys::pipe()?;
        let path = dir.join(format!("{name}.log"));
        let mut log = ServiceLog {
            read_fd,
            write_fd,
            path,
            file: None,
            size: 0,
            max_bytes,
        };
        log.reopen();
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reopen(&mut self) {
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.size = self
            .file
            .as_ref()
            .and_then(|file| file.metadata().ok())
            .map(|metadata| metadata.len())
            .unwrap_or(0);
    }

    fn rotate(&mut self) {
        self.file = None;
        for index in (1..KEEP).rev() {
            let from = rotated(&self.path, index);
            let to = rotated(&self.path, index + 1);
            let _ = std::fs::rename(from, to);
        }
        let _ = std::fs::rename(&self.path, rotated(&self.path, 1));
        self.reopen();
    }

    /// Read what is in the pipe and append it.
    pub fn drain(&mut self) {
        let mut buffer = [0u8; 16384];
        loop {
            match sys::read(self.read_fd, &mut buffer) {
                Ok(0) => return,
                Ok(count) => self.append(&buffer[..count]),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    pub fn append(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.file.is_none() {
                self.reopen();
            }
            let room = self.max_bytes.saturating_sub(self.size).max(1) as usize;
            let take = room.min(bytes.len());
            if let Some(file) = self.file.as_mut() {
                let _ = file.write_all(&bytes[..take]);
            }
            self.size += take as u64;
            bytes = &bytes[take..];
            if self.size >= self.max_bytes {
                self.rotate();
            }
        }
    }
}

impl Drop for ServiceLog {
    fn drop(&mut self) {
        sys::close(self.read_fd);
        sys::close(self.write_fd);
    }
}

pub fn rotated(path: &Path, index: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}
