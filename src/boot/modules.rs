//! Kernel modules without modprobe: the drivers the hardware asks for (device modaliases matched
//! against `modules.alias`), dependencies first (`modules.dep`), loaded with `finit_module`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::host::Host;

/// The module tree of the running kernel: `<root>/lib/modules/<release>`.
pub struct Modules {
    dir: PathBuf,
    /// (pattern, module name), in file order.
    aliases: Vec<(String, String)>,
    /// Module name → (path relative to `dir`, dependency names as modules.dep lists them).
    deps: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
    /// Modules tried already, loaded or not: a driver that refused a device is not tried again.
    tried: HashSet<String>,
}

/// `virtio-net.ko.xz` → `virtio_net`: the kernel treats `-` and `_` in module names alike.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl Modules {
    /// Reads the index files depmod wrote. A kernel without a module tree is not an error: its drivers
    /// are all built in, and an empty index loads nothing.
    pub fn open(root: &Path) -> Modules {
        let release = std::fs::read_to_string(root.join("proc/sys/kernel/osrelease"))
            .map(|r| r.trim().to_string())
            .unwrap_or_default();
        let dir = root.join("lib/modules").join(&release);
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let aliases = read("modules.alias")
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("alias"), Some(pattern), Some(module)) => {
                        Some((pattern.to_string(), module.replace('-', "_")))
                    }
                    _ => None,
                }
            })
            .collect();
        let deps = read("modules.dep")
            .lines()
            .filter_map(|line| {
                let (path, deps) = line.split_once(':')?;
                let deps = deps.split_whitespace().map(module_name).collect();
                Some((module_name(path), (path.to_string(), deps)))
            })
            .collect();
        let builtin = read("modules.builtin").lines().map(module_name).collect();
        if release.is_empty() {
            log::warn!("modules: cannot read the kernel release from /proc; loading no modules");
        }
        Modules {
            dir,
            aliases,
            deps,
            builtin,
            tried: HashSet::new(),
        }
    }

    /// Loads drivers for every device under `<root>/sys/bus/*/devices`, again and again, because a
    /// loaded bus driver (virtio_pci) makes new devices appear (virtio0, virtio1…). Returns how many
    /// modules were tried.
    pub fn load_for_devices(&mut self, host: &dyn Host, root: &Path) -> usize {
        let mut total = 0;
        loop {
            let wanted: Vec<String> = device_modaliases(root)
                .iter()
                .flat_map(|alias| self.matching(alias))
                .collect();
            let mut tried = 0;
            for module in wanted {
                tried += self.load(host, &module);
            }
            if tried == 0 {
                return total;
            }
            total += tried;
        }
    }

    /// Loads the modules behind a symbolic alias such as `fs-ext4` or `crypto-crc32c`, if any.
    pub fn load_alias(&mut self, host: &dyn Host, alias: &str) {
        for module in self.matching(alias) {
            self.load(host, &module);
        }
    }

    fn matching(&self, alias: &str) -> Vec<String> {
        self.aliases
            .iter()
            .filter(|(pattern, module)| !self.builtin.contains(module) && glob(pattern, alias))
            .map(|(_, module)| module.clone())
            .collect()
    }

    /// Loads `module` after its dependencies; returns how many modules it tried.
    fn load(&mut self, host: &dyn Host, module: &str) -> usize {
        if !self.tried.insert(module.to_string()) {
            return 0;
        }
        let Some((path, deps)) = self.deps.get(module).cloned() else {
            log::warn!("modules: {module} is in modules.alias but not in modules.dep; skipping it");
            return 0;
        };
        // modules.dep lists the direct dependency first and the deepest last: load from the end.
        let mut tried = 1;
        for dep in deps.iter().rev() {
            tried += self.load(host, dep);
        }
        match host.load_module(&self.dir.join(&path)) {
            // Shown by default: under Secure Boot lockdown this is the proof that signed drivers load.
            Ok(()) => log::info!("modules: loaded {module}"),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(nix::libc::EKEYREJECTED | nix::libc::ENOKEY)
                ) =>
            {
                log::warn!("modules: {module} was refused ({error}): the kernel is locked down (Secure Boot) and loads only modules signed by its vendor; build the image from the same Debian kernel package as its modules")
            }
            // A driver whose alias matches may still find no device it supports (ENODEV); harmless.
            Err(error) => log::debug!("modules: {module} did not load: {error}"),
        }
        tried
    }
}

/// The modalias of every device on every bus: what drivers the hardware asks for.
fn device_modaliases(root: &Path) -> Vec<String> {
    let mut aliases = Vec::new();
    let Ok(buses) = std::fs::read_dir(root.join("sys/bus")) else {
        return aliases;
    };
    for bus in buses.flatten() {
        let Ok(devices) = std::fs::read_dir(bus.path().join("devices")) else {
            continue;
        };
        for device in devices.flatten() {
            if let Ok(alias) = std::fs::read_to_string(device.path().join("modalias")) {
                aliases.push(alias.trim().to_string());
            }
        }
    }
    aliases.sort();
    aliases.dedup();
    aliases
}

