//! `cpr backup`: read the node's kubeadm files, stream an etcd snapshot over mTLS, write one bundle.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

use super::sealed::{store_sealed, SealOptions};
use super::Error;
use crate::bundle::manifest::{
    self, Cluster, Etcd, FileEntry, Manifest, Member, Node, SnapshotEntry,
};
use crate::bundle::name::BundleName;
use crate::bundle::{write_bundle, WriteOptions};
use crate::etcd::client::{ClientError, EtcdClient, MemberInfo, TlsFiles};
use crate::node::inputs::{self, Input, Kind};
use crate::node::kubeadm_config::{self, ClusterInfo};
use crate::node::layout::{self, Layout};
use crate::node::StaticPod;
use crate::store::index::{self, IndexEntry};
use crate::store::{human_bytes, Store};

const DEFAULT_CLUSTER_NAME: &str = "kubernetes";

pub struct BackupRequest<'a> {
    pub root: PathBuf,
    pub store: &'a dyn Store,
    /// Overrides the ClusterConfiguration's clusterName in the bundle name.
    pub cluster: Option<String>,
    /// Overrides the client URL read from the etcd manifest.
    pub endpoint: Option<String>,
    /// Overrides the CA and client pair found under the root.
    pub tls: Option<TlsFiles>,
    /// A ClusterConfiguration file to use instead of the ConfigMap in etcd.
    pub cluster_config: Option<PathBuf>,
    pub etcd_prefix: String,
    pub zstd_level: i32,
    pub zstd_threads: u32,
    /// Encryption and signing of the stored bundle.
    pub seal: SealOptions,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupReport {
    pub bundle: String,
    pub store: String,
    pub size: u64,
    pub db_size: u64,
    pub revision: i64,
    pub files: usize,
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// What the operator should act on although the backup succeeded (an unencrypted bundle that
    /// holds the keys to the Secrets at rest).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Unfinished uploads of this node that earlier backups left behind (a crash or power cut
    /// mid-write), removed before this one was written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed_dead_uploads: Vec<String>,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl BackupReport {
    /// One line an operator can read in a log: name, size, revision, duration, throughput.
    pub fn summary(&self) -> String {
        let secs = self.duration.as_secs_f64().max(1e-3);
        let removed = match self.removed_dead_uploads.as_slice() {
            [] => String::new(),
            names => format!("; removed dead uploads {}", names.join(", ")),
        };
        format!(
            "backup {} to {}: {} (etcd db {}), revision {}, {} files, {:.1} s, {}/s{removed}",
            self.bundle,
            self.store,
            human_bytes(self.size),
            human_bytes(self.db_size),
            self.revision,
            self.files,
            secs,
            human_bytes((self.db_size as f64 / secs) as u64)
        )
    }
}

