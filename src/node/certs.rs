//! What kubeadm's certificates say: names, addresses and expiry, read from PEM files.

use std::net::IpAddr;
use std::path::Path;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use super::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub not_after: OffsetDateTime,
}

impl CertInfo {
    pub fn covers_ip(&self, ip: &IpAddr) -> bool {
        self.ips.contains(ip)
    }

    pub fn covers_dns(&self, name: &str) -> bool {
        self.dns_names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// The first certificate of a PEM file.
pub fn read_cert(path: &Path) -> Result<CertInfo, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_cert(&bytes, path)
}

pub fn parse_cert(pem_bytes: &[u8], path: &Path) -> Result<CertInfo, Error> {
    let invalid = |why: String| Error::Certificate {
        path: path.to_path_buf(),
        why,
    };
    let pem = Pem::iter_from_buffer(pem_bytes)
        .next()
        .ok_or_else(|| invalid("no PEM block".to_string()))?
        .map_err(|e| invalid(format!("not PEM: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| invalid(format!("not an X.509 certificate: {e}")))?;
    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_names.push(dns.to_string()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(octets) = <[u8; 4]>::try_from(*bytes) {
                        ips.push(IpAddr::from(octets));
                    } else if let Ok(octets) = <[u8; 16]>::try_from(*bytes) {
                        ips.push(IpAddr::from(octets));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        dns_names,
        ips,
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// kubeadm's certificate authorities, relative to the pki dir without `.crt` (phases/certs/certlist.go).
/// `kubeadm init` uses an existing one as it is (cmd/phases/init/certs.go `runCAPhase`) and cannot renew it.
pub const AUTHORITIES: [&str; 3] = ["ca", "front-proxy-ca", "etcd/ca"];

/// The leaf certificates `kubeadm init` signs with a restored CA when their `.crt` is missing
/// (certlist.go `GetDefaultCertList` with a local etcd; certs.go `runCertPhase`). An existing one is
/// only checked to chain to its CA (`pkiutil.VerifyCertChain`), and an expired one fails that check.
pub const KUBEADM_LEAVES: [&str; 7] = [
    "apiserver",
    "apiserver-kubelet-client",
    "front-proxy-client",
    "etcd/server",
    "etcd/peer",
    "etcd/healthcheck-client",
    "apiserver-etcd-client",
];

/// A certificate of the pki dir (its name as in `AUTHORITIES`/`KUBEADM_LEAVES`) and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub name: String,
    pub not_after: OffsetDateTime,
}

/// Expiry of kubeadm's certificates under `pki` at `now`: the authorities that have expired, and the
/// leaves that have expired or expire within `warn_days`. Missing files are not kubeadm's problem here
/// (it generates missing leaves); an unreadable one is an error.
pub fn expiring(
    pki: &Path,
    now: OffsetDateTime,
    warn_days: u32,
) -> Result<(Vec<Expiry>, Vec<Expiry>), Error> {
    let read = |names: &[&str], counts: &dyn Fn(Due) -> bool| -> Result<Vec<Expiry>, Error> {
        let mut found = Vec::new();
        for name in names {
            let path = pki.join(format!("{name}.crt"));
            if !path.exists() {
                continue;
            }
            let info = read_cert(&path)?;
            if due(info.not_after, now, warn_days).is_some_and(counts) {
                found.push(Expiry {
                    name: name.to_string(),
                    not_after: info.not_after,
                });
            }
        }
        Ok(found)
    };
    // As `cpr check` rates them.
    let authorities = read(&AUTHORITIES, &|due| due == Due::Expired)?;
    let leaves = read(&KUBEADM_LEAVES, &|_| true)?;
    Ok((authorities, leaves))
}

/// How near a certificate is to its end: expired at `not_after <= now`, soon within `warn_days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Expired,
    Soon,
}

/// Whether a certificate ending at `not_after` is expired or due within `warn_days` at `now`.
pub fn due(not_after: OffsetDateTime, now: OffsetDateTime, warn_days: u32) -> Option<Due> {
    if not_after <= now {
        Some(Due::Expired)
    } else if not_after - now < time::Duration::days(i64::from(warn_days)) {
        Some(Due::Soon)
    } else {
        None
    }
}
