//! The resolved plan of one image x profile: everything that shapes the
//! build, read from `images/NAME.xml`, `profiles/PROFILE.xml` and the
//! service definitions, validated before any slow step starts.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::outputs::Format;
use super::xml::{Document, Element};
use super::BadInput;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootLogin {
    /// Root has no password and the `console` service logs it in on ttyS0.
    Autologin,
    /// Root's password field is `*`: no password login at all (SSH keys only).
    Locked,
}

/// An account from `<users><user name uid shell/></users>` of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub shell: String,
}

#[derive(Debug, Clone)]
pub struct ServicePlan {
    pub name: String,
    pub packages: Vec<String>,
    /// The files the service renders (`<file target="...">`).
    pub files: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// The directory holding images/, profiles/, services/, overlays/.
    pub source: PathBuf,
    pub image: String,
    pub profile: String,
    pub mode: String,
    pub suite: String,
    pub architecture: String,
    /// apt source lines (`deb URI SUITE COMPONENTS`) for mmdebstrap.
    pub sources: Vec<String>,
    pub hostname: String,
    pub disk_size_mib: u64,
    pub esp_size_mib: u64,
    /// `<disk layout="ab" data="SIZE">`: two root slots and a data
    /// partition of this many MiB (see `update`); `None`: one root.
    pub ab_data_mib: Option<u64>,
    /// The data partition (GPT name `data`, last on the disk) in MiB: the
    /// A/B layout's, or a verified single-root disk's (`<disk data="...">`,
    /// 64 MiB by default); grown to the disk's end at boot.
    pub data_mib: Option<u64>,
    pub kernel_package: String,
    pub initrd_modules: Vec<String>,
    /// `Some` prunes /usr/lib/modules/VERSION/kernel to these trees.
    pub keep_modules: Option<Vec<String>>,
    /// The kernel command line without `root=`.
    pub cmdline: String,
    /// `<verified-boot/>` in the profile: the root is read-only under
    /// dm-verity, the configuration lives in RAM, and the ESP holds a signed
    /// unified kernel image (on A/B images one per slot, each with its
    /// slot's root hash).
    pub verified_boot: bool,
    /// Packages of the base: the image's `<packages>`, every service's in
    /// `services/` (so that all profiles of an image share one cached base,
    /// whichever services they list) and the profile's `<packages>` (a
    /// profile with its own packages has a cached base of its own).
    pub base_packages: BTreeSet<String>,
    /// The profile's `<packages>`.
    pub profile_packages: BTreeSet<String>,
    pub services: Vec<ServicePlan>,
    /// Overlay directories relative to `source`, in copy order.
    pub overlays: Vec<PathBuf>,
    pub root_login: RootLogin,
    /// Accounts added to the image (password locked; SSH keys only).
    pub users: Vec<User>,
    /// The model (XML, or SQLite by the name's `.sqlite`/`.sqlite3`/`.db`,
    /// exported to XML at build time), relative to `source`.
    pub model: PathBuf,
    /// `<fleet remote="..."/>` of the profile or the image: the fleet's
    /// database on top of the baked model.
    pub fleet: Option<super::fleet::Fleet>,
    /// The output formats, raw first (every other one is made from it).
    pub outputs: Vec<Format>,
}

/// Collects every problem so that validation reports them all at once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, message: String) {
        self.0.push(message);
    }
    fn into_result(self) -> Result<(), BadInput> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(BadInput(self.0.join("\n")))
        }
    }
}

fn is_name(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || c == '+')
}

pub(super) fn parse_size_mib(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Some(number) = value.strip_suffix("GiB") {
        number.trim().parse::<u64>().ok().map(|n| n * 1024)
    } else if let Some(number) = value.strip_suffix("MiB") {
        number.trim().parse::<u64>().ok()
    } else {
        None
    }
}

/// Names of the available images or profiles (`DIR/*.xml`), sorted.
pub fn list_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_suffix(".xml").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