pub fn backup(request: &BackupRequest<'_>) -> Result<BackupReport, Error> {
    let started = Instant::now();
    let layout = Layout::new(&request.root);
    let etcd_pod = StaticPod::load(&layout.path(layout::ETCD_MANIFEST))?;
    let apiserver_pod = StaticPod::load(&layout.path(layout::APISERVER_MANIFEST)).ok();

    let mut files = collect_files(&layout)?;
    let warnings = sensitivity_warnings(&files, request.seal.encrypts());

    let endpoint = match &request.endpoint {
        Some(endpoint) => endpoint.clone(),
        None => client_endpoint(&etcd_pod)?,
    };
    let tls = match &request.tls {
        Some(tls) => Some(tls.clone()),
        None if endpoint.starts_with("https://") => Some(client_tls(&layout, &etcd_pod)?),
        None => None,
    };
    log::info!("backup: connecting to etcd at {endpoint}");
    let mut client =
        EtcdClient::connect(&endpoint, tls.as_ref()).map_err(crate::etcd::Error::from)?;
    let status = client.status().map_err(crate::etcd::Error::from)?;
    let members = client.members().map_err(crate::etcd::Error::from)?;
    // etcd serves a snapshot from the member's own db, without raft: a member cut off from its
    // quorum still answers, with a revision that may lack acknowledged writes, yet newer than a
    // restore-point claim taken meanwhile, which would then look stale to this node (ops/ha.rs).
    if status.leader == 0 {
        let member = members
            .iter()
            .find(|m| m.id == status.member_id)
            .map_or_else(|| format!("{:x}", status.member_id), |m| m.name.clone());
        return Err(Error::NoLeader { member, endpoint });
    }

    let (cluster_yaml, origin) = match &request.cluster_config {
        Some(path) => (
            fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?,
            path.display().to_string(),
        ),
        None => {
            let key = crate::k8s::Resource::ConfigMaps.key(
                &request.etcd_prefix,
                Some("kube-system"),
                "kubeadm-config",
            );
            let value = client
                .get(key.as_bytes())
                .map_err(crate::etcd::Error::from)?
                .ok_or_else(|| crate::node::Error::KubeadmConfig {
                    key: key.clone(),
                    why: "the key does not exist; is --etcd-prefix right? Pass the ClusterConfiguration with --cluster-config FILE otherwise".to_string(),
                })?;
            (kubeadm_config::cluster_configuration(&value, &key)?, key)
        }
    };
    let cluster_info = kubeadm_config::cluster_info(&cluster_yaml, &origin)?;
    files.push(CollectedFile::new(
        layout::CLUSTER_CONFIGURATION_ENTRY,
        cluster_yaml.into_bytes(),
        0o600,
        0,
        0,
    ));

    let created = OffsetDateTime::now_utc();
    let cluster_name = request
        .cluster
        .clone()
        .or_else(|| cluster_info.cluster_name.clone())
        .unwrap_or_else(|| DEFAULT_CLUSTER_NAME.to_string());
    let node_name = etcd_pod.required_flag("name")?.to_string();
    let name = BundleName::new(&cluster_name, &node_name, created, request.seal.encrypts())?;
    let bundle = name.to_string();
    // Clearing up after an earlier backup must not cost this one: a failure is only warned about.
    let removed_dead_uploads = request
        .store
        .remove_dead_uploads(&format!("{cluster_name}/{node_name}/"), false)
        .unwrap_or_else(|e| {
            log::warn!("backup: leaving unfinished uploads of earlier backups: {e}");
            Vec::new()
        });
    for removed in &removed_dead_uploads {
        log::info!("backup: removed {removed}, an upload that an earlier backup left unfinished");
    }

    let mut snapshot = client.snapshot().map_err(crate::etcd::Error::from)?;
    let manifest = Manifest {
        format_version: Manifest::format_version(),
        cpr_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: created
            .format(&time::format_description::well_known::Rfc3339)
            .expect("UTC times always format"),
        cluster: cluster(&cluster_name, &cluster_info),
        node: node(&node_name, apiserver_pod.as_ref(), &layout),
        etcd: etcd(&etcd_pod, &status, &members),
        files: files.iter().map(|f| f.entry.clone()).collect(),
        snapshot: SnapshotEntry::new(snapshot.size()),
    };
    let options = WriteOptions {
        zstd_level: request.zstd_level,
        zstd_threads: request.zstd_threads,
        mtime: created.unix_timestamp().max(0) as u64,
    };
    log::info!(
        "backup: writing {bundle} to {} (etcd db {}, revision {})",
        request.store.location(),
        human_bytes(snapshot.size()),
        status.revision
    );
    let contents: Vec<Vec<u8>> = files.into_iter().map(|f| f.data).collect();
    let sealed = store_sealed(request.store, &bundle, &request.seal, |out| {
        write_bundle(out, &manifest, &contents, &mut snapshot, &options, &bundle)
            .map(drop)
            .map_err(|e| blame(e, &bundle))
    })?;
    let stored = sealed.object;
    index::append(
        request.store,
        &cluster_name,
        &node_name,
        IndexEntry {
            name: bundle.clone(),
            size: stored.size,
            created,
            node: node_name.clone(),
            revision: u64::try_from(status.revision).ok(),
            encrypted: request.seal.encrypts(),
            signed: sealed.signed,
            sha256: None,
            blake3: Some(sealed.blake3),
            renamed_from: renamed_from(&layout, &node_name),
            etcd_members: member_names(&members),
            extra: Default::default(),
        },
    )?;
    Ok(BackupReport {
        bundle,
        store: request.store.location(),
        size: stored.size,
        db_size: manifest.snapshot.size,
        revision: status.revision,
        files: manifest.files.len(),
        duration: started.elapsed(),
        warnings,
        removed_dead_uploads,
    })
}

pub(super) struct CollectedFile {
    pub(super) entry: FileEntry,
    pub(super) data: Vec<u8>,
}

