//! `nodows watch --appliance`: the model sources an image names, resolved
//! on the appliance at run time (the `model-watch` service runs it).
//!
//! The image builder bakes the base model as `/etc/nodows/model.xml` (an
//! SQLite base is exported to it at build time) and, when the image or its
//! profile has `<fleet remote="postgres://..."/>`, writes the remote's URL
//! to `/etc/nodows/fleet` and the `--secrets` file to
//! `/etc/nodows/fleet.pgpass` (mode 0600). `nodows.fleet=URL` on the kernel
//! command line names the remote instead (or where the image names none).
//! `{server}` in the URL stands for the server id
//! ([`initd::pid1::server_id`], the one initd renders as), so one image
//! serves a fleet whose appliances each log in with a role of their own.
//! A URL without `passfile=` gets the image's passfile when there is one.

use std::path::{Path, PathBuf};

use initd::pid1;

/// Paths inside the image, relative to its root.
pub const BASE_MODEL: &str = "etc/nodows/model.xml";
pub const FLEET_FILE: &str = "etc/nodows/fleet";
pub const PASSFILE: &str = "etc/nodows/fleet.pgpass";
pub const SERVICES_DIR: &str = "etc/nodows/services";

/// What `nodows watch --appliance` watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sources {
    /// The baked model only: the file is watched (a live edit on a dev
    /// image re-renders).
    Base { model: PathBuf },
    /// The fleet's database on top of the baked base (which initd renders
    /// from until the first last-good model exists).
    Fleet {
        /// The URL with `{server}` replaced and the image's passfile added.
        remote: String,
        server: String,
        /// The boot's mode, the profile the model is validated with.
        profile: String,
        services_dir: PathBuf,
        last_good: PathBuf,
    },
}

/// The sources of the appliance whose root is `root` (`/` on the
/// appliance), booted with the kernel command line `command_line`.
pub fn resolve(root: &Path, command_line: &str) -> Result<Sources, String> {
    let command_line = pid1::parse_command_line(command_line);
    let fleet_file = root.join(FLEET_FILE);
    let remote = match &command_line.fleet {
        Some(url) => Some((url.clone(), "nodows.fleet= on the kernel command line")),
        None => pid1::first_word(&fleet_file).map(|url| (url, "/etc/nodows/fleet")),
    };
    let Some((remote, named_by)) = remote else {
        return Ok(Sources::Base {
            model: root.join(BASE_MODEL),
        });
    };
    if !model::postgres::is_postgres(&remote) {
        return Err(format!(
            "{named_by}: `{}` is not a postgres:// URL; write postgres://ROLE@HOST:PORT/DATABASE",
            model::postgres::display_name(&remote)
        ));
    }
    let server = pid1::server_id(&command_line, root).ok_or_else(|| {
        format!(
            "{named_by} names a fleet database, but this appliance has no server id: boot it with nodows.server=ID or give the machine an SMBIOS system serial (QEMU: -smbios type=1,serial=ID)"
        )
    })?;
    if pid1::server_from_serial(&server).as_deref() != Some(server.as_str()) {
        return Err(format!(
            "server id `{server}`: use letters, digits, `.`, `_` and `-` (at most 64)"
        ));
    }
    let mut remote = remote.replace("{server}", &server);
    let passfile = root.join(PASSFILE);
    if !remote.contains("passfile=") && passfile.is_file() {
        let separator = if remote.contains('?') { '&' } else { '?' };
        remote = format!("{remote}{separator}passfile={}", passfile.display());
    }
    Ok(Sources::Fleet {
        remote,
        server,
        profile: pid1::boot_mode(&command_line, root),
        services_dir: root.join(SERVICES_DIR),
        last_good: root.join(pid1::LAST_GOOD_MODEL.trim_start_matches('/')),
    })
}

/// One line for the log: what was chosen (no password, no query).
pub fn describe(sources: &Sources) -> String {
    match sources {
        Sources::Base { model } => format!("the baked model {} only", model.display()),
        Sources::Fleet {
            remote,
            server,
            profile,
            ..
        } => format!(
            "fleet {} as server {server}, profile {profile}, on the baked base",
            model::postgres::display_name(remote)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Root(PathBuf);

    impl Root {
        fn new(name: &str) -> Root {
            let root = std::env::temp_dir()
                .join(format!("nodows-appliance-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("etc/nodows")).unwrap();
            Root(root)
        }

        fn write(&self, path: &str, text: &str) {
            std::fs::write(self.0.join(path), text).unwrap();
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn without_a_fleet_the_baked_model_is_watched() {
        let root = Root::new("base");
        assert_eq!(
            resolve(&root.0, "quiet nodows.server=a").unwrap(),
            Sources::Base {
                model: root.0.join(BASE_MODEL)
            }
        );
    }

    #[test]
    fn the_image_names_the_fleet_and_the_command_line_overrides_it() {
        let root = Root::new("fleet");
        root.write(
            FLEET_FILE,
            "postgres://nodows_{server}@db.example:5432/fleet?sslmode=disable\n",
        );
        root.write("etc/nodows/mode", "production\n");
        root.write("etc/nodows/server-id", "web01\n");
        root.write(PASSFILE, "*:*:*:nodows_web01:secret\n");
        let Sources::Fleet {
            remote,
            server,
            profile,
            last_good,
            ..
        } = resolve(&root.0, "quiet").unwrap()
        else {
            panic!("no fleet")
        };
        assert_eq!(server, "web01");
        assert_eq!(profile, "production");
        assert_eq!(
            remote,
            format!(
                "postgres://nodows_web01@db.example:5432/fleet?sslmode=disable&passfile={}",
                root.0.join(PASSFILE).display()
            )
        );
        assert_eq!(last_good, root.0.join("var/lib/nodows/model.xml"));
        let Sources::Fleet { remote, server, .. } = resolve(
            &root.0,
            "nodows.server=b nodows.fleet=postgres://r_{server}@10.0.2.2:5/f?passfile=/p",
        )
        .unwrap() else {
            panic!("no fleet")
        };
        assert_eq!(server, "b");
        assert_eq!(remote, "postgres://r_b@10.0.2.2:5/f?passfile=/p");
    }

    #[test]
    fn a_fleet_without_a_server_id_or_with_a_bad_url_is_refused() {
        let root = Root::new("refused");
        let error = resolve(&root.0, "nodows.fleet=postgres://r@h/f").unwrap_err();
        assert!(
            error.contains("no server id: boot it with nodows.server=ID"),
            "{error}"
        );
        let error = resolve(&root.0, "nodows.server=a nodows.fleet=mysql://r@h/f").unwrap_err();
        assert!(error.contains("is not a postgres:// URL"), "{error}");
        root.write(FLEET_FILE, "postgres://r@h/f\n");
        let error = resolve(&root.0, "nodows.server=a/b").unwrap_err();
        assert!(error.contains("server id `a/b`"), "{error}");
    }
}
