//! The `cpr.*` keys of the kernel command line: what a recovery boot is told by its boot loader.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::Error;

/// What to do when the recovery cannot finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// A shell on the console when the image has one; otherwise the message stays on screen.
    Shell,
    Reboot,
    PowerOff,
}

impl std::fmt::Display for Policy {
    /// The word `cpr.on_failure=` takes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Shell => "shell",
            Policy::Reboot => "reboot",
            Policy::PowerOff => "poweroff",
        })
    }
}

/// Which block device holds the target's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSpec {
    Label(String),
    /// Lowercase, with dashes, as blkid prints it.
    Uuid(String),
    Device(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpConfig {
    Dhcp,
    Static {
        address: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
    },
}

/// A static address on a NIC other than the first (`cpr.ip.IFACE=ADDRESS/PREFIX`): a node whose
/// cluster address is on a second network, the first one reaching the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgs {
    pub store: Option<String>,
    pub bundle: Option<String>,
    /// The cluster whose bundles to consider: a plain HTTP store cannot be listed, so "latest" needs it.
    pub cluster: Option<String>,
    /// This machine's hostname, when DHCP does not give the node's.
    pub hostname: Option<String>,
    /// Retries of a failed store request; the store's default when absent.
    pub retries: Option<u32>,
    pub root: Option<RootSpec>,
    pub ip: IpConfig,
    /// `cpr.ip.IFACE=` addresses, in the order given, one per interface.
    pub interface_ips: Vec<InterfaceAddress>,
    pub on_failure: Policy,
    pub log: Option<log::LevelFilter>,
    pub init: PathBuf,
    /// Key files inside the image, passed on to the restore.
    pub identity: Option<PathBuf>,
    pub verify_key: Option<PathBuf>,
    /// Restore onto this machine's own address and name (`cpr.new_address=1`).
    pub new_address: bool,
    /// Seconds the members of a several-member cluster are probed for a quorum (`cpr.quorum_probe=`).
    pub quorum_probe: Option<u64>,
    /// Restore a lost quorum from the bundles though members survive (`cpr.discard_survivors=1`).
    pub discard_survivors: bool,
}

impl Default for BootArgs {
    fn default() -> Self {
        BootArgs {
            store: None,
            bundle: None,
            cluster: None,
            hostname: None,
            retries: None,
            root: None,
            ip: IpConfig::Dhcp,
            interface_ips: Vec::new(),
            on_failure: Policy::Shell,
            log: None,
            init: PathBuf::from("/sbin/init"),
            identity: None,
            verify_key: None,
            new_address: false,
            quorum_probe: None,
            discard_survivors: false,
        }
    }
}

