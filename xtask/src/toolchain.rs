//! The Rust targets the builds need, installed on first use: a fresh
//! machine with nothing but rustup builds an image without a manual
//! `rustup target add`.

use anyhow::{bail, Context as _};
use xshell::{cmd, Shell};

/// initd and initctl of the Debian images (static binaries).
pub const MUSL: &str = "x86_64-unknown-linux-musl";
/// initd and initctl of the FreeBSD images.
pub const FREEBSD: &str = "x86_64-unknown-freebsd";

/// Makes sure the active toolchain has the standard library of `target`:
/// present in `rustc --print sysroot`, else `rustup target add` (with
/// RUSTUP_AUTO_INSTALL=0: a target is added, never a toolchain).
pub fn ensure_target(target: &str) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let sysroot = cmd!(sh, "rustc --print sysroot").quiet().read().context(
        "cannot run `rustc --print sysroot`; install Rust with rustup (https://rustup.rs) and run this again",
    )?;
    if std::path::Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(target)
        .join("lib")
        .is_dir()
    {
        return Ok(());
    }
    if cmd!(sh, "rustup --version")
        .quiet()
        .ignore_stderr()
        .read()
        .is_err()
    {
        bail!(
            "the Rust target {target} is missing from {} and there is no rustup to add it; install the target's standard library for this toolchain",
            sysroot.trim()
        );
    }
    eprintln!("installing the missing Rust target: rustup target add {target}");
    cmd!(sh, "rustup target add {target}")
        .env("RUSTUP_AUTO_INSTALL", "0")
        .run()
        .with_context(|| {
            format!("`rustup target add {target}` failed; run it by hand once the network or disk problem above is fixed")
        })?;
    Ok(())
}
