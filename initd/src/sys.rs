//! The syscall seam: everything initd asks of the kernel that differs between
//! Linux and FreeBSD, behind one set of functions. Linux-only parts (mounts,
//! cgroups) live in `pid1` and `group` behind `cfg`.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

pub fn last_error() -> io::Error {
    io::Error::last_os_error()
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(last_error())
    } else {
        Ok(result)
    }
}

pub fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Become the reaper of every orphaned descendant.
#[cfg(target_os = "linux")]
pub fn set_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(|_| ())
}

#[cfg(target_os = "freebsd")]
pub fn set_subreaper() -> io::Result<()> {
    // SAFETY: procctl on our own pid with no data.
    check(unsafe {
        libc::procctl(
            libc::P_PID,
            libc::getpid() as libc::id_t,
            libc::PROC_REAP_ACQUIRE,
            std::ptr::null_mut(),
        )
    })
    .map(|_| ())
}

/// The uid of the process at the other end of a Unix socket.
#[cfg(target_os = "linux")]
pub fn peer_uid(fd: RawFd) -> io::Result<u32> {
    let mut credentials = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the buffer and its length are valid.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut length,
        )
    })?;
    Ok(credentials.uid)
}

#[cfg(target_os = "freebsd")]
pub fn peer_uid(fd: RawFd) -> io::Result<u32> {
    let mut uid: libc::uid_t = 0;
    let mut gid: libc::gid_t = 0;
    // SAFETY: both out pointers are valid.
    check(unsafe { libc::getpeereid(fd, &mut uid, &mut gid) })?;
    Ok(uid)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Poweroff,
    Reboot,
    Halt,
}

impl Shutdown {
    pub fn as_str(self) -> &'static str {
        match self {
            Shutdown::Poweroff => "poweroff",
            Shutdown::Reboot => "reboot",
            Shutdown::Halt => "halt",
        }
    }
}

/// reboot(2). Only returns on failure.
#[cfg(target_os = "linux")]
pub fn reboot(shutdown: Shutdown) -> io::Error {
    let command = match shutdown {
        Shutdown::Poweroff => libc::RB_POWER_OFF,
        Shutdown::Reboot => libc::RB_AUTOBOOT,
        Shutdown::Halt => libc::RB_HALT_SYSTEM,
    };
    // SAFETY: reboot with a valid command.
    unsafe { libc::reboot(command) };
    last_error()
}

#[cfg(target_os = "freebsd")]
pub fn reboot(shutdown: Shutdown) -> io::Error {
    let howto = match shutdown {
        Shutdown::Poweroff => libc::RB_POWEROFF,
        Shutdown::Reboot => 0, // RB_AUTOBOOT
        Shutdown::Halt => libc::RB_HALT,
    };
    // SAFETY: reboot with valid flags.
    unsafe { libc::reboot(howto) };
    last_error()
}

/// Ask the kernel to send SIGINT on ctrl-alt-del instead of rebooting.
/// Fails (EINVAL) inside a PID namespace: that is how initd tells a
/// container's PID 1 from the machine's.
#[cfg(target_os = "linux")]
pub fn disable_ctrl_alt_del() -> io::Result<()> {
    // SAFETY: reboot with a valid command.
    check(unsafe { libc::reboot(libc::RB_DISABLE_CAD) }).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
pub fn disable_ctrl_alt_del() -> io::Result<()> {
    Ok(())
}

pub fn sync() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill with plain integers.
    check(unsafe { libc::kill(pid, signal) }).map(|_| ())
}

/// A pipe, both ends close-on-exec and the read end non-blocking.
/// Raise initd's own open-file limit: the soft limit to the hard one, and
/// first the hard one to at least `hard_floor` when given (PID 1 of a
/// machine; needs CAP_SYS_RESOURCE, a failure keeps the old hard limit).
/// Returns (the soft limit before, the limit now): children get the soft
/// limit back (`spawn::Prepared::child_nofile`), as select(2)-era programs
/// expect.
// rlim_t is u64 on Linux and i64 on FreeBSD: the casts are needed there.
#[allow(clippy::unnecessary_cast)]
pub fn raise_nofile_limit(hard_floor: Option<u64>) -> io::Result<(u64, libc::rlimit)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the out pointer is valid.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    let before = limit.rlim_cur as u64;
    if let Some(floor) = hard_floor {
        if limit.rlim_max != libc::RLIM_INFINITY && (limit.rlim_max as u64) < floor {
            let raised = libc::rlimit {
                rlim_cur: floor as libc::rlim_t,
                rlim_max: floor as libc::rlim_t,
            };
            // SAFETY: a valid rlimit.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                return Ok((before, raised));
            }
        }
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: a valid rlimit (soft = hard is always allowed).
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) })?;
    Ok((before, limit))
}