impl BootArgs {
    /// Parses the `cpr.*` words of `/proc/cmdline`; other words belong to the kernel and are ignored.
    /// The failure policy is read first and kept even when another key is invalid, so a typo in one
    /// key still fails the way the operator asked.
    pub fn parse(cmdline: &str) -> (BootArgs, Result<(), Error>) {
        let mut args = BootArgs::default();
        let words = split(cmdline);
        let pairs: Vec<(&str, &str)> = words
            .iter()
            .filter_map(|w| w.strip_prefix("cpr."))
            .map(|w| w.split_once('=').unwrap_or((w, "")))
            .collect();
        let mut result = Ok(());
        if let Some((_, value)) = pairs.iter().rev().find(|(k, _)| *k == "on_failure") {
            match parse_policy(value) {
                Ok(policy) => args.on_failure = policy,
                Err(error) => result = Err(error),
            }
        }
        for (key, value) in pairs {
            if let Err(error) = args.set(key, value) {
                result = result.and(Err(error));
            }
        }
        (args, result)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let path = || Some(PathBuf::from(value));
        match key {
            "store" => self.store = Some(nonempty(key, value)?.to_string()),
            // `latest`, as for `cpr restore --bundle`, is the same as no name.
            "bundle" => {
                self.bundle = Some(nonempty(key, value)?.to_string()).filter(|b| b != "latest")
            }
            "cluster" => self.cluster = Some(nonempty(key, value)?.to_string()),
            "hostname" => self.hostname = Some(nonempty(key, value)?.to_string()),
            "retries" => {
                self.retries = Some(
                    value
                        .parse()
                        .map_err(|_| invalid(key, value, "use a number of retries, e.g. 10"))?,
                )
            }
            "root" => self.root = Some(parse_root(value)?),
            "ip" => self.ip = parse_ip(key, value)?,
            _ if key.starts_with("ip.") => {
                let found = parse_interface_ip(key, value)?;
                self.interface_ips
                    .retain(|i| i.interface != found.interface);
                self.interface_ips.push(found);
            }
            "on_failure" => {}
            "log" => {
                self.log =
                    Some(value.parse().map_err(|_| {
                        invalid(key, value, "use error, warn, info, debug or trace")
                    })?)
            }
            "init" => self.init = PathBuf::from(absolute(key, value)?),
            "identity" => self.identity = path().filter(|_| !value.is_empty()),
            "verify_key" => self.verify_key = path().filter(|_| !value.is_empty()),
            "new_address" => {
                self.new_address = switch(
                    key,
                    value,
                    "use 1 to restore onto this machine's own address and name, or 0",
                )?
            }
            "quorum_probe" => {
                self.quorum_probe = Some(
                    value
                        .parse()
                        .map_err(|_| invalid(key, value, "use a number of seconds, e.g. 30"))?,
                )
            }
            "discard_survivors" => self.discard_survivors = switch(
                key,
                value,
                "use 1 to restore a lost quorum from the bundles though members still run, or 0",
            )?,
            _ => log::warn!("kernel command line: ignoring unknown key cpr.{key}"),
        }
        Ok(())
    }
}

/// A bare `cpr.KEY` reads as on, as kernel boolean parameters do.
fn switch(key: &str, value: &str, advice: &str) -> Result<bool, Error> {
    match value {
        "" | "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(invalid(key, value, advice)),
    }
}

/// Kernel command-line words: separated by spaces, double quotes keep spaces inside a value.
fn split(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn invalid(key: &str, value: &str, why: &str) -> Error {
    Error::Cmdline {
        key: format!("cpr.{key}"),
        value: value.to_string(),
        why: why.to_string(),
    }
}

fn nonempty<'v>(key: &str, value: &'v str) -> Result<&'v str, Error> {
    if value.is_empty() {
        Err(invalid(key, value, "it needs a value"))
    } else {
        Ok(value)
    }
}

fn absolute<'v>(key: &str, value: &'v str) -> Result<&'v str, Error> {
    if value.starts_with('/') {
        Ok(value)
    } else {
        Err(invalid(key, value, "it must be an absolute path"))
    }
}

fn parse_policy(value: &str) -> Result<Policy, Error> {
    match value {
        "shell" => Ok(Policy::Shell),
        "reboot" => Ok(Policy::Reboot),
        "poweroff" => Ok(Policy::PowerOff),
        _ => Err(invalid(
            "on_failure",
            value,
            "use shell, reboot or poweroff",
        )),
    }
}

fn parse_root(value: &str) -> Result<RootSpec, Error> {
    if let Some(label) = value.strip_prefix("LABEL=") {
        Ok(RootSpec::Label(nonempty("root", label)?.to_string()))
    } else if let Some(uuid) = value.strip_prefix("UUID=") {
        Ok(RootSpec::Uuid(nonempty("root", uuid)?.to_ascii_lowercase()))
    } else if value.starts_with("/dev/") {
        Ok(RootSpec::Device(PathBuf::from(value)))
    } else {
        Err(invalid(
            "root",
            value,
            "use LABEL=name, UUID=uuid or a /dev/ path",
        ))
    }
}

