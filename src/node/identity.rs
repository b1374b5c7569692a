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

/// Compares the machine with the bundle's node and, given `pki` (a staging copy of
/// /etc/kubernetes/pki), with the SANs of the restored kube-apiserver and etcd certificates.
pub fn check(
    machine: &Machine,
    expected: &Expected,
    pki: Option<&Path>,
) -> Result<Vec<Mismatch>, Error> {
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
    let Some(pki) = pki else {
        return Ok(mismatches);
    };
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
                breaks: "kubeadm init reuses an existing certificate without looking at its addresses (cmd/phases/init/certs.go `runCertPhase` only checks its chain), so every client dialing that address would reject it".to_string(),
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
            breaks: "kubeadm init reuses an existing apiserver certificate without looking at its names, so clients dialing the node by name would reject it"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pki_with(sans: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        std::fs::create_dir_all(dir.path().join("etcd")).unwrap();
        for name in ["apiserver.crt", "etcd/server.crt", "etcd/peer.crt"] {
            std::fs::write(dir.path().join(name), &pem).unwrap();
        }
        dir
    }

    fn node() -> (Machine, Expected) {
        (
            Machine {
                hostname: "master0.example.org".into(),
                ips: vec!["10.0.1.10".parse().unwrap()],
            },
            Expected {
                node_name: "master0".into(),
                hostname: "master0".into(),
                advertise_address: Some("10.0.1.10".parse().unwrap()),
            },
        )
    }

    #[test]
    fn the_same_node_passes() {
        let (machine, expected) = node();
        let pki = pki_with(&["master0", "10.0.1.10", "127.0.0.1"]);
        assert_eq!(
            check(&machine, &expected, Some(pki.path())).unwrap(),
            vec![]
        );
    }

    #[test]
    fn certificates_without_the_address_or_name_are_reported_with_consequences() {
        let (machine, expected) = node();
        let pki = pki_with(&["other", "10.0.1.99"]);
        let found = check(&machine, &expected, Some(pki.path())).unwrap();
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(
            found[0].what.contains("apiserver.crt") && found[0].breaks.contains("kubeadm init")
        );
        assert!(found[3].what.contains("\"master0\""));
    }

    #[test]
    fn another_name_or_address_is_reported_before_any_certificate_is_read() {
        let (mut machine, expected) = node();
        machine.hostname = "worker3".into();
        machine.ips = vec!["10.0.1.11".parse().unwrap()];
        let found = check(&machine, &expected, None).unwrap();
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].breaks.contains("register a new Node"));
        assert!(found[1].what.contains("10.0.1.10") && found[1].what.contains("10.0.1.11"));
    }
}
