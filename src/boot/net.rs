//! Network up: loopback, then the first Ethernet interface by DHCP or by `cpr.ip=`, then the
//! interfaces that `cpr.ip.IFACE=` names, with their static addresses.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use super::cmdline::{InterfaceAddress, IpConfig};
use super::modules::Modules;
use super::Error;
use crate::host::Host;

const DHCP_RETRY: Duration = Duration::from_secs(2);
const DHCP_TIMEOUT: Duration = Duration::from_secs(20);

/// Ethernet interfaces (sysfs type 1), loopback excluded, by name.
fn ethernet_interfaces(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("sys/class/net"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("type")).is_ok_and(|t| t.trim() == "1")
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn mac(root: &Path, interface: &str) -> [u8; 6] {
    let text = std::fs::read_to_string(root.join("sys/class/net").join(interface).join("address"))
        .unwrap_or_default();
    let mut mac = [0u8; 6];
    for (slot, byte) in mac.iter_mut().zip(text.trim().split(':')) {
        *slot = u8::from_str_radix(byte, 16).unwrap_or(0);
    }
    mac
}

/// What `up` configured.
#[derive(Debug)]
pub struct Network {
    pub interface: String,
    pub address: Ipv4Addr,
    /// The hostname DHCP gave, already set in the kernel.
    pub hostname: Option<String>,
    /// The further interfaces configured, with their addresses.
    pub more: Vec<InterfaceAddress>,
}

impl Network {
    /// Every address this machine has now: the first interface's, then the others'.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        std::iter::once(self.address)
            .chain(self.more.iter().map(|i| i.address))
            .collect()
    }
}