/// `dhcp`, or `ADDRESS/PREFIX` with an optional `:GATEWAY`.
fn parse_ip(key: &str, value: &str) -> Result<IpConfig, Error> {
    if value == "dhcp" {
        return Ok(IpConfig::Dhcp);
    }
    let bad = || {
        invalid(
            key,
            value,
            "use dhcp or ADDRESS/PREFIX[:GATEWAY], e.g. 192.0.2.10/24:192.0.2.1",
        )
    };
    let (network, gateway) = match value.split_once(':') {
        Some((network, gateway)) => (network, Some(gateway.parse().map_err(|_| bad())?)),
        None => (value, None),
    };
    let (address, prefix) = network.split_once('/').ok_or_else(bad)?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
    Ok(IpConfig::Static {
        address: address.parse().map_err(|_| bad())?,
        prefix,
        gateway,
    })
}

/// `cpr.ip.IFACE=ADDRESS/PREFIX`: a static address without gateway, since the default route (to the
/// store) is the first interface's.
fn parse_interface_ip(key: &str, value: &str) -> Result<InterfaceAddress, Error> {
    let interface = &key["ip.".len()..];
    // The kernel's limit (IFNAMSIZ less the NUL); a name is one path component of /sys/class/net.
    if interface.is_empty() || interface.len() > 15 || interface.contains('/') {
        return Err(invalid(
            key,
            value,
            "name the interface after cpr.ip., as the kernel does: cpr.ip.eth1=10.0.0.5/24",
        ));
    }
    match parse_ip(key, value)? {
        IpConfig::Static {
            address,
            prefix,
            gateway: None,
        } => Ok(InterfaceAddress {
            interface: interface.to_string(),
            address,
            prefix,
        }),
        _ => Err(invalid(
            key,
            value,
            "use ADDRESS/PREFIX without a gateway: DHCP and the default route belong to the first interface (cpr.ip=)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_key_and_ignores_the_kernels_own() {
        let (args, result) = BootArgs::parse(
            "console=ttyS0 quiet cpr.store=http://10.0.2.100/b cpr.bundle=prod/m0/x.tar.zst cpr.hostname=m0 cpr.cluster=prod cpr.retries=9 \
             cpr.root=LABEL=target cpr.ip=192.0.2.10/24:192.0.2.1 cpr.on_failure=poweroff \
             cpr.log=debug cpr.init=/lib/systemd/systemd cpr.identity=/etc/cpr/age.key \
             cpr.verify_key=/etc/cpr/minisign.pub\n",
        );
        result.unwrap();
        assert_eq!(args.store.as_deref(), Some("http://10.0.2.100/b"));
        assert_eq!(args.bundle.as_deref(), Some("prod/m0/x.tar.zst"));
        assert_eq!(args.hostname.as_deref(), Some("m0"));
        assert_eq!(args.cluster.as_deref(), Some("prod"));
        assert_eq!(args.retries, Some(9));
        assert_eq!(args.root, Some(RootSpec::Label("target".into())));
        assert_eq!(
            args.ip,
            IpConfig::Static {
                address: "192.0.2.10".parse().unwrap(),
                prefix: 24,
                gateway: Some("192.0.2.1".parse().unwrap()),
            }
        );
        assert_eq!(args.on_failure, Policy::PowerOff);
        assert_eq!(args.log, Some(log::LevelFilter::Debug));
        assert_eq!(args.init, PathBuf::from("/lib/systemd/systemd"));
        assert_eq!(args.identity, Some(PathBuf::from("/etc/cpr/age.key")));
        assert_eq!(
            args.verify_key,
            Some(PathBuf::from("/etc/cpr/minisign.pub"))
        );
    }

    #[test]
    fn defaults_to_dhcp_a_shell_and_sbin_init() {
        let (args, result) = BootArgs::parse("root=/dev/sda1 ro");
        result.unwrap();
        assert_eq!(args, BootArgs::default());
        assert_eq!(args.ip, IpConfig::Dhcp);
        assert_eq!(args.on_failure, Policy::Shell);
    }

    #[test]
    fn new_address_is_a_switch_and_anything_else_is_named() {
        for (word, on) in [
            ("cpr.new_address=1", true),
            ("cpr.new_address", true),
            ("cpr.new_address=0", false),
        ] {
            let (args, result) = BootArgs::parse(word);
            result.unwrap();
            assert_eq!(args.new_address, on, "{word}");
        }
        let (_, result) = BootArgs::parse("cpr.new_address=maybe");
        assert!(result.unwrap_err().to_string().contains("cpr.new_address"));
    }

    #[test]
    fn a_lost_quorums_keys_are_read_and_bad_values_named() {
        let (args, result) = BootArgs::parse("cpr.quorum_probe=45 cpr.discard_survivors");
        result.unwrap();
        assert_eq!(
            (args.quorum_probe, args.discard_survivors),
            (Some(45), true)
        );
        let (args, _) = BootArgs::parse("quiet");
        assert_eq!((args.quorum_probe, args.discard_survivors), (None, false));
        for word in ["cpr.quorum_probe=soon", "cpr.discard_survivors=maybe"] {
            let (_, result) = BootArgs::parse(word);
            let error = result.unwrap_err().to_string();
            assert!(error.contains(&word[..word.find('=').unwrap()]), "{error}");
        }
    }

    #[test]
    fn further_interfaces_take_static_addresses_and_bad_ones_are_named() {
        let (args, result) = BootArgs::parse(
            "cpr.ip.eth1=10.77.0.2/24 cpr.ip.eth2=192.0.2.9/28 cpr.ip.eth1=10.77.0.1/24",
        );
        result.unwrap();
        let address = |interface: &str, address: &str, prefix| InterfaceAddress {
            interface: interface.to_string(),
            address: address.parse().unwrap(),
            prefix,
        };
        assert_eq!(
            args.interface_ips,
            [
                address("eth2", "192.0.2.9", 28),
                address("eth1", "10.77.0.1", 24)
            ]
        );
        assert_eq!(args.ip, IpConfig::Dhcp);
        for (word, advice) in [
            ("cpr.ip.eth1=dhcp", "without a gateway"),
            ("cpr.ip.eth1=10.0.0.5/24:10.0.0.1", "without a gateway"),
            ("cpr.ip.eth1=10.0.0.5", "ADDRESS/PREFIX"),
            ("cpr.ip.=10.0.0.5/24", "name the interface"),
            ("cpr.ip.a/b=10.0.0.5/24", "name the interface"),
        ] {
            let (_, result) = BootArgs::parse(word);
            let error = result.unwrap_err().to_string();
            assert!(
                error.contains(&word[..word.find('=').unwrap()]) && error.contains(advice),
                "{word}: {error}"
            );
        }
    }

    #[test]
    fn uuids_and_devices_and_quoted_values() {
        let (args, _) = BootArgs::parse("cpr.root=UUID=0A1B-C2D3 cpr.bundle=\"a b\"");
        assert_eq!(args.root, Some(RootSpec::Uuid("0a1b-c2d3".into())));
        assert_eq!(args.bundle.as_deref(), Some("a b"));
        let (args, _) = BootArgs::parse("cpr.root=/dev/vda cpr.ip=dhcp cpr.bundle=latest");
        assert_eq!(args.root, Some(RootSpec::Device("/dev/vda".into())));
        assert_eq!(args.bundle, None);
    }

    #[test]
    fn a_bad_key_is_named_but_the_failure_policy_still_holds() {
        let (args, result) = BootArgs::parse("cpr.ip=10.0.0.1 cpr.root=sda1 cpr.on_failure=reboot");
        assert_eq!(args.on_failure, Policy::Reboot);
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains("cpr.ip") && message.contains("ADDRESS/PREFIX"),
            "{message}"
        );
        let (args, result) = BootArgs::parse("cpr.on_failure=explode");
        assert_eq!(args.on_failure, Policy::Shell);
        assert!(result
            .unwrap_err()
            .to_string()
            .contains("shell, reboot or poweroff"));
    }
}
