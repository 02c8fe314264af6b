//! fork and exec. Everything the child needs is prepared in the parent
//! (`Prepared`); between fork and exec the child only makes
//! async-signal-safe calls (sigaction, sigprocmask, setsid, open, write,
//! dup2, fcntl, umask, setrlimit, chdir, setgroups, setgid, setuid, execve,
//! _exit) and touches no allocator or lock.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

use servicedef::ServiceDefinition;

use crate::sys;

/// A spawn ready to run: C strings and numbers only.
pub struct Prepared {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    workdir: Option<CString>,
    cgroup_procs: Option<CString>,
    umask: Option<libc::mode_t>,
    rlimits: Vec<(libc::c_int, libc::rlimit)>,
    ids: Option<(libc::uid_t, libc::gid_t)>,
    /// Where stdout and stderr go.
    pub output_fd: RawFd,
    /// (write end, fd number in the child) for notify readiness.
    pub notify: Option<(RawFd, RawFd)>,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment every child of initd starts from (services and the
/// renderer): never initd's own, which as PID 1 holds whatever unknown
/// `KEY=value` words the kernel command line had. `passed` names variables
/// of initd's environment to hand on (`--pass-env NAME`); a service's
/// `<env>` and initd's own variables (the group marker, `NOTIFY_FD`) come
/// on top of this in `prepare`.
pub fn defined_environment(passed: &[String]) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        ("HOME".to_string(), "/".to_string()),
        ("TERM".to_string(), "linux".to_string()),
    ];
    for name in passed {
        if let Some(value) = std::env::var_os(name) {
            env.retain(|(existing, _)| existing != name);
            env.push((name.clone(), value.to_string_lossy().into_owned()));
        }
    }
    env
}

pub fn prepare(
    definition: &ServiceDefinition,
    base_env: &[(String, String)],
    output_fd: RawFd,
    notify: Option<(RawFd, RawFd)>,
    cgroup_procs: Option<CString>,
) -> io::Result<Prepared> {
    let path = sys::cstring(&definition.exec.path.to_string_lossy())?;
    let mut argv = vec![path.clone()];
    for argument in &definition.exec.args {
        argv.push(sys::cstring(argument)?);
    }
    let mut env: Vec<(String, String)> = base_env
        .iter()
        .filter(|(key, _)| key != crate::group::MARKER)
        .cloned()
        .collect();
    for (key, value) in &definition.env {
        env.retain(|(existing, _)| existing != key);
        env.push((key.clone(), value.clone()));
    }
    env.push((crate::group::MARKER.to_string(), definition.name.clone()));
    if let Some((_, child_fd)) = notify {
        env.push(("NOTIFY_FD".to_string(), child_fd.to_string()));
    }
    let envp = env
        .iter()
        .map(|(key, value)| sys::cstring(&format!("{key}={value}")))
        .collect::<io::Result<Vec<_>>>()?;
    let workdir = match &definition.workdir {
        Some(workdir) => Some(sys::cstring(&workdir.to_string_lossy())?),
        None => None,
    };
    let ids = match &definition.user {
        Some(user) => {
            let (uid, mut gid) = sys::lookup_user(user).ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("unknown user {user}"))
            })?;
            if let Some(group) = &definition.group {
                gid = sys::lookup_group(group).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("unknown group {group}"))
                })?;
            }
            Some((uid, gid))
        }
        None => match &definition.group {
            Some(group) => {
                let gid = sys::lookup_group(group).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("unknown group {group}"))
                })?;
                Some((sys::geteuid(), gid))
            }
            None => None,
        },
    };
    let mut rlimits = Vec::new();
    for (name, soft, hard) in &definition.rlimits {
        let resource = rlimit_resource(name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown rlimit {name}"),
            )
        })?;
        let convert = |value: u64| {
            if value == u64::MAX {
                libc::RLIM_INFINITY
            } else {
                value as libc::rlim_t
            }
        };
        rlimits.push((
            resource as libc::c_int,
            libc::rlimit {
                rlim_cur: convert(*soft),
                rlim_max: convert(*hard),
            },
        ));
    }
    Ok(Prepared {
        path,
        argv,
        envp,
        workdir,
        cgroup_procs,
        umask: definition.umask.map(|umask| umask as libc::mode_t),
        rlimits,
        ids,
        output_fd,
        notify,
    })
}

fn rlimit_resource(name: &str) -> Option<i32> {
    Some(match name {
        "core" => libc::RLIMIT_CORE as i32,
        "cpu" => libc::RLIMIT_CPU as i32,
        "data" => libc::RLIMIT_DATA as i32,
        "fsize" => libc::RLIMIT_FSIZE as i32,
        "nofile" => libc::RLIMIT_NOFILE as i32,
        "nproc" => libc::RLIMIT_NPROC as i32,
        "stack" => libc::RLIMIT_STACK as i32,
        "as" => libc::RLIMIT_AS as i32,
        "memlock" => libc::RLIMIT_MEMLOCK as i32,
        _ => return None,
    })
}