fn load_named(source: &Path, kind: &str, name: &str) -> Result<Document, BadInput> {
    let dir = source.join(format!("{kind}s"));
    let path = dir.join(format!("{name}.xml"));
    if !is_name(name) || !path.is_file() {
        return Err(BadInput(format!(
            "{}: unknown {kind} `{name}` (known: {}); add {}/{name}.xml or pick a known one",
            dir.display(),
            list_names(&dir).join(", "),
            dir.display()
        )));
    }
    Document::load(&path)
}

fn text_list(
    document: &Document,
    parent: &Element,
    child: &str,
    problems: &mut Problems,
) -> Vec<(String, usize)> {
    let mut values = Vec::new();
    for element in parent.children_named(child) {
        let value = element.text().to_owned();
        if !is_name(&value) {
            problems.push(format!(
                "{}: <{child}> needs a name, found `{value}`",
                document.at(element)
            ));
        } else {
            values.push((value, element.line));
        }
    }
    values
}

fn services_of(document: &Document, problems: &mut Problems) -> Vec<(String, usize)> {
    let mut services = Vec::new();
    for element in document.root.children_named("services") {
        services.extend(text_list(document, element, "service", problems));
    }
    services
}

/// The formats of `<outputs><format>NAME</format>...</outputs>`, `None`
/// without an `<outputs>` element.
fn outputs_of(document: &Document, problems: &mut Problems) -> Option<Vec<Format>> {
    let element = document.root.children_named("outputs").next()?;
    let mut formats = Vec::new();
    for format in element.children_named("format") {
        match format.text().parse::<Format>() {
            Ok(parsed) => formats.push(parsed),
            Err(message) => problems.push(format!("{}: {message}", document.at(format))),
        }
    }
    Some(formats)
}

/// Raw first and always (boot, flash and every conversion start from it),
/// then the others in the order of `Format::ALL`, each once.
pub fn normalize_outputs(formats: &[Format]) -> Vec<Format> {
    Format::ALL
        .into_iter()
        .filter(|format| *format == Format::Raw || formats.contains(format))
        .collect()
}

