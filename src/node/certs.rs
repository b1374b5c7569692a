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
