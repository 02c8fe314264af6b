//! Kernel modules without udev or kmod: the module index of one kernel
//! (`modules.dep`, `modules.alias`), the aliases of the devices present
//! (`modalias` files under /sys/devices), and loading with `finit_module`.
//! The initrd stage uses it to reach the root device; `initd coldplug` loads
//! the modules of every device present once the root is mounted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `modules.dep` and `modules.alias` of one module directory.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    directory: PathBuf,
    /// Module name (underscores) to its file, relative to `directory`.
    files: BTreeMap<String, String>,
    /// Module name to its dependencies, in the order modules.dep gives them
    /// (the last one must be loaded first).
    dependencies: BTreeMap<String, Vec<String>>,
    /// (pattern, module name); patterns are globs with `*`, `?` and `[...]`.
    aliases: Vec<(String, String)>,
    /// `softdep NAME pre: ...`: names or aliases to load before NAME (ext4
    /// asks for crypto-crc32c this way, through a modprobe we do not have).
    pre_softdeps: BTreeMap<String, Vec<String>>,
}

/// The `pre:` soft dependencies of a modules.softdep text, by module.
pub fn parse_softdeps(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut softdeps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some("softdep"), Some(module)) = (words.next(), words.next()) else {
            continue;
        };
        let mut pre = false;
        for word in words {
            match word {
                "pre:" => pre = true,
                "post:" => pre = false,
                name if pre => softdeps
                    .entry(normalize(module))
                    .or_default()
                    .push(name.to_string()),
                _ => {}
            }
        }
    }
    softdeps
}

/// The module name of a file path: `kernel/fs/ext4/ext4.ko` is `ext4`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

/// Module names treat `-` and `_` alike; the kernel uses `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

impl ModuleIndex {
    /// Reads the index of `directory` (e.g. /lib/modules/6.1.0-57-amd64).
    pub fn load(directory: &Path) -> Result<ModuleIndex, String> {
        let read = |name: &str| {
            std::fs::read_to_string(directory.join(name))
                .map_err(|error| format!("{}: {error}", directory.join(name).display()))
        };
        let dep = read("modules.dep")?;
        // An index without aliases still loads modules by name.
        let alias = read("modules.alias").unwrap_or_default();
        let mut index = ModuleIndex::parse(&dep, &alias);
        index.set_pre_softdeps(parse_softdeps(&read("modules.softdep").unwrap_or_default()));
        index.directory = directory.to_path_buf();
        Ok(index)
    }

    pub fn parse(dep: &str, alias: &str) -> ModuleIndex {
        let mut index = ModuleIndex::default();
        for line in dep.lines() {
            let Some((file, dependencies)) = line.split_once(':') else {
                continue;
            };
            let name = module_name(file);
            index.files.insert(name.clone(), file.trim().to_string());
            index.dependencies.insert(
                name,
                dependencies.split_whitespace().map(module_name).collect(),
            );
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                index.aliases.push((pattern.to_string(), normalize(module)));
            }
        }
        index
    }

    pub fn set_pre_softdeps(&mut self, pre_softdeps: BTreeMap<String, Vec<String>>) {
        self.pre_softdeps = pre_softdeps;
    }

    pub fn contains(&self, name: &str) -> bool {
        self.files.contains_key(&normalize(name))
    }

    /// The modules whose alias patterns match `modalias`.
    pub fn modules_for_alias(&self, modalias: &str) -> Vec<String> {
        let mut found = Vec::new();
        for (pattern, module) in &self.aliases {
            if !found.contains(module) && glob_match(pattern, modalias) {
                found.push(module.clone());
            }
        }
        found
    }

    /// `name` and what it needs, in load order: its soft `pre:`
    /// dependencies (and theirs), its dependencies, then itself.
    pub fn load_order(&self, name: &str) -> Vec<String> {
        let mut order = Vec::new();
        self.visit(&normalize(name), &mut order, &mut BTreeSet::new());
        order
    }

    /// Depth first, each module after what it needs; `visiting` breaks
    /// cycles (soft dependencies may point back).
    fn visit(&self, name: &str, order: &mut Vec<String>, visiting: &mut BTreeSet<String>) {
        if order.iter().any(|done| done == name) || !visiting.insert(name.to_string()) {
            return;
        }
        for wanted in self.pre_softdeps.get(name).into_iter().flatten() {
            for module in self.resolve(wanted) {
                self.visit(&module, order, visiting);
            }
        }
        for dependency in self.dependencies.get(name).into_iter().flatten().rev() {
            self.visit(dependency, order, visiting);
        }
        order.push(name.to_string());
    }

    /// A module name, or the modules an alias names.
    pub fn resolve(&self, name_or_alias: &str) -> Vec<String> {
        let name = normalize(name_or_alias);
        if self.files.contains_key(&name) {
            return vec![name];
        }
        self.modules_for_alias(name_or_alias)
    }

    /// The file of a module, relative to the module directory.
    pub fn relative_file(&self, name: &str) -> Option<&str> {
        self.files.get(&normalize(name)).map(String::as_str)
    }

    fn file(&self, name: &str) -> Option<PathBuf> {
        self.files.get(name).map(|file| self.directory.join(file))
    }
}

