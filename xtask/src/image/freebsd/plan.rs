//! The FreeBSD plan: the image and profile XML, each service's FreeBSD form
//! (`services/NAME/freebsd/` or `services/NAME`) and package mapping, every
//! problem reported at once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::super::plan::parse_size_mib;
use super::super::xml::Document;
use super::super::BadInput;

/// True when `images/IMAGE.xml` says `os="freebsd"`.
pub fn is_freebsd_image(source: &Path, image: &str) -> bool {
    let path = source.join("images").join(format!("{image}.xml"));
    Document::load(&path).is_ok_and(|document| document.root.attribute("os") == Some("freebsd"))
}

#[derive(Debug, Clone)]
pub struct FreebsdService {
    pub name: String,
    /// The directory the definition and its templates come from.
    pub dir: PathBuf,
    /// FreeBSD packages to add (`<package os="freebsd">`).
    pub packages: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct FreebsdPlan {
    pub source: PathBuf,
    pub image: String,
    pub profile: String,
    pub mode: String,
    pub architecture: String,
    pub disk_size_mib: u64,
    pub esp_size_mib: u64,
    pub model: PathBuf,
    pub services: Vec<FreebsdService>,
    /// Services the profile asks for that are not available to FreeBSD
    /// images (no `<package os="freebsd">`, no FreeBSD form).
    pub left_out: Vec<String>,
    pub overlays: Vec<PathBuf>,
    /// `<root login="locked">` (or no <root>): root gets `*` as its password
    /// in /etc/master.passwd; `autologin` keeps the set's empty password
    /// (FreeBSD has no autologin: root logs in on the console without one).
    pub root_locked: bool,
}

/// The definition of a service on FreeBSD: its FreeBSD form
/// `services/NAME/freebsd/` when it has one, else the shared `services/NAME`.
pub(super) fn service_dir(source: &Path, name: &str) -> PathBuf {
    let shared = source.join("services").join(name);
    let freebsd = shared.join("freebsd");
    if freebsd.join("service.xml").is_file() {
        freebsd
    } else {
        shared
    }
}

/// The service `name` on FreeBSD: its FreeBSD form, or the shared
/// definition with its FreeBSD packages; `None` when it has neither (not
/// available to FreeBSD images).
fn freebsd_service(source: &Path, name: &str, at: &str) -> Result<Option<FreebsdService>, String> {
    let dir = service_dir(source, name);
    let path = dir.join("service.xml");
    if !path.is_file() {
        return Err(format!(
            "{at}: unknown service `{name}`: {} does not exist",
            path.display()
        ));
    }
    let definition = servicedef::parse_file(&path).map_err(|errors| errors.to_string())?;
    let form = dir != source.join("services").join(name);
    let packages = match definition.freebsd_packages {
        Some(mut packages) => {
            packages.sort();
            packages.dedup();
            packages
        }
        None if form => Vec::new(),
        None => return Ok(None),
    };
    Ok(Some(FreebsdService {
        name: name.to_owned(),
        dir,
        packages,
    }))
}

/// Resolves and validates the plan; every problem is reported at once.
pub fn resolve(source: &Path, image: &str, profile: &str) -> Result<FreebsdPlan, BadInput> {
    let image_document = Document::load(&source.join("images").join(format!("{image}.xml")))?;
    let profile_path = source.join("profiles").join(format!("{profile}.xml"));
    if !profile_path.is_file() {
        return Err(BadInput(format!(
            "{}: unknown profile `{profile}`: the file does not exist",
            profile_path.display()
        )));
    }
    let profile_document = Document::load(&profile_path)?;
    let mut problems = Vec::new();
    let root = &image_document.root;
    if root.name != "image" || root.attribute("name") != Some(image) {
        problems.push(format!(
            "{}: the root element must be <image name=\"{image}\" os=\"freebsd\">",
            image_document.at(root)
        ));
    }
    let architecture = root
        .children_named("architecture")
        .next()
        .map(|element| element.text().to_owned())
        .unwrap_or_default();
    if architecture != "amd64" {
        problems.push(format!(
            "{}: <architecture> must be amd64 (the only FreeBSD target initd is built for)",
            image_document.at(root)
        ));
    }
    let (disk_size_mib, esp_size_mib) = disk_sizes(&image_document, &mut problems);
    let model = super::super::plan::model_path(source, &image_document, &mut problems);

    let profile_root = &profile_document.root;
    if profile_root.name != "profile" || profile_root.attribute("name") != Some(profile) {
        problems.push(format!(
            "{}: the root element must be <profile name=\"{profile}\" mode=\"...\">",
            profile_document.at(profile_root)
        ));
    }
    let mode = profile_root
        .attribute("mode")
        .unwrap_or_default()
        .to_owned();
    if mode.is_empty() {
        problems.push(format!(
            "{}: <profile> needs mode=\"dev|test|production|failover\"",
            profile_document.at(profile_root)
        ));
    }
    let overlays = overlays(source, &profile_document, &mut problems);
    let root_locked = root_locked(&profile_document, &mut problems);
    let (services, left_out) = services(source, &image_document, &profile_document, &mut problems);
    if !problems.is_empty() {
        return Err(BadInput(problems.join("\n")));
    }
    Ok(FreebsdPlan {
        source: source.to_path_buf(),
        image: image.to_owned(),
        profile: profile.to_owned(),
        mode,
        architecture,
        disk_size_mib,
        esp_size_mib,
        model,
        services,
        left_out,
        overlays,
        root_locked,
    })
}

/// `<disk size esp>` of the image in MiB (the ESP 64 unless given).
fn disk_sizes(image_document: &Document, problems: &mut Vec<String>) -> (u64, u64) {
    let root = &image_document.root;
    let (mut disk_size_mib, mut esp_size_mib) = (0, 64);
    match root.children_named("disk").next() {
        Some(disk) => {
            match disk.attribute("size").and_then(parse_size_mib) {
                Some(size) => disk_size_mib = size,
                None => problems.push(format!(
                    "{}: <disk size=\"...\"> must be a size such as 2048MiB or 2GiB",
                    image_document.at(disk)
                )),
            }
            match disk.attribute("esp").map(parse_size_mib) {
                None => {}
                Some(Some(size)) if size >= 33 => esp_size_mib = size,
                Some(_) => problems.push(format!(
                    "{}: <disk esp=\"...\"> must be a size of at least 33MiB (FAT32)",
                    image_document.at(disk)
                )),
            }
            if disk_size_mib != 0 && disk_size_mib < esp_size_mib + 64 {
                problems.push(format!(
                    "{}: the disk must be at least 64MiB larger than the ESP",
                    image_document.at(disk)
                ));
            }
        }
        None => problems.push(format!(
            "{}: <image> needs a <disk size=\"...\"/>",
            image_document.at(root)
        )),
    }
    (disk_size_mib, esp_size_mib)
}

/// `overlays/common`, then the profile's `<overlay>`s, each of which must exist.
fn overlays(
    source: &Path,
    profile_document: &Document,
    problems: &mut Vec<String>,
) -> Vec<PathBuf> {
    let profile_root = &profile_document.root;
    let mut overlays = vec![PathBuf::from("overlays/common")];
    for element in profile_root.children_named("overlay") {
        let overlay = PathBuf::from("overlays").join(element.text());
        if !source.join(&overlay).is_dir() {
            problems.push(format!(
                "{}: overlay `{}` does not exist: create {}",
                profile_document.at(element),
                element.text(),
                source.join(&overlay).display()
            ));
        }
        overlays.push(overlay);
    }

    overlays
}

/// `<root login="locked">` or no `<root>`: true; `autologin`: false.
fn root_locked(profile_document: &Document, problems: &mut Vec<String>) -> bool {
    let profile_root = &profile_document.root;
    match profile_root.children_named("root").next() {
        None => true,
        Some(element) => match element.attribute("login") {
            Some("locked") => true,
            Some("autologin") => false,
            _ => {
                problems.push(format!(
                    "{}: <root login=\"...\"> must be autologin or locked",
                    profile_document.at(element)
                ));
                true
            }
        },
    }
}

/// The image's services, then the profile's, each with its FreeBSD form and
/// packages; and the profile's services not available to FreeBSD.
fn services(
    source: &Path,
    image_document: &Document,
    profile_document: &Document,
    problems: &mut Vec<String>,
) -> (Vec<FreebsdService>, Vec<String>) {
    // The image's services, then the profile's.
    let mut named = Vec::new();
    for (document, from_image) in [(image_document, true), (profile_document, false)] {
        for list in document.root.children_named("services") {
            for element in list.children_named("service") {
                named.push((element.text().to_owned(), document.at(element), from_image));
            }
        }
    }
    let mut services = Vec::new();
    let mut left_out = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, at, from_image) in named {
        if !seen.insert(name.clone()) {
            continue;
        }
        match freebsd_service(source, &name, &at) {
            Ok(Some(service)) => services.push(service),
            // A profile's Linux-only service (the console, the test agent).
            Ok(None) if !from_image => left_out.push(name),
            Ok(None) => problems.push(format!(
                "{at}: service `{name}` is not available to FreeBSD images: {} has no <package os=\"freebsd\">; add one naming its FreeBSD package (empty if the base system has the program), or remove the service from {}",
                source.join("services").join(&name).join("service.xml").display(),
                image_document.path.display()
            )),
            Err(message) => problems.push(message),
        }
    }
    (services, left_out)
}