impl CollectedFile {
    fn new(path: &str, data: Vec<u8>, mode: u32, uid: u32, gid: u32) -> Self {
        CollectedFile {
            entry: FileEntry {
                path: path.to_string(),
                size: data.len() as u64,
                mode,
                uid,
                gid,
                sha256: hex::encode(Sha256::digest(&data)),
                source: None,
            },
            data,
        }
    }
}

/// pki (recursively), static pod manifests, kubeconfigs, the kubelet's kubeadm-written config, and
/// every other file the static pods read (`node::inputs`).
pub(super) fn collect_files(layout: &Layout) -> Result<Vec<CollectedFile>, Error> {
    let mut paths = Vec::new();
    walk(layout, layout::PKI_DIR, true, &mut paths)?;
    walk(layout, layout::MANIFESTS_DIR, false, &mut paths)?;
    let mut kubeconfigs = Vec::new();
    walk(layout, layout::KUBERNETES_DIR, false, &mut kubeconfigs)?;
    paths.extend(kubeconfigs.into_iter().filter(|p| p.ends_with(".conf")));
    for optional in [layout::KUBELET_CONFIG, layout::KUBEADM_FLAGS] {
        if layout.path(optional).is_file() {
            paths.push(optional.to_string());
        } else {
            log::warn!(
                "backup: {} is missing; the bundle will not carry it",
                layout.path(optional).display()
            );
        }
    }
    let mut files = paths
        .into_iter()
        .map(|relative| read_file(layout, &relative))
        .collect::<Result<Vec<_>, _>>()?;
    collect_pod_inputs(layout, &mut files)?;
    Ok(files)
}

/// Adds the files each static pod manifest names through flags and hostPath volumes, each with the
/// flag or volume as its `source`; a file already in the bundle that is not kubeadm's (a webhook
/// kubeconfig beside admin.conf) gets its source too, so phase 1 restores it.
fn collect_pod_inputs(layout: &Layout, files: &mut Vec<CollectedFile>) -> Result<(), Error> {
    // Indices stay valid: the loop only appends.
    let manifests: Vec<usize> = (0..files.len())
        .filter(|&i| {
            files[i]
                .entry
                .path
                .strip_prefix(layout::MANIFESTS_DIR)
                .is_some_and(|name| {
                    name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json")
                })
        })
        .collect();
    for manifest in manifests {
        // The bytes read for the bundle, not a second read of the file.
        let path = layout.path(&files[manifest].entry.path);
        let parsed = match std::str::from_utf8(&files[manifest].data) {
            Ok(text) => StaticPod::parse(text, &path),
            Err(_) => Err(crate::node::Error::Read {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                ),
            }),
        };
        let pod = match parsed {
            Ok(pod) => pod,
            Err(e) => {
                log::warn!("backup: {e}; the files it names are not looked for");
                continue;
            }
        };
        let found = inputs::inputs(&pod);
        for (path, why) in &found.skipped {
            log::debug!("backup: not taking {path}: {why}");
        }
        for input in &found.take {
            for relative in resolve(layout, input)? {
                let source = Some(input.origin.clone());
                if let Some(existing) = files.iter_mut().find(|f| f.entry.path == relative) {
                    existing.entry.source = existing.entry.source.take().or(source);
                    continue;
                }
                let mut file = read_file(layout, &relative).map_err(named_by(input))?;
                log::info!(
                    "backup: taking {} ({})",
                    layout.path(&relative).display(),
                    input.origin
                );
                file.entry.source = source;
                files.push(file);
            }
        }
    }
    Ok(())
}

/// The bundle paths of the regular files `input` stands for: itself, or every file below a
/// hostPath directory that is configuration.
fn resolve(layout: &Layout, input: &Input) -> Result<Vec<String>, Error> {
    let host = layout.path(&input.path);
    let relative = input.path.trim_start_matches('/').to_string();
    let meta = match fs::metadata(&host) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match input.kind {
                Kind::Volume { must_exist: true } => {
                    return Err(Error::MissingInput {
                        path: host,
                        origin: input.origin.clone(),
                    })
                }
                Kind::Flag => log::warn!(
                    "backup: {} ({}) is missing on this node; the bundle will not carry it",
                    host.display(),
                    input.origin
                ),
                Kind::Volume { .. } => log::debug!("backup: {} is missing", host.display()),
            }
            return Ok(Vec::new());
        }
        Err(source) => {
            return Err(Error::Input {
                path: host,
                origin: input.origin.clone(),
                source,
            })
        }
    };
    if meta.is_file() {
        return Ok(vec![relative]);
    }
    if !(meta.is_dir() && matches!(input.kind, Kind::Volume { .. })) {
        log::debug!(
            "backup: not taking {} ({}): not a regular file",
            host.display(),
            input.origin
        );
        return Ok(Vec::new());
    }
    let mut below = Vec::new();
    walk(layout, &relative, true, &mut below).map_err(named_by(input))?;
    below.retain(|p| layout::not_configuration(&format!("/{p}")).is_none());
    Ok(below)
}