/// fnmatch(3) without flags, as kmod matches aliases: `*`, `?`, `[abc]`,
/// `[a-z]`, `[!a]`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern index, text index).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class_match(pattern, p, text[t]),
            Some(byte) if *byte == text[t] => Some(p + 1),
            _ => None,
        };
        match step {
            Some(next) => {
                p = next;
                t += 1;
            }
            None => match star {
                Some((star_p, star_t)) => {
                    p = star_p;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|byte| *byte == b'*')
}

/// Matches `byte` against the class starting at `pattern[start] == b'['`;
/// the index after the class when it matches.
fn class_match(pattern: &[u8], start: usize, byte: u8) -> Option<usize> {
    let mut index = start + 1;
    let negated = matches!(pattern.get(index), Some(b'!') | Some(b'^'));
    if negated {
        index += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let current = *pattern.get(index)?;
        if current == b']' && !first {
            break;
        }
        first = false;
        if pattern.get(index + 1) == Some(&b'-')
            && pattern.get(index + 2).is_some_and(|b| *b != b']')
        {
            let high = pattern[index + 2];
            matched |= (current..=high).contains(&byte);
            index += 3;
        } else {
            matched |= current == byte;
            index += 1;
        }
    }
    (matched != negated).then_some(index + 1)
}

/// Every distinct `modalias` of the devices under `sys_devices`.
pub fn device_aliases(sys_devices: &Path) -> BTreeSet<String> {
    let mut aliases = BTreeSet::new();
    let mut stack = vec![sys_devices.to_path_buf()];
    while let Some(directory) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            // Symlinks (subsystem, driver, ...) lead back up the tree.
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() && entry.file_name() == "modalias" {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    let text = text.trim();
                    if !text.is_empty() {
                        aliases.insert(text.to_string());
                    }
                }
            }
        }
    }
    aliases
}

/// Loads modules and remembers what is done, so a module is tried once.
pub struct Loader<'a> {
    index: &'a ModuleIndex,
    tried: BTreeSet<String>,
    /// Modules this loader inserted, in order.
    pub loaded: Vec<String>,
    /// What failed, one line each.
    pub errors: Vec<String>,
}