/// Brings the network up: the first NIC as `config` says, then each of `more`. Waits up to `wait`
/// for the NICs to appear, loading drivers meanwhile.
pub fn up(
    host: &dyn Host,
    root: &Path,
    modules: &mut Modules,
    config: &IpConfig,
    more: &[InterfaceAddress],
    wait: Duration,
) -> Result<Network, Error> {
    let net_err = |interface: &str, step: &str, source: std::io::Error| Error::Network {
        interface: interface.to_string(),
        step: step.to_string(),
        source,
    };
    host.link_up("lo")
        .map_err(|e| net_err("lo", "bringing it up", e))?;
    let deadline = Instant::now() + wait;
    let interface = loop {
        modules.load_for_devices(host, root);
        if let Some(first) = ethernet_interfaces(root).into_iter().next() {
            break first;
        }
        if Instant::now() >= deadline {
            return Err(Error::NoInterface {
                waited: wait.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    host.link_up(&interface)
        .map_err(|e| net_err(&interface, "bringing it up", e))?;
    let (address, prefix, gateway, hostname) = match config {
        IpConfig::Static {
            address,
            prefix,
            gateway,
        } => (*address, *prefix, *gateway, None),
        IpConfig::Dhcp => {
            log::info!("network: asking for an address by DHCP on {interface}");
            let socket = host
                .dhcp_socket(&interface)
                .map_err(|e| net_err(&interface, "opening the DHCP socket", e))?;
            let server = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
            let lease = super::dhcp::acquire(
                &socket,
                server,
                mac(root, &interface),
                DHCP_RETRY,
                DHCP_TIMEOUT,
            )
            .map_err(|e| net_err(&interface, "DHCP", e))?;
            if let Some(warning) = &lease.hostname_warning {
                log::warn!("network: {warning}");
            }
            if let Some(name) = &lease.hostname {
                host.set_hostname(name)
                    .map_err(|e| net_err(&interface, "setting the DHCP hostname", e))?;
            }
            (lease.address, lease.prefix, lease.gateway, lease.hostname)
        }
    };
    host.configure_ipv4(&interface, address, prefix, gateway)
        .map_err(|e| net_err(&interface, &format!("setting {address}/{prefix}"), e))?;
    let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
    log::info!("network: {interface} has {address}/{prefix}{via}");
    for other in more {
        if other.interface == interface {
            return Err(Error::Cmdline {
                key: format!("cpr.ip.{}", other.interface),
                value: format!("{}/{}", other.address, other.prefix),
                why: format!("{interface} is the first interface, which cpr.ip= configures; name another one"),
            });
        }
        while !root.join("sys/class/net").join(&other.interface).exists() {
            if Instant::now() >= deadline {
                return Err(Error::MissingInterface {
                    interface: other.interface.clone(),
                    waited: wait.as_secs(),
                    seen: ethernet_interfaces(root).join(", "),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
            modules.load_for_devices(host, root);
        }
        let (name, address, prefix) = (&other.interface, other.address, other.prefix);
        host.link_up(name)
            .map_err(|e| net_err(name, "bringing it up", e))?;
        host.configure_ipv4(name, address, prefix, None)
            .map_err(|e| net_err(name, &format!("setting {address}/{prefix}"), e))?;
        log::info!("network: {name} has {address}/{prefix}");
    }
    Ok(Network {
        interface,
        address,
        hostname,
        more: more.to_vec(),
    })
}

/// Gives the NIC back as the firmware left it, without address and down, before the handoff: the
/// target's udev renames only interfaces that are down (eth0 → ens3), and its network manager
/// waits for the interfaces it names (systemd-networkd-wait-online: two minutes for a NIC it never
/// configures). Failing to is only a warning: the target still boots, more slowly.
pub fn release(host: &dyn Host, network: &Network) {
    let interfaces =
        std::iter::once(&network.interface).chain(network.more.iter().map(|i| &i.interface));
    for interface in interfaces {
        match host.link_down(interface) {
            Ok(()) => log::info!(
                "network: {interface} released for the target's own network configuration"
            ),
            Err(error) => log::warn!(
                "network: could not take {interface} down before the handoff ({error}); the target's network manager may wait for it"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Recorder;

    #[test]
    fn configures_the_first_ethernet_interface_statically() {
        let root = tempfile::tempdir().unwrap();
        for (name, kind) in [
            ("lo", "772"),
            ("eth1", "1"),
            ("eth0", "1"),
            ("wg0", "65534"),
        ] {
            let dir = root.path().join("sys/class/net").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("type"), format!("{kind}\n")).unwrap();
        }
        let host = Recorder::default();
        let mut modules = Modules::open(root.path());
        let config = IpConfig::Static {
            address: Ipv4Addr::new(192, 0, 2, 10),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(192, 0, 2, 1)),
        };
        let network = up(
            &host,
            root.path(),
            &mut modules,
            &config,
            &[],
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(
            (network.interface.as_str(), network.address),
            ("eth0", Ipv4Addr::new(192, 0, 2, 10))
        );
        assert_eq!(
            host.calls(),
            [
                "up lo",
                "up eth0",
                "ip eth0 192.0.2.10/24 via Some(192.0.2.1)"
            ]
        );
    }

    /// The node's cluster address on a second NIC: both configured, both its addresses, both
    /// released; a NIC that never appears, or the first one named again, is refused by name.
    #[test]
    fn configures_a_second_interface_statically_and_releases_both() {
        let root = tempfile::tempdir().unwrap();
        for name in ["eth0", "eth1"] {
            let dir = root.path().join("sys/class/net").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("type"), "1\n").unwrap();
        }
        let host = Recorder::default();
        let mut modules = Modules::open(root.path());
        let first = IpConfig::Static {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            gateway: None,
        };
        let second = |interface: &str| InterfaceAddress {
            interface: interface.to_string(),
            address: Ipv4Addr::new(10, 77, 0, 2),
            prefix: 24,
        };
        let network = up(
            &host,
            root.path(),
            &mut modules,
            &first,
            &[second("eth1")],
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(
            network.addresses(),
            [Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 77, 0, 2)]
        );
        release(&host, &network);
        assert_eq!(
            host.calls(),
            [
                "up lo",
                "up eth0",
                "ip eth0 10.0.2.15/24 via None",
                "up eth1",
                "ip eth1 10.77.0.2/24 via None",
                "down eth0",
                "down eth1"
            ]
        );
        for (interface, refusal) in [
            (
                "eth2",
                "cpr.ip.eth2= names an interface that did not appear",
            ),
            ("eth0", "eth0 is the first interface"),
        ] {
            let error = up(
                &Recorder::default(),
                root.path(),
                &mut modules,
                &first,
                &[second(interface)],
                Duration::ZERO,
            )
            .unwrap_err()
            .to_string();
            assert!(
                error.contains(refusal) && error.contains("eth0, eth1") == (interface == "eth2"),
                "{error}"
            );
        }
    }

    #[test]
    fn release_takes_the_interface_down_for_the_target() {
        let host = Recorder::default();
        let network = Network {
            interface: "eth0".to_string(),
            address: Ipv4Addr::new(10, 0, 2, 15),
            hostname: None,
            more: Vec::new(),
        };
        release(&host, &network);
        assert_eq!(host.calls(), ["down eth0"]);
    }

    #[test]
    fn says_so_when_no_network_card_appears() {
        let root = tempfile::tempdir().unwrap();
        let mut modules = Modules::open(root.path());
        let error = up(
            &Recorder::default(),
            root.path(),
            &mut modules,
            &IpConfig::Dhcp,
            &[],
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("no network interface"),
            "{error}"
        );
    }
}