/// fnmatch(3) without flags, as modules.alias patterns use it: `*`, `?` and `[...]` / `[!...]`.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was and which text position it currently swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => class(&p, pi, t[ti]),
            Some(c) if *c == t[ti] => Some(pi + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ti += 1;
            }
            (None, Some((star_pi, star_ti))) => {
                pi = star_pi + 1;
                ti = star_ti + 1;
                star = Some((star_pi, star_ti + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the bracket class starting at `p[start]`; the index after `]` if it matches.
fn class(p: &[char], start: usize, c: char) -> Option<usize> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while let Some(&item) = p.get(i) {
        if item == ']' && !first {
            return (matched != negate).then_some(i + 1);
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|e| *e != ']') {
            matched |= item <= c && c <= p[i + 2];
            i += 3;
        } else {
            matched |= item == c;
            i += 1;
        }
    }
    // An unterminated `[` is a literal character.
    (c == '[').then_some(start + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Recorder;

    #[test]
    fn globs_like_fnmatch() {
        assert!(glob(
            "pci:v00001AF4d00001000sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(glob("virtio:d00000001v*", "virtio:d00000001v00001AF4"));
        assert!(!glob("virtio:d00000002v*", "virtio:d00000001v00001AF4"));
        assert!(glob("acpi*:PNP0[Aa]0[0-3]:*", "acpi:PNP0a03:"));
        assert!(!glob("acpi*:PNP0[!Aa]0[0-3]:*", "acpi:PNP0A03:"));
        assert!(glob("a?c", "abc") && !glob("a?c", "ac"));
        assert!(glob("*", "") && !glob("x", ""));
    }

    /// A fake module tree and sysfs where loading virtio_pci makes a virtio-net device appear.
    fn tree(root: &Path) {
        let write = |path: &str, text: &str| {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("proc/sys/kernel/osrelease", "6.1.0-test\n");
        let m = "lib/modules/6.1.0-test/";
        write(&format!("{m}modules.dep"), "kernel/virtio_pci.ko: kernel/virtio_pci_modern_dev.ko kernel/virtio.ko kernel/virtio_ring.ko\nkernel/virtio_pci_modern_dev.ko:\nkernel/virtio.ko: kernel/virtio_ring.ko\nkernel/virtio_ring.ko:\nkernel/virtio_net.ko: kernel/net_failover.ko kernel/failover.ko kernel/virtio.ko kernel/virtio_ring.ko\nkernel/net_failover.ko: kernel/failover.ko\nkernel/failover.ko:\nkernel/e1000.ko:\n");
        write(&format!("{m}modules.alias"), "# Aliases\nalias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\nalias virtio:d00000001v* virtio_net\nalias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\nalias fs-ext4 ext4\n");
        write(&format!("{m}modules.builtin"), "kernel/fs/ext4/ext4.ko\n");
        write(
            "sys/bus/pci/devices/0000:00:03.0/modalias",
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n",
        );
        write(
            "sys/bus/pci/devices/0000:00:01.0/modalias",
            "pci:v00008086d00007000sv0000sd0000bc06sc01i00\n",
        );
    }

    fn loaded(host: &Recorder) -> Vec<String> {
        host.calls()
            .iter()
            .map(|c| module_name(c.trim_start_matches("module ")))
            .collect()
    }

    #[test]
    fn loads_drivers_dependencies_first_until_no_new_device_appears() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let host = Recorder::default();
        let mut modules = Modules::open(dir.path());
        // First pass: only the PCI device exists.
        modules.load_for_devices(&host, dir.path());
        assert_eq!(
            loaded(&host),
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci"
            ]
        );
        // virtio_pci probed the device and a virtio bus device appeared; each module loads once.
        std::fs::create_dir_all(dir.path().join("sys/bus/virtio/devices/virtio0")).unwrap();
        std::fs::write(
            dir.path().join("sys/bus/virtio/devices/virtio0/modalias"),
            "virtio:d00000001v00001AF4\n",
        )
        .unwrap();
        assert_eq!(modules.load_for_devices(&host, dir.path()), 3);
        assert_eq!(
            loaded(&host)[4..],
            ["failover", "net_failover", "virtio_net"]
        );
        assert_eq!(modules.load_for_devices(&host, dir.path()), 0);
        // A built-in module is never loaded from a file.
        modules.load_alias(&host, "fs-ext4");
        assert_eq!(loaded(&host).len(), 7);
        assert!(host.calls()[0].starts_with(&format!(
            "module {}",
            dir.path().join("lib/modules/6.1.0-test/kernel").display()
        )));
    }
}
