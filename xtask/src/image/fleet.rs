//! The fleet's model sources in an image: `<fleet remote="postgres://..."/>`
//! of the image or its profile (the profile's wins) and the credentials of
//! `--secrets PATH`.
//!
//! The remote's URL goes to `/etc/nodows/fleet`, which `nodows watch
//! --appliance` reads (crates/render/src/appliance.rs). The secrets file is
//! a pgpass file (`host:port:database:role:password` lines) kept outside
//! the repository; it is installed as `/etc/nodows/fleet.pgpass`, mode
//! 0600, owner root, and left out of the file list that feeds the input
//! hash, manifest.json and the SBOM, so that neither its bytes nor a hash
//! of them is written anywhere but into the image itself. Nothing here
//! prints its content: problems name the file and the line number only.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::assemble::FileEntry;
use super::xml::Document;
use super::BadInput;

/// Where the remote's URL and the credentials live in the image.
pub const REMOTE_FILE: &str = "etc/nodows/fleet";
pub const PASSFILE: &str = "etc/nodows/fleet.pgpass";

/// `<fleet remote="..."/>` of the image or the profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// `postgres://ROLE@HOST:PORT/DATABASE?...`, no password; `{server}`
    /// stands for the appliance's server id.
    pub remote: String,
}

/// The fleet of the profile, else of the image; problems go to `problems`.
pub fn of(image: &Document, profile: &Document, problems: &mut Vec<String>) -> Option<Fleet> {
    let profile_fleet = fleet_of(profile, problems);
    let image_fleet = fleet_of(image, problems);
    profile_fleet.or(image_fleet)
}

fn fleet_of(document: &Document, problems: &mut Vec<String>) -> Option<Fleet> {
    let element = document.root.children_named("fleet").next()?;
    let remote = element.attribute("remote").unwrap_or_default();
    match check_remote(remote) {
        Ok(()) => Some(Fleet {
            remote: remote.to_owned(),
        }),
        Err(message) => {
            problems.push(format!(
                "{}: <fleet remote=\"...\">: {message}",
                document.at(element)
            ));
            None
        }
    }
}

/// A remote is a postgres:// URL without a password and without spaces.
fn check_remote(remote: &str) -> Result<(), String> {
    if !(remote.starts_with("postgres://") || remote.starts_with("postgresql://")) {
        return Err(
            "needs a postgres:// URL, e.g. postgres://nodows_{server}@db.example:5432/fleet?sslmode=verify-full&sslrootcert=/etc/nodows/db-ca.pem"
                .to_owned(),
        );
    }
    if remote.chars().any(char::is_whitespace) {
        return Err("the URL has a space; percent-encode it".to_owned());
    }
    let authority = remote
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or_default())
        .unwrap_or_default();
    if let Some((credentials, _host)) = authority.rsplit_once('@') {
        if credentials.contains(':') {
            return Err(
                "the URL holds a password; give the password in the --secrets file (a pgpass file) instead"
                    .to_owned(),
            );
        }
    }
    Ok(())
}

/// The checked `--secrets` file: its bytes, never printed.
pub struct Secrets {
    bytes: Vec<u8>,
}

/// Reads and checks the `--secrets` file: outside every one of
/// `repositories` (the checkout and `--source`), a regular
/// file of mode 0600 (or stricter), every line a pgpass line. Nothing of
/// its content is in an error.
pub fn read_secrets(path: &Path, repositories: &[&Path]) -> Result<Secrets, BadInput> {
    let bad = |message: &str| BadInput(format!("--secrets {}: {message}", path.display()));
    let resolved = path
        .canonicalize()
        .map_err(|e| bad(&format!("cannot read it: {e}")))?;
    for repository in repositories {
        let repository = repository
            .canonicalize()
            .unwrap_or_else(|_| repository.to_path_buf());
        if resolved.starts_with(&repository) {
            return Err(bad(&format!(
                "lies inside the repository {}; keep credentials outside it (e.g. ~/.config/nodows/fleet.pgpass) so that they are never committed",
                repository.display()
            )));
        }
    }
    let metadata =
        std::fs::metadata(&resolved).map_err(|e| bad(&format!("cannot read it: {e}")))?;
    if !metadata.is_file() {
        return Err(bad("is not a regular file"));
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err(bad("is readable by group or others; chmod 600 it"));
    }
    let bytes = std::fs::read(&resolved).map_err(|e| bad(&format!("cannot read it: {e}")))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("is not UTF-8 text"))?;
    let mut entries = 0;
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if pgpass_fields(line) != 5 {
            return Err(BadInput(format!(
                "--secrets {}:{}: not a pgpass line; write host:port:database:role:password (`*` matches any, `\\:` is a colon)",
                path.display(),
                index + 1
            )));
        }
        entries += 1;
    }
    if entries == 0 {
        return Err(bad(
            "has no host:port:database:role:password line (a pgpass file)",
        ));
    }
    Ok(Secrets { bytes })
}