pub fn pipe() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    set_nonblocking(fds[0])?;
    Ok((fds[0], fds[1]))
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(|_| ())
}

pub fn close(fd: RawFd) {
    // SAFETY: closing a descriptor we own.
    unsafe { libc::close(fd) };
}

/// Non-blocking read; Ok(0) is end of file, WouldBlock means nothing yet.
pub fn read(fd: RawFd, buffer: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid for its length.
    let count = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
    if count < 0 {
        Err(last_error())
    } else {
        Ok(count as usize)
    }
}

pub fn write_all(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: the buffer is valid for its length.
        let count = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if count < 0 {
            let error = last_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        bytes = &bytes[count as usize..];
    }
    Ok(())
}

/// One `waitpid(-1, WNOHANG)`: Some((pid, status)) or None when nothing
/// (more) has exited.
pub fn reap_one() -> Option<(i32, libc::c_int)> {
    let mut status: libc::c_int = 0;
    // SAFETY: status is a valid out pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid > 0 {
        Some((pid, status))
    } else {
        None
    }
}

/// The pid of a child that has ended, left a zombie (WNOWAIT): while it is
/// not reaped its pid, and so its process group number, cannot be reused.
#[cfg(target_os = "linux")]
pub fn peek_ended() -> Option<(i32, crate::supervisor::Exit)> {
    // SAFETY: a zeroed siginfo_t is a valid out buffer for waitid.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let result = libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        let pid = info.si_pid();
        if result != 0 || pid <= 0 {
            return None;
        }
        let status = info.si_status();
        let exit = if info.si_code == libc::CLD_EXITED {
            crate::supervisor::Exit::Code(status)
        } else {
            crate::supervisor::Exit::Signal(status)
        };
        Some((pid, exit))
    }
}

/// Reaps `pid` if it has ended.
#[cfg(target_os = "linux")]
pub fn reap_pid(pid: i32) -> Option<(i32, libc::c_int)> {
    let mut status: libc::c_int = 0;
    // SAFETY: status is a valid out pointer.
    let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (reaped == pid).then_some((pid, status))
}

pub fn decode_status(status: libc::c_int) -> crate::supervisor::Exit {
    if libc::WIFSIGNALED(status) {
        crate::supervisor::Exit::Signal(libc::WTERMSIG(status))
    } else {
        crate::supervisor::Exit::Code(libc::WEXITSTATUS(status))
    }
}

/// poll(2) over `fds`; `timeout_ms` < 0 waits forever.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: the slice is valid for its length.
    let count = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if count < 0 {
        Err(last_error())
    } else {
        Ok(count as usize)
    }
}

// --- signals: a self-pipe written by an async-signal-safe handler ---

static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write(2) is async-signal-safe; errno is saved and restored.
        unsafe {
            let saved = *errno_location();
            libc::write(fd, (&byte as *const u8).cast(), 1);
            *errno_location() = saved;
        }
    }
}

#[cfg(target_os = "linux")]
unsafe fn errno_location() -> *mut libc::c_int {
    libc::__errno_location()
}

#[cfg(target_os = "freebsd")]
unsafe fn errno_location() -> *mut libc::c_int {
    libc::__error()
}

/// The signals initd handles through the self-pipe.
pub fn handled_signals() -> Vec<i32> {
    vec![
        libc::SIGCHLD,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGUSR1,
        libc::SIGUSR2,
        #[cfg(target_os = "linux")]
        libc::SIGPWR,
    ]
}