/// A file a static pod names that cannot be read fails the backup naming the pod's flag or volume.
fn named_by(input: &Input) -> impl Fn(Error) -> Error + '_ {
    move |error| match error {
        Error::Read { path, source } => Error::Input {
            path,
            origin: input.origin.clone(),
            source,
        },
        other => other,
    }
}

/// The files that are an EncryptionConfiguration, as paths on the node.
pub(super) fn encryption_configurations(files: &[CollectedFile]) -> Vec<String> {
    files
        .iter()
        .filter(|f| inputs::is_encryption_configuration(&f.data))
        .map(|f| format!("/{}", f.entry.path))
        .collect()
}

/// A bundle holding an EncryptionConfiguration is as sensitive as the CA key: say so when it is
/// not encrypted.
fn sensitivity_warnings(files: &[CollectedFile], encrypted: bool) -> Vec<String> {
    let keys = encryption_configurations(files);
    if keys.is_empty() || encrypted {
        return Vec::new();
    }
    let warning = unencrypted_keys(&keys, "this bundle");
    log::warn!("backup: {warning}");
    vec![warning]
}

/// What `cpr backup` and `cpr check` say about an unencrypted bundle holding `keys`.
pub(super) fn unencrypted_keys(keys: &[String], bundle: &str) -> String {
    format!(
        "{bundle} holds the EncryptionConfiguration {} (the keys that decrypt every Secret in the etcd snapshot) and is NOT encrypted: whoever reads the store reads every Secret. Encrypt bundles with --encrypt-to or backup.encryptTo (cpr keygen makes a key), and restrict or delete the unencrypted ones",
        keys.join(", ")
    )
}

/// Regular files below `dir`, as bundle paths, sorted. Symlinks are followed: the content is what
/// kubeadm reads.
fn walk(layout: &Layout, dir: &str, recurse: bool, out: &mut Vec<String>) -> Result<(), Error> {
    let path = layout.path(dir);
    let read_err = |source| Error::Read {
        path: path.clone(),
        source,
    };
    let mut names: Vec<String> = fs::read_dir(&path)
        .map_err(read_err)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    names.sort();
    for name in names {
        let relative = format!("{dir}/{name}");
        let meta = fs::metadata(layout.path(&relative)).map_err(|source| Error::Read {
            path: layout.path(&relative),
            source,
        })?;
        if meta.is_dir() {
            if recurse {
                walk(layout, &relative, true, out)?;
            }
        } else if meta.is_file() {
            out.push(relative);
        } else {
            log::warn!(
                "backup: skipping {}: not a regular file",
                layout.path(&relative).display()
            );
        }
    }
    Ok(())
}

