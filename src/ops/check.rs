//! `cpr check`: would a backup work on this node now, and when do the certificates expire — on the
//! node, or in a bundle (restoring expired certificates brings back a cluster that cannot talk to
//! itself).

use serde::Serialize;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

use super::backup::{
    client_endpoint, client_tls, collect_files, encryption_configurations, unencrypted_keys,
};
use super::Error;
use crate::bundle::{read_bundle, FileEntry, FrameChecksum, Sink, SnapshotEntry};
use crate::etcd::client::EtcdClient;
use crate::node::certs::{self, parse_cert, Due};
use crate::node::inputs::is_encryption_configuration;
use crate::node::kubeconfig::Kubeconfig;
use crate::node::layout::{self, Layout};
use crate::node::StaticPod;
use crate::store::{human_bytes, Store};

/// Days before expiry from which a certificate is reported (`cpr check --warn-days`), and within which
/// `cpr finish` has kubeadm regenerate a restored leaf certificate.
pub const CERT_WARN_DAYS: u32 = 30;

/// The kubeconfigs whose embedded client certificates `kubeadm certs check-expiration` lists
/// (super-admin.conf exists from v1.29). kubelet.conf points at a file the kubelet rotates itself.
const KUBECONFIGS: [&str; 4] = [
    "admin.conf",
    "super-admin.conf",
    "controller-manager.conf",
    "scheduler.conf",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skipped,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    /// The path on the node (or in the bundle), with `#client` for a kubeconfig's embedded cert.
    pub path: String,
    pub subject: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub days_left: i64,
    pub authority: bool,
    pub status: Status,
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// What was checked: `node <root>` or `bundle <name>`.
    pub target: String,
    pub checks: Vec<Check>,
    pub certificates: Vec<Certificate>,
}

impl CheckReport {
    /// Fails (exit code 9) when any check failed; warnings pass.
    pub fn outcome(&self) -> Result<(), Error> {
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.name.to_string())
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err(Error::ChecksFailed {
            failed,
            total: self.checks.len(),
        })
    }

    pub fn text(&self) -> String {
        let mut out = format!("cpr check: {}\n", self.target);
        for check in &self.checks {
            out.push_str(&format!(
                "{:<8} {:<13} {}\n",
                format!("[{}]", label(check.status)),
                check.name,
                check.detail
            ));
        }
        if !self.certificates.is_empty() {
            let width = self
                .certificates
                .iter()
                .map(|c| c.path.len())
                .max()
                .unwrap_or(0);
            out.push_str(&format!(
                "\n{:<width$} {:<17} {:>5}  STATUS\n",
                "CERTIFICATE", "EXPIRES", "DAYS"
            ));
            for cert in &self.certificates {
                out.push_str(&format!(
                    "{:<width$} {:<17} {:>5}  {}\n",
                    cert.path,
                    cert.not_after
                        .format(time::macros::format_description!(
                            "[year]-[month]-[day] [hour]:[minute]Z"
                        ))
                        .expect("numeric fields always format"),
                    cert.days_left,
                    label(cert.status)
                ));
            }
        }
        out
    }
}

fn label(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Skipped => "skipped",
        Status::Warn => "warn",
        Status::Fail => "FAIL",
    }
}

/// Checks the live node under `root`: etcd over kubeadm's client pair, every certificate, (when
/// a store is given) that the store takes, returns and deletes a probe object, and that the files
/// the static pods read can be taken — and are encrypted (`encrypts`: the config's
/// `backup.encryptTo`) when they hold the keys to the Secrets at rest.
pub fn check_node(
    root: &Path,
    store: Option<&dyn Store>,
    warn_days: u32,
    now: OffsetDateTime,
    encrypts: bool,
) -> CheckReport {
    let layout = Layout::new(root);
    let mut pems = Vec::new();
    let mut unreadable = Vec::new();
    collect_node_pems(&layout, &mut pems, &mut unreadable);
    let mut report = CheckReport {
        target: format!("node {}", root.display()),
        checks: check_etcd(&layout)
            .into_iter()
            .chain([check_store(store)])
            .collect(),
        certificates: Vec::new(),
    };
    let certs = certificates(&pems, warn_days, now, &mut unreadable);
    report
        .checks
        .push(certs_check(&certs, unreadable, warn_days, false));
    report.certificates = certs;
    report.checks.push(match collect_files(&layout) {
        Ok(files) => {
            let taken: Vec<String> = files
                .iter()
                .filter(|f| f.entry.source.is_some())
                .map(|f| format!("/{}", f.entry.path))
                .collect();
            pod_files_check(
                &taken,
                &encryption_configurations(&files),
                encrypts,
                "a backup of this node",
            )
        }
        Err(e) => Check {
            name: "pod-files",
            status: Status::Fail,
            detail: format!("a backup would fail: {e}"),
        },
    });
    report
}

