//! Certificates with a chosen expiry, for tests of what cpr does with old ones (OpenSSL 3.0's `x509`
//! has no `-not_after`; rcgen sets any validity).

use std::path::Path;

/// Valid from 400 days ago until `days` from now (negative: expired that many days ago).
fn valid_until(params: &mut rcgen::CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(400);
    params.not_after = now + time::Duration::days(days);
}

/// A self-signed certificate for `name`, valid until `days` from now, as PEM.
pub fn cert_expiring_in(days: i64, name: &str) -> String {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    valid_until(&mut params, days);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

/// Replaces the leaf `<pki>/<name>.crt` and `.key` with a new pair signed by `<pki>/<ca>.crt` and its
/// key, for `cn` with `sans` (DNS names and IP addresses), valid until `days` from now: what a node's
/// kubeadm-made leaf looks like a year on.
pub fn reissue_leaf(pki: &Path, name: &str, ca: &str, cn: &str, sans: &[&str], days: i64) {
    let read = |file: String| std::fs::read_to_string(pki.join(file)).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&read(format!("{ca}.key"))).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read(format!("{ca}.crt")), ca_key).unwrap();
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    valid_until(&mut params, days);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(pki.join(format!("{name}.crt")), cert.pem()).unwrap();
    std::fs::write(pki.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}