impl FreebsdPlan {
    /// FreeBSD packages to add, from every service's mapping.
    pub fn packages_to_add(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .services
            .iter()
            .flat_map(|service| service.packages.iter().cloned())
            .collect();
        set.into_iter().collect()
    }

    /// The plan as printed by `--plan`.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "image: {} (freebsd)", self.image);
        let _ = writeln!(out, "profile: {}", self.profile);
        let _ = writeln!(out, "mode: {}", self.mode);
        let _ = writeln!(out, "architecture: {}", self.architecture);
        let _ = writeln!(
            out,
            "disk: {} MiB (esp {} MiB with loader.efi, ufs2 root the rest)",
            self.disk_size_mib, self.esp_size_mib
        );
        let _ = writeln!(out, "services:");
        for service in &self.services {
            let _ = writeln!(
                out,
                "  {} ({})",
                service.name,
                service
                    .dir
                    .strip_prefix(&self.source)
                    .unwrap_or(&service.dir)
                    .display()
            );
        }
        let _ = writeln!(
            out,
            "root login: {}",
            if self.root_locked {
                "locked (no password login)"
            } else {
                "no password on the console (dev)"
            }
        );
        let _ = writeln!(
            out,
            "left out (not available to FreeBSD): {}",
            self.left_out.join(" ")
        );
        let _ = writeln!(out, "packages to add: {}", self.packages_to_add().join(" "));
        let _ = writeln!(out, "overlays:");
        for overlay in &self.overlays {
            let _ = writeln!(out, "  {}", overlay.display());
        }
        let _ = writeln!(out, "model: {}", self.model.display());
        out
    }
}