/// The files static pods read beyond kubeadm's (`taken`), and whether an EncryptionConfiguration
/// among the bundle's files (`keys`) travels unencrypted.
fn pod_files_check(taken: &[String], keys: &[String], encrypted: bool, bundle: &str) -> Check {
    let listed = if taken.is_empty() {
        "no files static pods read beyond kubeadm's".to_string()
    } else {
        format!(
            "{} file(s) static pods read beyond kubeadm's: {}",
            taken.len(),
            taken.join(", ")
        )
    };
    if !keys.is_empty() && !encrypted {
        return Check {
            name: "pod-files",
            status: Status::Warn,
            detail: format!("{}; {listed}", unencrypted_keys(keys, bundle)),
        };
    }
    let keys = if keys.is_empty() {
        String::new()
    } else {
        format!(
            "; the EncryptionConfiguration {} is encrypted with the bundle",
            keys.join(", ")
        )
    };
    Check {
        name: "pod-files",
        status: Status::Ok,
        detail: format!("{listed}{keys}"),
    }
}

/// Checks the certificates in a bundle, reading its files but not its etcd snapshot.
pub fn check_bundle(
    input: impl Read,
    name: &str,
    warn_days: u32,
    now: OffsetDateTime,
) -> Result<CheckReport, Error> {
    let mut sink = PemCollector::default();
    match read_bundle(input, name, FrameChecksum::Check, &mut sink) {
        Ok(_) => {}
        // The collector stops the read at the snapshot: every file before it was checked.
        Err(_) if sink.reached_snapshot => {}
        Err(e) => return Err(e.into()),
    }
    let mut unreadable = Vec::new();
    let certs = certificates(&sink.pems, warn_days, now, &mut unreadable);
    let encrypted = name.ends_with(crate::bundle::name::ENCRYPTED_SUFFIX);
    Ok(CheckReport {
        target: format!("bundle {name}"),
        checks: vec![
            certs_check(&certs, unreadable, warn_days, true),
            pod_files_check(&sink.inputs, &sink.keys, encrypted, "this bundle"),
        ],
        certificates: certs,
    })
}

/// The node's etcd answers; with several members, a second check that every member answers with the
/// same data (`HashKV`).
fn check_etcd(layout: &Layout) -> Vec<Check> {
    let mut members = None;
    let result = (|| -> Result<String, Error> {
        let pod = StaticPod::load(&layout.path(layout::ETCD_MANIFEST))?;
        let endpoint = client_endpoint(&pod)?;
        let tls = if endpoint.starts_with("https://") {
            Some(client_tls(layout, &pod)?)
        } else {
            None
        };
        let mut client =
            EtcdClient::connect(&endpoint, tls.as_ref()).map_err(crate::etcd::Error::from)?;
        let status = client.status().map_err(crate::etcd::Error::from)?;
        if client.members().map_err(crate::etcd::Error::from)?.len() > 1 {
            members = Some(super::ha::compare_members(&mut client, tls.as_ref()));
        }
        let with = tls.map_or("no TLS".to_string(), |t| {
            format!("client certificate {}", t.cert.display())
        });
        Ok(format!(
            "etcd {} at {endpoint} answers ({with}): revision {}, db {}",
            status.version,
            status.revision,
            human_bytes(status.db_size)
        ))
    })();
    let etcd = passed_or_failed("etcd", result.map_err(|e| e.to_string()));
    let members = members.map(|compared| {
        passed_or_failed(
            "etcd-members",
            compared.map_err(|detail| format!("{detail}. Check those members' etcd logs; a member restored from another snapshot cannot join (cpr restore gives each restore point its own cluster token)")),
        )
    });
    [Some(etcd), members].into_iter().flatten().collect()
}

/// A check that passed with `Ok`'s detail or failed with `Err`'s.
fn passed_or_failed(name: &'static str, result: Result<String, String>) -> Check {
    let (status, detail) = match result {
        Ok(detail) => (Status::Ok, detail),
        Err(detail) => (Status::Fail, detail),
    };
    Check {
        name,
        status,
        detail,
    }
}