fn read_file(layout: &Layout, relative: &str) -> Result<CollectedFile, Error> {
    let path = layout.path(relative);
    let read_err = |source| Error::Read {
        path: path.clone(),
        source,
    };
    let file = fs::File::open(&path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if meta.len() > manifest::MAX_FILE_BYTES {
        return Err(Error::TooLarge {
            path: path.clone(),
            size: meta.len(),
            limit: manifest::MAX_FILE_BYTES,
        });
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(manifest::MAX_FILE_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(read_err)?;
    Ok(CollectedFile::new(
        relative,
        data,
        meta.mode() & 0o777,
        meta.uid(),
        meta.gid(),
    ))
}

/// A loopback client URL if etcd listens on one (kubeadm always adds https://127.0.0.1:2379).
pub(super) fn client_endpoint(pod: &StaticPod) -> Result<String, Error> {
    let listen = pod.list_flag("listen-client-urls");
    let advertise = pod.list_flag("advertise-client-urls");
    listen
        .iter()
        .find(|u| u.contains("://127.") || u.contains("://[::1]") || u.contains("://localhost"))
        .or_else(|| advertise.first())
        .cloned()
        .ok_or_else(|| {
            Error::Node(crate::node::Error::Manifest {
                path: pod.path.clone(),
                why: "etcd has neither --listen-client-urls nor --advertise-client-urls; pass --endpoint".to_string(),
            })
        })
}

pub(super) fn client_tls(layout: &Layout, pod: &StaticPod) -> Result<TlsFiles, Error> {
    let ca = layout.path(pod.flag("trusted-ca-file").unwrap_or(layout::ETCD_CA_CERT));
    let (cert, key) = layout::ETCD_CLIENT_PAIRS
        .iter()
        .map(|(cert, key)| (layout.path(cert), layout.path(key)))
        .find(|(cert, key)| cert.is_file() && key.is_file())
        .ok_or_else(|| Error::NoClientCertificate {
            pki: layout.path(layout::PKI_DIR),
        })?;
    Ok(TlsFiles { ca, cert, key })
}

fn cluster(name: &str, info: &ClusterInfo) -> Cluster {
    Cluster {
        name: name.to_string(),
        kubernetes_version: info.kubernetes_version.clone(),
        control_plane_endpoint: info.control_plane_endpoint.clone(),
        pod_subnet: info.pod_subnet.clone(),
        service_subnet: info.service_subnet.clone(),
        kubeadm_api_version: info.api_version.clone(),
    }
}

fn node(name: &str, apiserver: Option<&StaticPod>, layout: &Layout) -> Node {
    Node {
        name: name.to_string(),
        hostname: crate::host::hostname(),
        ips: crate::host::local_ips()
            .iter()
            .map(|ip| ip.to_string())
            .collect(),
        advertise_address: apiserver
            .and_then(|p| p.flag("advertise-address"))
            .map(String::from),
        bind_port: apiserver
            .and_then(|p| p.flag("secure-port"))
            .and_then(|p| p.parse().ok()),
        cri_socket: cri_socket(&layout.path(layout::KUBEADM_FLAGS)),
    }
}

/// The node's name before a restore onto a new address renamed it to `node` (this machine's recovery
/// state records it), so that its older bundles stay found under the new name.
/// An unreadable state file costs the link, never the backup.
/// The etcd members by name, sorted, when there are several (a single member is the node itself).
fn member_names(members: &[MemberInfo]) -> Vec<String> {
    if members.len() < 2 {
        return Vec::new();
    }
    let mut names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    names.sort();
    names
}

fn renamed_from(layout: &Layout, node: &str) -> Option<String> {
    let state = super::state::State::load(layout)
        .inspect_err(|e| log::warn!("backup: the old name of a renamed node is not recorded: {e}"))
        .ok()??;
    state
        .new_address
        .filter(|plan| plan.renamed() && plan.new_name == node)
        .map(|plan| plan.old_name)
}

/// kubeadm writes `KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///… …"`.
fn cri_socket(flags_env: &Path) -> Option<String> {
    let text = fs::read_to_string(flags_env).ok()?;
    text.split(|c: char| c.is_whitespace() || c == '"')
        .find_map(|word| word.strip_prefix("--container-runtime-endpoint="))
        .map(String::from)
}

fn etcd(
    pod: &StaticPod,
    status: &crate::etcd::client::ServerStatus,
    members: &[MemberInfo],
) -> Etcd {
    Etcd {
        version: status.version.clone(),
        member_name: pod.flag("name").unwrap_or_default().to_string(),
        member_id: format!("{:x}", status.member_id),
        cluster_id: format!("{:x}", status.cluster_id),
        peer_urls: pod.list_flag("initial-advertise-peer-urls"),
        client_urls: pod.list_flag("advertise-client-urls"),
        members: members
            .iter()
            .map(|m| Member {
                id: format!("{:x}", m.id),
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                client_urls: m.client_urls.clone(),
                is_learner: m.is_learner,
            })
            .collect(),
        revision: status.revision,
        db_size: status.db_size,
        data_dir: pod.flag("data-dir").map(String::from),
    }
}

/// A failed write is reported against what failed: etcd's snapshot stream, the store, or the bundle.
fn blame(error: crate::bundle::Error, bundle: &str) -> Error {
    let crate::bundle::Error::Write { source, .. } = error else {
        return error.into();
    };
    let source = match source
        .into_inner()
        .map(|inner| inner.downcast::<ClientError>())
    {
        Some(Ok(client)) => return crate::etcd::Error::from(*client).into(),
        Some(Err(inner)) => std::io::Error::other(inner),
        None => std::io::Error::other("write failed"),
    };
    crate::store::Error::from_io("writing", bundle, source).into()
}