/// The names of the service directories in `source/services/`, sorted.
fn service_names(source: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(source.join("services"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().join(servicedef::FILE_NAME).is_file())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Reads and validates `services/NAME/service.xml` (with `servicedef`, the
/// parser initd and the renderer use) for its Debian packages and files.
fn load_service(source: &Path, name: &str, at: &str) -> Result<ServicePlan, BadInput> {
    let path = source.join("services").join(name).join("service.xml");
    if !path.is_file() {
        return Err(BadInput(format!(
            "{at}: unknown service `{name}`: {} does not exist",
            path.display()
        )));
    }
    let definition =
        servicedef::parse_file(&path).map_err(|errors| BadInput(errors.to_string()))?;
    if definition.name != name {
        return Err(BadInput(format!(
            "{}:{}: <service name=\"...\"> must be `{name}`, the name of its directory",
            path.display(),
            definition.line
        )));
    }
    let mut packages = definition.packages.clone();
    packages.sort();
    packages.dedup();
    Ok(ServicePlan {
        name: name.to_owned(),
        packages,
        files: definition
            .files
            .iter()
            .map(|file| file.target.clone())
            .collect(),
    })
}

/// `<model path>` of the image, which must exist.
pub(super) fn model_path(
    source: &Path,
    image_document: &Document,
    problems: &mut Vec<String>,
) -> PathBuf {
    let root = &image_document.root;
    match root
        .children_named("model")
        .next()
        .and_then(|element| element.attribute("path").map(|path| (element, path)))
    {
        Some((element, path)) => {
            if !source.join(path).is_file() {
                problems.push(format!(
                    "{}: the model {} does not exist",
                    image_document.at(element),
                    source.join(path).display()
                ));
            }
            PathBuf::from(path)
        }
        None => {
            problems.push(format!(
                "{}: <image> needs <model path=\"...\"/>",
                image_document.at(root)
            ));
            PathBuf::new()
        }
    }
}

/// Resolves the plan of `image` x `profile` from the files under `source`.
#[cfg(test)]
pub fn resolve(
    source: &Path,
    image: &str,
    profile: &str,
    sources: Vec<String>,
) -> Result<Plan, BadInput> {
    resolve_with(source, image, profile, sources, true)
}

/// `resolve`; with `verified_boot_allowed` false a `<verified-boot/>`
/// profile is built without it (`--without-verified-boot`, for comparisons).
pub fn resolve_with(
    source: &Path,
    image: &str,
    profile: &str,
    sources: Vec<String>,
    verified_boot_allowed: bool,
) -> Result<Plan, BadInput> {
    let image_document = load_named(source, "image", image)?;
    let profile_document = load_named(source, "profile", profile)?;
    let mut problems = Problems::default();

    // The image.
    let root = &image_document.root;
    if root.name != "image" {
        return Err(BadInput(format!(
            "{}: the root element must be <image>, found <{}>",
            image_document.at(root),
            root.name
        )));
    }
    if root.attribute("name") != Some(image) {
        problems.push(format!(
            "{}: <image name=\"...\"> must be `{image}`, the name of its file",
            image_document.at(root)
        ));
    }
    if root.attribute("os").unwrap_or("debian") != "debian" {
        problems.push(format!(
            "{}: only os=\"debian\" images are built by this builder",
            image_document.at(root)
        ));
    }
    let required_text = |name: &str, problems: &mut Problems| -> String {
        match root.children_named(name).next() {
            Some(element) if is_name(element.text()) => element.text().to_owned(),
            Some(element) => {
                problems.push(format!(
                    "{}: <{name}> must not be empty",
                    image_document.at(element)
                ));
                String::new()
            }
            None => {
                problems.push(format!(
                    "{}: <image> needs a <{name}> element",
                    image_document.at(root)
                ));
                String::new()
            }
        }
    };
    let suite = required_text("suite", &mut problems);
    let architecture = required_text("architecture", &mut problems);
    let hostname = required_text("hostname", &mut problems);

    let (mut disk_size_mib, mut esp_size_mib) = (0, 0);
    let mut ab_data_mib = None;
    let mut single_data_mib = None;
    match root.children_named("disk").next() {
        Some(disk) => {
            match disk.attribute("size").and_then(parse_size_mib) {
                Some(size) => disk_size_mib = size,
                None => problems.push(format!(
                    "{}: <disk size=\"...\"> must be a size such as 1024MiB or 1GiB",
                    image_document.at(disk)
                )),
            }
            match disk.attribute("esp").map(parse_size_mib) {
                Some(Some(size)) if size >= 33 => esp_size_mib = size,
                None => esp_size_mib = 64,
                _ => problems.push(format!(
                    "{}: <disk esp=\"...\"> must be a size of at least 33MiB (FAT32)",
                    image_document.at(disk)
                )),
            }
            match (
                disk.attribute("layout"),
                disk.attribute("data").map(parse_size_mib),
            ) {
                (None | Some("single"), None) => {}
                (Some("ab"), Some(Some(size))) if size >= 8 => ab_data_mib = Some(size),
                (Some("ab"), None) => ab_data_mib = Some(64),
                (Some("ab"), _) => problems.push(format!(
                    "{}: <disk data=\"...\"> must be a size of at least 8MiB",
                    image_document.at(disk)
                )),
                (None | Some("single"), Some(Some(size))) if size >= 8 => {
                    single_data_mib = Some(size)
                }
                (None | Some("single"), Some(_)) => problems.push(format!(
                    "{}: <disk data=\"...\"> must be a size of at least 8MiB",
                    image_document.at(disk)
                )),
                (Some(other), _) => problems.push(format!(
                    "{}: <disk layout=\"{other}\"> must be `single` or `ab`",
                    image_document.at(disk)
                )),
            }
            let slots = if ab_data_mib.is_some() { 2 } else { 1 };
            let needed = esp_size_mib + ab_data_mib.unwrap_or(0) + 64 * slots;
            if disk_size_mib != 0 && disk_size_mib < needed {
                problems.push(format!(
                    "{}: the disk must be at least {needed}MiB: the ESP, the data partition and 64MiB per root slot",
                    image_document.at(disk)
                ));
            }
        }
        None => problems.push(format!(
            "{}: <image> needs a <disk size=\"...\"/>",
            image_document.at(root)
        )),
    }

    let mut kernel_package = String::new();
    let mut cmdline = String::new();
    let mut initrd_modules = Vec::new();
    let mut keep_modules = None;
    match root.children_named("kernel").next() {
        Some(kernel) => {
            kernel_package = kernel
                .attribute("package")
                .unwrap_or("linux-image-amd64")
                .to_owned();
            cmdline = kernel.attribute("cmdline").unwrap_or_default().to_owned();
            if !cmdline
                .split_whitespace()
                .any(|word| word.starts_with("init="))
            {
                problems.push(format!(
                    "{}: the kernel cmdline must name the init, e.g. init=/sbin/initd",
                    image_document.at(kernel)
                ));
            }
            if cmdline
                .split_whitespace()
                .any(|word| word.starts_with("root="))
            {
                problems.push(format!(
                    "{}: the kernel cmdline must not set root=, the builder adds it",
                    image_document.at(kernel)
                ));
            }
            initrd_modules = text_list(&image_document, kernel, "initrd-module", &mut problems)
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            if let Some(keep) = kernel.children_named("keep-modules").next() {
                let paths: Vec<String> =
                    keep.text().split_whitespace().map(str::to_owned).collect();
                // The paths become shell patterns of the base's pruning hook.
                for path in &paths {
                    let plain = path
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || b"_.+-/".contains(&byte));
                    if !plain
                        || path.starts_with('/')
                        || path.ends_with('/')
                        || path.split('/').any(|part| part.is_empty() || part == "..")
                    {
                        problems.push(format!(
                            "{}: <keep-modules> path `{path}` must be relative to /usr/lib/modules/VERSION/kernel, of letters, digits and `_.+-/`",
                            image_document.at(keep)
                        ));
                    }
                }
                keep_modules = Some(paths);
            }
        }
        None => problems.push(format!(
            "{}: <image> needs a <kernel> element",
            image_document.at(root)
        )),
    }

    let model = model_path(source, &image_document, &mut problems.0);

    let mut image_packages = BTreeSet::new();
    for element in root.children_named("packages") {
        for (package, _) in text_list(&image_document, element, "package", &mut problems) {
            image_packages.insert(package);
        }
    }
    if !kernel_package.is_empty() {
        image_packages.insert(kernel_package.clone());
    }
    // What the builder itself relies on in the image: the initrd generator
    // and the module loader.
    // usr-is-merged: otherwise apt satisfies init-system-helpers'
    // `usrmerge | usr-is-merged` with usrmerge, which pulls in all of perl.
    for package in ["initramfs-tools", "kmod", "zstd", "usr-is-merged"] {
        image_packages.insert(package.to_owned());
    }
    let image_services = services_of(&image_document, &mut problems);
    let mut users = Vec::new();
    for element in root.children_named("users") {
        for user in element.children_named("user") {
            let name = user.attribute("name").unwrap_or_default();
            let uid = user
                .attribute("uid")
                .and_then(|uid| uid.parse::<u32>().ok());
            let shell = user.attribute("shell").unwrap_or("/bin/sh");
            match uid {
                Some(uid)
                    if is_name(name) && (1000..60000).contains(&uid) && shell.starts_with('/') =>
                {
                    users.push(User {
                        name: name.to_owned(),
                        uid,
                        shell: shell.to_owned(),
                    })
                }
                _ => problems.push(format!(
                    "{}: <user> needs name=\"...\", uid=\"1000..59999\" and an absolute shell",
                    image_document.at(user)
                )),
            }
        }
    }

    // The profile.
    let profile_root = &profile_document.root;
    if profile_root.name != "profile" {
        return Err(BadInput(format!(
            "{}: the root element must be <profile>, found <{}>",
            profile_document.at(profile_root),
            profile_root.name
        )));
    }
    if profile_root.attribute("name") != Some(profile) {
        problems.push(format!(
            "{}: <profile name=\"...\"> must be `{profile}`, the name of its file",
            profile_document.at(profile_root)
        ));
    }
    let mode = profile_root
        .attribute("mode")
        .unwrap_or_default()
        .to_owned();
    if !is_name(&mode) {
        problems.push(format!(
            "{}: <profile> needs mode=\"dev|test|production|failover\"",
            profile_document.at(profile_root)
        ));
    }
    let mut overlays = vec![PathBuf::from("overlays/common")];
    for (name, line) in text_list(&profile_document, profile_root, "overlay", &mut problems) {
        let overlay = PathBuf::from("overlays").join(&name);
        if !source.join(&overlay).is_dir() {
            problems.push(format!(
                "{}:{line}: overlay `{name}` does not exist: create {}",
                profile_document.path.display(),
                source.join(&overlay).display()
            ));
        }
        overlays.push(overlay);
    }
    let root_login = match profile_root.children_named("root").next() {
        Some(element) => match element.attribute("login") {
            Some("autologin") => RootLogin::Autologin,
            Some("locked") => RootLogin::Locked,
            _ => {
                problems.push(format!(
                    "{}: <root login=\"...\"> must be autologin or locked",
                    profile_document.at(element)
                ));
                RootLogin::Locked
            }
        },
        None => RootLogin::Locked,
    };
    // <verified-boot/>: dm-verity root, configuration in RAM, signed UKI.
    let verified_boot = match profile_root.children_named("verified-boot").next() {
        None => false,
        Some(_) if !verified_boot_allowed => false,
        Some(_) => true,
    };
    // What persists lives on a data partition where the root does not
    // keep it: on A/B disks and on verified (read-only) ones.
    let data_mib = ab_data_mib.or(verified_boot.then(|| single_data_mib.unwrap_or(64)));
    for element in profile_root.children_named("cmdline") {
        if !element.text().is_empty() {
            cmdline.push(' ');
            cmdline.push_str(element.text());
        }
    }
    let profile_services = services_of(&profile_document, &mut problems);
    // The profile's <outputs> replace the image's; neither: raw and qcow2.
    let image_outputs = outputs_of(&image_document, &mut problems);
    let profile_outputs = outputs_of(&profile_document, &mut problems);
    let outputs = normalize_outputs(
        &profile_outputs
            .or(image_outputs)
            .unwrap_or_else(|| vec![Format::Raw, Format::Qcow2]),
    );

    // Services: the image's, then the profile's.
    let mut services = Vec::new();
    let mut seen = BTreeSet::new();
    let mut base_packages = image_packages;
    let located = image_services
        .iter()
        .map(|(name, line)| (name, format!("{}:{line}", image_document.path.display())))
        .chain(
            profile_services
                .iter()
                .map(|(name, line)| (name, format!("{}:{line}", profile_document.path.display()))),
        );
    for (name, at) in located {
        if !seen.insert(name.clone()) {
            continue;
        }
        match load_service(source, name, &at) {
            Ok(service) => {
                base_packages.extend(service.packages.iter().cloned());
                services.push(service);
            }
            Err(BadInput(message)) => problems.push(message),
        }
    }
    // Every service's packages go into the base, listed or not, so that
    // all profiles of the image share one cached base and listing a
    // service in one profile changes no other profile's base.
    for name in service_names(source) {
        if seen.contains(&name) {
            continue;
        }
        let at = format!("{}", source.join("services").join(&name).display());
        match load_service(source, &name, &at) {
            Ok(service) => base_packages.extend(service.packages),
            Err(BadInput(message)) => problems.push(message),
        }
    }
    let mut profile_packages = BTreeSet::new();
    for element in profile_root.children_named("packages") {
        for (package, _) in text_list(&profile_document, element, "package", &mut problems) {
            profile_packages.insert(package);
        }
    }
    base_packages.extend(profile_packages.iter().cloned());
    let fleet = super::fleet::of(&image_document, &profile_document, &mut problems.0);
    problems.into_result()?;
    let mut cmdline: Vec<&str> = cmdline.split_whitespace().collect();
    if verified_boot {
        // The initrd maps the root read-only through its hash tree.
        cmdline.retain(|word| *word != "rw");
        cmdline.push("ro");
        // sha256_ssse3: the SSSE3/AVX2/SHA-NI sha256 the hash tree is
        // checked with (dm-verity otherwise gets sha256-generic).
        for module in ["sha256_ssse3", "dm_verity", "overlay"] {
            if !initrd_modules.iter().any(|name| name == module) {
                initrd_modules.push(module.to_owned());
            }
        }
    }
    Ok(Plan {
        source: source.to_path_buf(),
        image: image.to_owned(),
        profile: profile.to_owned(),
        mode,
        suite,
        architecture,
        sources,
        hostname,
        disk_size_mib,
        esp_size_mib,
        ab_data_mib,
        data_mib,
        kernel_package,
        initrd_modules,
        keep_modules,
        cmdline: cmdline.join(" "),
        verified_boot,
        base_packages,
        profile_packages,
        services,
        overlays,
        root_login,
        users,
        model,
        fleet,
        outputs,
    })
}

impl Plan {
    /// The size of the root partition, or of each root slot of an A/B disk
    /// (one MiB before the ESP, one at the end for the backup GPT).
    pub fn slot_size_mib(&self) -> u64 {
        let rest = self
            .disk_size_mib
            .saturating_sub(2 + self.esp_size_mib + self.data_mib.unwrap_or(0));
        match self.ab_data_mib {
            Some(_) => rest / 2,
            None => rest,
        }
    }

    /// Whether systemd-boot lets the kernel command line be edited at the
    /// boot menu: only where root already has a console shell (autologin);
    /// elsewhere an edit would be a way in (`init=/bin/sh`, environment
    /// for PID 1), so `loader.conf` says `editor no`.
    pub fn boot_menu_editor(&self) -> bool {
        self.root_login == RootLogin::Autologin
    }

    /// The plan as printed by `--plan` (and kept honest by snapshot tests).
    pub fn render(&self) -> String {
        let mut out = self.render_inputs();
        let outputs: Vec<&str> = self.outputs.iter().map(|format| format.name()).collect();
        let _ = writeln!(
            out,
            "outputs: {} (and a bmap beside the raw disk)",
            outputs.join(" ")
        );
        out
    }

    /// What shapes the disk's bytes: the plan without its output formats
    /// (a `--format` choice never changes the raw disk).
    pub fn render_inputs(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "image: {}", self.image);
        let _ = writeln!(out, "profile: {}", self.profile);
        let _ = writeln!(out, "mode: {}", self.mode);
        let _ = writeln!(out, "suite: {} ({})", self.suite, self.architecture);
        let _ = writeln!(out, "apt sources:");
        for line in &self.sources {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "hostname: {}", self.hostname);
        match (self.ab_data_mib, self.data_mib) {
            (None, None) => {
                let _ = writeln!(
                    out,
                    "disk: {} MiB (esp {} MiB, ext4 root the rest)",
                    self.disk_size_mib, self.esp_size_mib
                );
            }
            (None, Some(data)) => {
                let _ = writeln!(
                    out,
                    "disk: {} MiB (esp {} MiB, ext4 root {} MiB, data {} MiB, grown to the disk's end at boot)",
                    self.disk_size_mib,
                    self.esp_size_mib,
                    self.slot_size_mib(),
                    data
                );
            }
            (Some(data), _) => {
                let _ = writeln!(
                    out,
                    "disk: {} MiB, A/B (esp {} MiB, ext4 root slots a and b of {} MiB each, data {} MiB)",
                    self.disk_size_mib,
                    self.esp_size_mib,
                    self.slot_size_mib(),
                    data
                );
            }
        }
        let _ = writeln!(out, "kernel: {}", self.kernel_package);
        let _ = writeln!(out, "initrd modules: {}", self.initrd_modules.join(" "));
        match &self.keep_modules {
            Some(keep) => {
                let _ = writeln!(out, "kernel modules kept: {}", keep.join(" "));
            }
            None => {
                let _ = writeln!(out, "kernel modules kept: all");
            }
        }
        let _ = writeln!(
            out,
            "kernel cmdline: {} {}{}",
            match (self.verified_boot, self.ab_data_mib) {
                (true, Some(_)) => "root=PARTLABEL=root-<slot>",
                _ => "root=PARTUUID=<root partition>",
            },
            self.cmdline,
            if self.verified_boot {
                " nodows.verity=<data blocks>:<root hash>:<salt>"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "verified boot: {}",
            if self.verified_boot && self.ab_data_mib.is_some() {
                "dm-verity root per slot (read-only; /etc, /var, /root on overlays in RAM), a signed unified kernel image per slot"
            } else if self.verified_boot {
                "dm-verity root (read-only; /etc, /var, /root on overlays in RAM), signed unified kernel image"
            } else {
                "no (ext4 root read-write)"
            }
        );
        let _ = writeln!(
            out,
            "boot menu editor: {}",
            if self.boot_menu_editor() {
                "on (root has a console shell anyway)"
            } else {
                "off (editor no: the kernel command line cannot be edited at boot)"
            }
        );
        let _ = writeln!(
            out,
            "root login: {}",
            match self.root_login {
                RootLogin::Autologin => "autologin on the serial console (no password)",
                RootLogin::Locked => "locked (no password login)",
            }
        );
        for user in &self.users {
            let _ = writeln!(
                out,
                "user: {} (uid {}, {}, password locked)",
                user.name, user.uid, user.shell
            );
        }
        let _ = writeln!(out, "base packages:");
        for package in &self.base_packages {
            let _ = writeln!(out, "  {package}");
        }
        if !self.profile_packages.is_empty() {
            let packages: Vec<&str> = self.profile_packages.iter().map(String::as_str).collect();
            let _ = writeln!(
                out,
                "profile packages (a base of its own): {}",
                packages.join(" ")
            );
        }
        let _ = writeln!(out, "services:");
        for service in &self.services {
            let packages = if service.packages.is_empty() {
                String::new()
            } else {
                format!(" (packages: {})", service.packages.join(" "))
            };
            let _ = writeln!(out, "  {}{packages}", service.name);
            for file in &service.files {
                let _ = writeln!(out, "    renders {file}");
            }
        }
        let _ = writeln!(out, "overlays:");
        for overlay in &self.overlays {
            let _ = writeln!(out, "  {}", overlay.display());
        }
        let _ = writeln!(out, "model: {}", self.model.display());
        let _ = match &self.fleet {
            Some(fleet) => writeln!(
                out,
                "fleet: {} (credentials: the --secrets file as /etc/nodows/fleet.pgpass)",
                fleet.remote
            ),
            None => writeln!(
                out,
                "fleet: none (the baked model; nodows.fleet= on the kernel command line names one)"
            ),
        };
        out
    }
}