fn check_store(store: Option<&dyn Store>) -> Check {
    let Some(store) = store else {
        return Check {
            name: "store",
            status: Status::Skipped,
            detail: "no store given (--store, CPR_STORE or store.url in the config file)"
                .to_string(),
        };
    };
    // A name no bundle listing picks up, unique per host and process so checks never collide.
    let probe = format!(
        ".cpr-check/{}-{}.probe",
        crate::host::hostname(),
        std::process::id()
    );
    let body = format!("cpr check probe {probe}\n");
    let result = (|| -> Result<(), crate::store::Error> {
        let mut upload = store.create(&probe)?;
        upload
            .write_all(body.as_bytes())
            .map_err(|e| crate::store::Error::from_io("writing", &probe, e))?;
        upload.commit()?;
        let mut back = Vec::new();
        store
            .open_limited(&probe, Some(body.len() as u64))?
            .read_to_end(&mut back)
            .map_err(|e| crate::store::Error::from_io("reading", &probe, e))?;
        store.delete(&probe)?;
        if back != body.as_bytes() {
            return Err(crate::store::Error::Changed {
                url: format!("{}/{probe}", store.location()),
            });
        }
        Ok(())
    })();
    match result {
        Ok(()) => Check {
            name: "store",
            status: Status::Ok,
            detail: format!(
                "{} takes, returns and deletes a probe object",
                store.location()
            ),
        },
        Err(e) => Check {
            name: "store",
            status: Status::Fail,
            detail: format!("{} is not writable: {e}", store.location()),
        },
    }
}

/// `(path, PEM)` of every certificate under the node's pki dir and in kubeadm's kubeconfigs.
fn collect_node_pems(
    layout: &Layout,
    pems: &mut Vec<(String, Vec<u8>)>,
    unreadable: &mut Vec<String>,
) {
    let mut files = Vec::new();
    walk_crt(&layout.path(layout::PKI_DIR), &mut files, unreadable);
    files.sort();
    // Shown as paths on the node, whatever root it is mounted at.
    let on_node = |path: &Path| {
        let relative = path.strip_prefix(layout.root()).unwrap_or(path);
        format!("/{}", relative.display())
    };
    for path in files {
        match std::fs::read(&path) {
            Ok(pem) => pems.push((on_node(&path), pem)),
            Err(e) => unreadable.push(format!("{}: {e}", path.display())),
        }
    }
    for conf in KUBECONFIGS {
        let path = layout.path(&format!("{}/{conf}", layout::KUBERNETES_DIR));
        if !path.exists() {
            continue;
        }
        match Kubeconfig::load(&path) {
            Ok(kubeconfig) => pems.push((
                format!("{}#client", on_node(&path)),
                kubeconfig.client_cert_pem,
            )),
            Err(e) => unreadable.push(e.to_string()),
        }
    }
}

fn walk_crt(dir: &Path, out: &mut Vec<PathBuf>, unreadable: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            unreadable.push(format!("{}: {e}", dir.display()));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk_crt(&path, out, unreadable);
        } else if path.extension().is_some_and(|e| e == "crt") {
            out.push(path);
        }
    }
}

/// Collects the certificates of a bundle's files, the files static pods read and the
/// EncryptionConfigurations among them, and stops the read at the snapshot.
#[derive(Default)]
struct PemCollector {
    pems: Vec<(String, Vec<u8>)>,
    /// Entries with a source, as paths on the node.
    inputs: Vec<String>,
    /// Entries that are an EncryptionConfiguration, as paths on the node.
    keys: Vec<String>,
    reached_snapshot: bool,
}

