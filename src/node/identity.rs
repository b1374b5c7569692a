//! Is this machine the node the backup was taken from? A restored control plane only works on a
//! machine with the same name and address: the certificates, the etcd member's peer URL and the Node
//! object all carry them.

use std::net::IpAddr;
use std::path::Path;

use super::certs::read_cert;
use super::Error;

/// This machine, as the kernel (or the recovery boot's network set-up) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub hostname: String,
    pub ips: Vec<IpAddr>,
}

/// The node of the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub node_name: String,
    pub hostname: String,
    pub advertise_address: Option<IpAddr>,
}

/// One difference and what it would break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub what: String,
    pub breaks: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", self.what, self.breaks)
    }
}

/// Compares the machine with the bundle's node and with the SANs of the restored kube-apiserver and
/// etcd certificates below `pki` (a staging copy of /etc/kubernetes/pki).
pub fn check(machine: &Machine, expected: &Expected, pki: &Path) -> Result<Vec<Mismatch>, Error> {
    let mut mismatches = Vec::new();
    let short = machine.hostname.split('.').next().unwrap_or_default();
    let same_host = [expected.hostname.as_str(), expected.node_name.as_str()]
        .iter()
        .any(|name| {
            name.eq_ignore_ascii_case(&machine.hostname) || name.eq_ignore_ascii_case(short)
        });
    if !same_host {
        mismatches.push(Mismatch {
            what: format!(
                "this machine is named {:?}, the bundle's node is {:?} (hostname {:?})",
                machine.hostname, expected.node_name, expected.hostname
            ),
            breaks: format!(
                "kubelet would register a new Node {:?} while the restored cluster expects {:?}; set the hostname to {:?} first",
                machine.hostname, expected.node_name, expected.node_name
            ),
        });
    }
    let Some(address) = expected.advertise_address else {
        return Ok(mismatches);
    };
    if !machine.ips.contains(&address) {
        mismatches.push(Mismatch {
            what: format!(
                "the bundle's advertise address {address} is not configured on this machine (it has {})",
                join(&machine.ips)
            ),
            breaks: format!(
                "kube-apiserver would advertise and etcd would serve its peer URL on an address this machine does not have; configure {address} first"
            ),
        });
    }
    for (cert, role) in [
        ("apiserver.crt", "kube-apiserver's serving certificate"),
        ("etcd/server.crt", "etcd's serving certificate"),
        ("etcd/peer.crt", "etcd's peer certificate"),
    ] {
        let path = pki.join(cert);
        if !path.exists() {
            continue;
        }
        let info = read_cert(&path)?;
        if !info.covers_ip(&address) {
            mismatches.push(Mismatch {
                what: format!(
                    "{role} ({cert}) is not valid for {address} (its IPs: {})",
                    join(&info.ips)
                ),
                breaks: "kubeadm init refuses an existing certificate without the node's address, and clients would reject it".to_string(),
            });
        }
    }
    let apiserver = pki.join("apiserver.crt");
    if apiserver.exists() && !read_cert(&apiserver)?.covers_dns(&expected.node_name) {
        mismatches.push(Mismatch {
            what: format!(
                "kube-apiserver's serving certificate is not valid for the name {:?}",
                expected.node_name
            ),
            breaks: "kubeadm init refuses an existing apiserver certificate without the node name"
                .to_string(),
        });
    }
    Ok(mismatches)
}

fn join(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        return "none".to_string();
    }
    ips.iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