/// Install the handlers; returns the read end of the self-pipe.
pub fn install_signal_handlers() -> io::Result<RawFd> {
    let (read_end, write_end) = pipe()?;
    set_nonblocking(write_end)?;
    SIGNAL_PIPE.store(write_end, std::sync::atomic::Ordering::Relaxed);
    for signal in handled_signals() {
        // SAFETY: a zeroed sigaction with our handler is valid.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            action.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
            libc::sigemptyset(&mut action.sa_mask);
            check(libc::sigaction(signal, &action, std::ptr::null_mut()))?;
        }
    }
    // SAFETY: ignoring SIGPIPE so that a closed client does not kill us.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(read_end)
}

/// Block or restore every signal (around fork).
pub fn block_all_signals() -> libc::sigset_t {
    // SAFETY: sigset_t values are initialised by sigfillset/sigprocmask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    }
}

pub fn restore_signals(old: &libc::sigset_t) {
    // SAFETY: old came from block_all_signals.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
}

pub fn cstring(text: &str) -> io::Result<CString> {
    CString::new(text)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in string"))
}

/// Try a TCP connect to 127.0.0.1:port (readiness).
pub fn tcp_ready(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        std::time::Duration::from_millis(200),
    )
    .is_ok()
}

/// Does a process exist (kill 0)?
pub fn alive(pid: i32) -> bool {
    pid > 0 && (kill(pid, 0).is_ok() || last_error().raw_os_error() == Some(libc::EPERM))
}

/// Resolve a user name (or number) to (uid, primary gid).
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    if let Ok(uid) = name.parse::<u32>() {
        return Some((uid, uid));
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == name {
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        } else {
            None
        }
    })
}

pub fn lookup_group(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 3 && fields[0] == name {
            fields[2].parse().ok()
        } else {
            None
        }
    })
}

/// Make sure fds 0, 1 and 2 are open (PID 1 may start without them), so
/// that no pipe of ours lands there.
pub fn ensure_standard_fds() {
    for fd in 0..3 {
        // SAFETY: fcntl F_GETFD only queries.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // SAFETY: open with a static NUL-terminated path.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: fcntl F_GETFD only queries.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

// --- kernel uevents (device events without udev) ---

/// A non-blocking socket that receives the kernel's uevents
/// (NETLINK_KOBJECT_UEVENT, multicast group 1: the kernel's, not udev's).
#[cfg(target_os = "linux")]
pub fn uevent_socket() -> io::Result<RawFd> {
    // SAFETY: plain socket(2).
    let fd = check(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_KOBJECT_UEVENT,
        )
    })?;
    // SAFETY: sockaddr_nl is plain data; zero is a valid start.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    address.nl_groups = 1;
    // SAFETY: the address is a valid sockaddr_nl of the given length.
    let bound = check(unsafe {
        libc::bind(
            fd,
            (&address as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    });
    if let Err(error) = bound {
        close(fd);
        return Err(error);
    }
    // A burst (many disks at once) must not overrun the queue: as root take
    // 1 MiB whatever rmem_max says; otherwise the default stays.
    let size: libc::c_int = 1 << 20;
    // SAFETY: setsockopt with an int option of its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Ok(fd)
}

/// FreeBSD reports devices through devd(8), not netlink.
#[cfg(target_os = "freebsd")]
pub fn uevent_socket() -> io::Result<RawFd> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "device events need Linux's uevent netlink socket",
    ))
}

/// One datagram of the uevent socket, or `Ok(None)` when it was not sent
/// by the kernel (a process may send to the group only as root, but only
/// the kernel's port id is 0). WouldBlock: nothing more queued.
#[cfg(target_os = "linux")]
pub fn receive_uevent(fd: RawFd, buffer: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: sockaddr_nl is plain data.
    let mut sender: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: buffer and sender are valid for their lengths.
    let count = unsafe {
        libc::recvfrom(
            fd,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            libc::MSG_DONTWAIT,
            (&mut sender as *mut libc::sockaddr_nl).cast(),
            &mut length,
        )
    };
    if count < 0 {
        return Err(last_error());
    }
    Ok((sender.nl_pid == 0).then_some(count as usize))
}

#[cfg(target_os = "freebsd")]
pub fn receive_uevent(_fd: RawFd, _buffer: &mut [u8]) -> io::Result<Option<usize>> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}