impl Sink for PemCollector {
    fn file(&mut self, entry: &FileEntry, data: &mut dyn Read) -> io::Result<()> {
        let pki = format!("{}/", layout::PKI_DIR);
        let conf = KUBECONFIGS
            .iter()
            .any(|c| entry.path == format!("{}/{c}", layout::KUBERNETES_DIR));
        // Sizes are bounded by the manifest: one file at a time in memory.
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes)?;
        if entry.source.is_some() {
            self.inputs.push(format!("/{}", entry.path));
        }
        if is_encryption_configuration(&bytes) {
            self.keys.push(format!("/{}", entry.path));
        }
        if !(entry.path.starts_with(&pki) && entry.path.ends_with(".crt") || conf) {
            return Ok(());
        }
        if conf {
            let text = String::from_utf8_lossy(&bytes);
            match Kubeconfig::parse(&text, Path::new(&entry.path)) {
                Ok(k) => self
                    .pems
                    .push((format!("{}#client", entry.path), k.client_cert_pem)),
                // No PEM at all: reported as unreadable under this name when parsed.
                Err(_) => self
                    .pems
                    .push((format!("{}#client", entry.path), Vec::new())),
            }
        } else {
            self.pems.push((entry.path.clone(), bytes));
        }
        Ok(())
    }

    fn snapshot(&mut self, _: &SnapshotEntry, _: &mut dyn Read) -> io::Result<()> {
        self.reached_snapshot = true;
        Err(io::Error::other(
            "cpr check reads no further than the snapshot",
        ))
    }
}

fn certificates(
    pems: &[(String, Vec<u8>)],
    warn_days: u32,
    now: OffsetDateTime,
    unreadable: &mut Vec<String>,
) -> Vec<Certificate> {
    let mut certs = Vec::new();
    for (path, pem) in pems {
        match parse_cert(pem, Path::new(path)) {
            Ok(info) => {
                let days_left = (info.not_after - now).whole_days();
                let status = match certs::due(info.not_after, now, warn_days) {
                    Some(Due::Expired) => Status::Fail,
                    Some(Due::Soon) => Status::Warn,
                    None => Status::Ok,
                };
                certs.push(Certificate {
                    authority: is_authority(path),
                    path: path.clone(),
                    subject: info.subject,
                    not_after: info.not_after,
                    days_left,
                    status,
                });
            }
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    certs
}

/// kubeadm's CAs: `ca.crt`, `front-proxy-ca.crt`, `etcd/ca.crt`.
fn is_authority(path: &str) -> bool {
    path.ends_with("/ca.crt") || path.ends_with("-ca.crt")
}

/// One verdict over all certificates, with what to do about the worst of them.
fn certs_check(
    certs: &[Certificate],
    unreadable: Vec<String>,
    warn_days: u32,
    bundle: bool,
) -> Check {
    let expired: Vec<&Certificate> = certs.iter().filter(|c| c.status == Status::Fail).collect();
    let soon: Vec<&Certificate> = certs.iter().filter(|c| c.status == Status::Warn).collect();
    let mut problems = Vec::new();
    if !unreadable.is_empty() {
        problems.push(format!("unreadable: {}", unreadable.join("; ")));
    }
    let names = |list: &[&Certificate]| {
        list.iter()
            .map(|c| format!("{} ({} days)", c.path, c.days_left))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !expired.is_empty() {
        problems.push(format!("expired: {}", names(&expired)));
    }
    if !soon.is_empty() {
        problems.push(format!("expire within {warn_days} days: {}", names(&soon)));
    }
    let status = if !unreadable.is_empty() || !expired.is_empty() {
        Status::Fail
    } else if !soon.is_empty() {
        Status::Warn
    } else {
        Status::Ok
    };
    if status == Status::Ok {
        let first = certs.iter().min_by_key(|c| c.not_after);
        return Check {
            name: "certificates",
            status,
            detail: match first {
                Some(c) => format!(
                    "{} readable, the first expires in {} days ({})",
                    certs.len(),
                    c.days_left,
                    c.path
                ),
                None => "no certificates found".to_string(),
            },
        };
    }
    let mut advice = Vec::new();
    let troubled = || expired.iter().chain(&soon);
    if troubled().any(|c| !c.authority) {
        advice.push("on the control-plane node run `kubeadm certs check-expiration`, then `kubeadm certs renew all` and restart the control-plane static pods (move their manifests out of /etc/kubernetes/manifests and back)");
    }
    if troubled().any(|c| c.authority) {
        advice.push("kubeadm cannot renew a CA: rotate it by hand (Kubernetes docs, \"Manual rotation of CA certificates\")");
    }
    if bundle && status != Status::Ok {
        advice.push("then take a new backup: restoring this bundle brings these certificates back");
    }
    if !unreadable.is_empty() {
        advice.push("make the unreadable files readable PEM certificates (a backup copies them as they are)");
    }
    Check {
        name: "certificates",
        status,
        detail: format!("{}. To fix: {}", problems.join("; "), advice.join("; ")),
    }
}