impl<'a> Loader<'a> {
    pub fn new(index: &'a ModuleIndex) -> Loader<'a> {
        Loader {
            index,
            tried: BTreeSet::new(),
            loaded: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Loads `name` after its dependencies; a module that is built in or
    /// already loaded counts as done.
    pub fn load(&mut self, name: &str) {
        for module in self.index.load_order(name) {
            if !self.tried.insert(module.clone()) {
                continue;
            }
            if Path::new("/sys/module")
                .join(&module)
                .join("initstate")
                .exists()
            {
                continue;
            }
            let Some(file) = self.index.file(&module) else {
                // Built in (no file) or not in this index: nothing to load.
                continue;
            };
            match insert_module(&file) {
                Ok(()) => self.loaded.push(module),
                Err(error) => self.errors.push(format!("{module}: {error}")),
            }
        }
    }

    /// Loads the modules of every device present, again and again while
    /// loading makes new devices appear (virtio_pci, then virtio_blk).
    /// The CPU's own aliases (`cpu:type:...`, which bring a dozen optimised
    /// crypto modules, each self-tested at load: seconds under emulation)
    /// are left out unless `with_cpu`: the kernel asks for those modules
    /// itself when something uses them. Returns the number of modules loaded.
    pub fn coldplug(&mut self, sys_devices: &Path, with_cpu: bool) -> usize {
        let before = self.loaded.len();
        let mut seen = BTreeSet::new();
        for _round in 0..8 {
            let mut aliases = device_aliases(sys_devices);
            if !with_cpu {
                aliases.retain(|alias| !alias.starts_with("cpu:"));
            }
            let fresh: Vec<&String> = aliases.difference(&seen).collect();
            if fresh.is_empty() {
                break;
            }
            let mut modules = Vec::new();
            for alias in fresh {
                for module in self.index.modules_for_alias(alias) {
                    if !modules.contains(&module) {
                        modules.push(module);
                    }
                }
            }
            for module in modules {
                self.load(&module);
            }
            seen = aliases;
        }
        self.loaded.len() - before
    }
}

#[cfg(target_os = "linux")]
fn insert_module(file: &Path) -> Result<(), String> {
    let handle =
        std::fs::File::open(file).map_err(|error| format!("{}: {error}", file.display()))?;
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid open fd and an empty NUL-terminated parameter string.
    let result = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            handle.as_raw_fd(),
            c"".as_ptr(),
            0 as libc::c_int,
        )
    };
    if result == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(error.to_string())
    }
}

#[cfg(not(target_os = "linux"))]
fn insert_module(file: &Path) -> Result<(), String> {
    Err(format!("{}: kernel modules are Linux only", file.display()))
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_fnmatch() {
        assert!(glob_match(
            "virtio:d00000002v*",
            "virtio:d00000002v00001AF4"
        ));
        assert!(!glob_match(
            "virtio:d00000002v*",
            "virtio:d00000001v00001AF4"
        ));
        assert!(glob_match(
            "pci:v00001AF4d00001001sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"
        ));
        assert!(glob_match("acpi*:PNP0A0[38]:*", "acpi:PNP0A08:"));
        assert!(!glob_match("acpi*:PNP0A0[38]:*", "acpi:PNP0A05:"));
        assert!(glob_match("a[0-9]c", "a5c"));
        assert!(glob_match("a[!0-9]c", "abc"));
        assert!(!glob_match("a[!0-9]c", "a1c"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("*d", "abcd"));
    }

    #[test]
    fn dependencies_load_first_and_aliases_name_modules() {
        let index = ModuleIndex::parse(
            "kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko\n\
             kernel/fs/mbcache.ko:\nkernel/fs/jbd2/jbd2.ko:\nkernel/lib/crc16.ko:\n\
             kernel/drivers/block/virtio_blk.ko:\n",
            "alias fs-ext4 ext4\nalias virtio:d00000002v* virtio_blk\n",
        );
        assert_eq!(
            index.load_order("ext4"),
            vec!["crc16", "jbd2", "mbcache", "ext4"]
        );
        assert_eq!(
            index.modules_for_alias("virtio:d00000002v00001AF4"),
            vec!["virtio_blk"]
        );
        assert_eq!(index.modules_for_alias("fs-ext4"), vec!["ext4"]);
        assert!(index.contains("virtio-blk"));
    }

    /// Guards the ext4 boot: ext4 needs crc32c, a soft dependency by alias.
    #[test]
    fn soft_dependencies_load_before_and_resolve_aliases() {
        let mut index = ModuleIndex::parse(
            "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\nkernel/fs/jbd2/jbd2.ko:\n\
             kernel/arch/x86/crypto/crc32c-intel.ko:\nkernel/crypto/crc32c_generic.ko:\n",
            "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\n",
        );
        index.pre_softdeps = parse_softdeps(
            "# comment\nsoftdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c post: x\nsoftdep cifs gcm\n",
        );
        assert_eq!(
            index.load_order("ext4"),
            vec!["crc32c_intel", "crc32c_generic", "jbd2", "ext4"]
        );
        assert_eq!(
            index.resolve("crypto-crc32c"),
            vec!["crc32c_intel", "crc32c_generic"]
        );
    }
}