impl Prepared {
    /// The child's open-file limit before the service's own `rlimit`s:
    /// initd raised its own (`sys::raise_nofile_limit`), services start
    /// from the soft limit initd was given.
    pub fn child_nofile(&mut self, limit: libc::rlimit) {
        self.rlimits
            .insert(0, (libc::RLIMIT_NOFILE as libc::c_int, limit));
    }
}

/// An error that is the machine's weather, not the service's fault: out of
/// processes, memory or file descriptors. A spawn that fails so is tried
/// again after a backoff (`Supervisor::spawn_deferred`).
pub fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EAGAIN | libc::ENOMEM | libc::EMFILE | libc::ENFILE)
    )
}

/// Fork and exec without waiting for the exec: an exec failure (missing
/// binary, permission) comes back later through `Spawned::exec_result`.
pub fn spawn(prepared: &Prepared) -> io::Result<Spawned> {
    let (error_read, error_write) = sys::pipe()?;
    // Pointer arrays built before fork: the child must not allocate.
    let mut argv: Vec<*const libc::c_char> = prepared.argv.iter().map(|arg| arg.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = prepared.envp.iter().map(|var| var.as_ptr()).collect();
    envp.push(std::ptr::null());
    let old_mask = sys::block_all_signals();
    // SAFETY: fork; the child only runs `child` which is async-signal-safe
    // and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child, see `child`.
        unsafe { child(prepared, &argv, &envp, error_write) }
    }
    let fork_error = sys::last_error();
    sys::restore_signals(&old_mask);
    sys::close(error_write);
    if pid < 0 {
        sys::close(error_read);
        return Err(fork_error);
    }
    Ok(Spawned {
        pid,
        exec_result: error_read,
    })
}

/// A forked child on its way to exec.
pub struct Spawned {
    pub pid: i32,
    /// Non-blocking read end: end of file when exec succeeded, or 4 bytes of
    /// errno when it failed (the child then exits 127). Read it with
    /// `exec_result` before treating the child's exit as the service's.
    pub exec_result: RawFd,
}

/// What the exec pipe says: None = not known yet, Some(Ok) = exec'd,
/// Some(Err) = exec failed with that error.
pub fn exec_result(fd: RawFd) -> Option<io::Result<()>> {
    let mut buffer = [0u8; 4];
    let mut filled = 0;
    loop {
        match sys::read(fd, &mut buffer[filled..]) {
            Ok(0) => {
                return Some(if filled == 4 {
                    Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buffer)))
                } else {
                    Ok(())
                })
            }
            Ok(count) => {
                filled += count;
                if filled == 4 {
                    return Some(Err(io::Error::from_raw_os_error(i32::from_ne_bytes(
                        buffer,
                    ))));
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Move `fd` to a number >= 64 so that dup2 onto 0-2 or the notify fd cannot
/// clobber a source.
unsafe fn lift(fd: RawFd) -> RawFd {
    let lifted = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64);
    if lifted < 0 {
        fd
    } else {
        lifted
    }
}

unsafe fn fail(error_write: RawFd) -> ! {
    let errno = *errno_location();
    let bytes = errno.to_ne_bytes();
    libc::write(error_write, bytes.as_ptr().cast(), bytes.len());
    libc::_exit(127)
}

#[cfg(target_os = "linux")]
unsafe fn errno_location() -> *mut libc::c_int {
    libc::__errno_location()
}

#[cfg(target_os = "freebsd")]
unsafe fn errno_location() -> *mut libc::c_int {
    libc::__error()
}

/// The child between fork and exec. Async-signal-safe calls only.
unsafe fn child(
    prepared: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    error_write: RawFd,
) -> ! {
    // Default dispositions, then unblock.
    let mut action: libc::sigaction = std::mem::zeroed();
    action.sa_sigaction = libc::SIG_DFL;
    for signal in 1..32 {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    // Own session and process group (pgid = pid).
    libc::setsid();
    if let Some(procs) = &prepared.cgroup_procs {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, c"0".as_ptr().cast(), 1);
            libc::close(fd);
        }
    }
    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
    let output = lift(prepared.output_fd);
    let notify = prepared.notify.map(|(fd, target)| (lift(fd), target));
    let null = if null >= 0 { lift(null) } else { null };
    if null >= 0 {
        libc::dup2(null, 0);
    }
    if libc::dup2(output, 1) < 0 || libc::dup2(output, 2) < 0 {
        fail(error_write);
    }
    if let Some((fd, target)) = notify {
        if libc::dup2(fd, target) < 0 {
            fail(error_write);
        }
    }
    if let Some(umask) = prepared.umask {
        libc::umask(umask);
    }
    for (resource, limit) in &prepared.rlimits {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        let resource = *resource as libc::__rlimit_resource_t;
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        let resource = *resource;
        if libc::setrlimit(resource, limit) < 0 {
            fail(error_write);
        }
    }
    if let Some(workdir) = &prepared.workdir {
        if libc::chdir(workdir.as_ptr()) < 0 {
            fail(error_write);
        }
    }
    if let Some((uid, gid)) = prepared.ids {
        let groups = [gid];
        if libc::setgroups(1, groups.as_ptr()) < 0 || libc::setgid(gid) < 0 || libc::setuid(uid) < 0
        {
            fail(error_write);
        }
    }
    libc::execve(prepared.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
    fail(error_write)
}