/// The number of `:`-separated fields of a pgpass line (`\` escapes).
fn pgpass_fields(line: &str) -> usize {
    let mut fields = 1;
    let mut escaped = false;
    for c in line.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ':' => fields += 1,
            _ => {}
        }
    }
    fields
}

/// Writes the remote's URL and the credentials into the staging root.
pub fn install(
    root: &Path,
    fleet: Option<&Fleet>,
    secrets: Option<&Secrets>,
) -> anyhow::Result<()> {
    if let Some(fleet) = fleet {
        super::util::write(
            &root.join(REMOTE_FILE),
            &format!("{}\n", fleet.remote),
            0o644,
        )?;
    }
    if let Some(secrets) = secrets {
        let path: PathBuf = root.join(PASSFILE);
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, &secrets.bytes)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        std::os::unix::fs::chown(&path, Some(0), Some(0)).ok();
    }
    Ok(())
}

/// The file list without the credentials: what the input hash, the
/// manifest and the SBOM see.
pub fn without_secrets(mut files: Vec<FileEntry>) -> Vec<FileEntry> {
    let secret = format!("/{PASSFILE}");
    files.retain(|file| file.path != secret);
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-fleet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_private(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn a_secrets_file_inside_the_repository_is_refused() {
        let repository = scratch("repository");
        let inside = repository.join("target/fleet.pgpass");
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        write_private(&inside, "*:*:*:nodows_a:s3cret-inside\n");
        let error = read_secrets(&inside, &[&repository]).err().unwrap().0;
        assert!(error.contains("lies inside the repository"), "{error}");
        // Through a relative path with `..` too.
        let sneaky = repository.join("target/../target/fleet.pgpass");
        assert!(read_secrets(&sneaky, &[&repository]).is_err());
        assert!(!error.contains("s3cret"), "{error}");
        std::fs::remove_dir_all(&repository).unwrap();
    }

    #[test]
    fn a_readable_or_malformed_secrets_file_is_refused_without_its_content() {
        let repository = scratch("repo2");
        let outside = scratch("outside");
        let path = outside.join("fleet.pgpass");
        write_private(
            &path,
            "*:*:*:nodows_a:s3cret-a\nnot a pgpass line s3cret-b\n",
        );
        let error = read_secrets(&path, &[&repository]).err().unwrap().0;
        assert!(error.ends_with(&format!("--secrets {}:2: not a pgpass line; write host:port:database:role:password (`*` matches any, `\\:` is a colon)", path.display())), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        std::fs::write(&path, "*:*:*:nodows_a:s3cret-a\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_secrets(&path, &[&repository]).err().unwrap().0;
        assert!(error.contains("chmod 600 it"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_secrets(&path, &[&repository]).is_ok());
        std::fs::remove_dir_all(&repository).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn the_secrets_are_installed_private_and_left_out_of_the_file_list() {
        let repository = scratch("repo3");
        let outside = scratch("outside3");
        let root = scratch("root3");
        std::fs::create_dir_all(root.join("etc/nodows")).unwrap();
        let path = outside.join("fleet.pgpass");
        write_private(&path, "10.0.2.2:*:fleet:nodows_a:s3cret-a\n");
        let secrets = read_secrets(&path, &[&repository]).unwrap();
        let fleet = Fleet {
            remote: "postgres://nodows_{server}@10.0.2.2:5432/fleet".to_owned(),
        };
        install(&root, Some(&fleet), Some(&secrets)).unwrap();
        let installed = root.join(PASSFILE);
        assert_eq!(
            std::fs::read_to_string(&installed).unwrap(),
            "10.0.2.2:*:fleet:nodows_a:s3cret-a\n"
        );
        assert_eq!(
            std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_to_string(root.join(REMOTE_FILE)).unwrap(),
            "postgres://nodows_{server}@10.0.2.2:5432/fleet\n"
        );
        let entry = |path: &str| FileEntry {
            path: path.to_owned(),
            kind: "file",
            mode: 0o600,
            uid: 0,
            gid: 0,
            size: 1,
            sha256: "ab".to_owned(),
        };
        let files = without_secrets(vec![
            entry("/etc/nodows/fleet"),
            entry("/etc/nodows/fleet.pgpass"),
        ]);
        let paths: Vec<&str> = files.iter().map(|file| file.path.as_str()).collect();
        assert_eq!(paths, ["/etc/nodows/fleet"]);
        for dir in [repository, outside, root] {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn a_remote_with_a_password_or_another_scheme_is_refused() {
        assert!(check_remote("postgres://nodows_{server}@db:5432/fleet?sslmode=disable").is_ok());
        assert!(check_remote("postgres://r:pw@db/fleet")
            .unwrap_err()
            .contains("--secrets file"));
        assert!(check_remote("mysql://r@db/fleet").is_err());
        assert!(check_remote("postgres://r@db/fl eet").is_err());
    }
}
