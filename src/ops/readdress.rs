//! `cpr restore --new-address`: the replacement machine has another address (and perhaps another
//! name) than the lost node, as a cloud or a DHCP server hands out. Planned from the verified,
//! staged bundle before anything live changes: phase 1 restores the etcd member under the new name
//! and peer URL; phase 2 has `kubeadm init` re-issue, from the restored CAs, every leaf certificate
//! whose SANs name the old address or name, gives it the new advertise address, and, when the
//! controlPlaneEndpoint was the old address, the new one (kubeadm then rewrites kubeadm-config,
//! cluster-info and kube-proxy's kubeconfig from it); the workers repoint with `cpr worker repoint`.

use std::net::{IpAddr, ToSocketAddrs};
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::carryover::{Carryover, SKIP_KUBE_PROXY};
use super::Error;
use crate::bundle::Manifest;
use crate::k8s::Resource;
use crate::node::certs::{self, read_cert, Due};
use crate::node::identity::Machine;
use crate::node::layout;

/// kubeadm's default API server port (cmd/kubeadm/app/constants: `KubeAPIServerPort`).
pub(crate) const DEFAULT_BIND_PORT: u16 = 6443;
/// etcd's peer port when the bundle records no peer URL (cmd/kubeadm/app/constants: `EtcdListenPeerPort`).
const DEFAULT_PEER_PORT: u16 = 2380;
/// The subcommand a worker runs to follow the control plane to its new address.
pub const WORKER_COMMAND: &str = "cpr worker repoint --server";
/// ConfigMaps kubeadm itself rewrites from the new controlPlaneEndpoint (kube-system/kubeadm-config:
/// phases/uploadconfig/uploadconfig.go; kube-public/cluster-info: phases/bootstraptoken/clusterinfo/
/// clusterinfo.go, from admin.conf's server; kube-system/kube-proxy: phases/addons/proxy/proxy.go).
pub const KUBEADM_WRITTEN: [(&str, &str, &str); 3] = [
    ("kube-system", "kubeadm-config", "ClusterConfiguration"),
    ("kube-public", "cluster-info", "kubeconfig"),
    ("kube-system", "kube-proxy", "kubeconfig.conf"),
];

/// What a restore onto a new address changes; recorded in the state file for phase 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub old_address: IpAddr,
    pub new_address: IpAddr,
    pub old_name: String,
    pub new_name: String,
    /// The etcd member as the restore builds it: this node's name and its new peer URL.
    pub etcd_member: String,
    pub etcd_peer_url: String,
    /// Leaf certificates (as `etcd/server`) whose SANs name the old address or name: moved aside
    /// (kept) so that `kubeadm init` signs new ones with the restored CAs and the new SANs.
    pub reissued_certificates: Vec<String>,
    /// The certificate authorities, `sa.key`/`sa.pub` and the leaves that name neither, kept as they are.
    pub kept_certificates: Vec<String>,
    /// The kubeconfigs kubeadm writes afresh (phase 1 restores none), with the new server.
    pub kubeconfigs: Vec<String>,
    pub control_plane_endpoint: Endpoint,
    /// What becomes of kube-proxy's kubeconfig (the `kube-system/kube-proxy` ConfigMap).
    pub kube_proxy: KubeProxy,
    /// The old Node object, removed through the API once the new control plane is up (the name changed).
    pub old_node: Option<String>,
    /// Every other Node of the snapshot, and what it needs.
    pub workers: Vec<Worker>,
    /// ConfigMap entries besides kubeadm's own that name the old address (a CNI's API server
    /// setting, such as Cilium's `k8s-service-host` or Calico's `KUBERNETES_SERVICE_HOST`): the
    /// operator changes them.
    pub pinned_settings: Vec<String>,
}

/// What becomes of the address the workers and kube-proxy reach the control plane through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "change"
)]
pub enum Endpoint {
    /// controlPlaneEndpoint was the old address (or unset, so kubeadm used the advertise address):
    /// the restore gives kubeadm the new one, and every worker repoints.
    Moved {
        old_server: String,
        new_server: String,
        /// Whether the ClusterConfiguration set it: kubeadm never fills an empty one in
        /// (SetClusterDynamicDefaults), so kubeadm-config then names no server.
        set: bool,
    },
    /// A DNS name, or an address that is not the node's (a VIP, a load balancer): nothing changes
    /// for the workers once it leads to the new address.
    Kept { endpoint: String },
    /// The node keeps its address (only its name changes): so does every server the workers know.
    Unchanged { endpoint: String },
}

/// kube-proxy's kubeconfig, which kubeadm's addon/kube-proxy phase writes from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KubeProxy {
    /// The phase runs: kubeadm rewrites the ConfigMap, cpr restarts the pods.
    Rewritten,
    /// The phase is skipped (the ConfigMap is encrypted at rest, or the cluster runs no kube-proxy
    /// DaemonSet), so the ConfigMap stays as backed up: the operator edits it.
    ByHand,
    /// The cluster has no kube-proxy ConfigMap.
    Absent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Worker {
    pub node: String,
    /// The command to run on it; `None`: it needs nothing.
    pub command: Option<String>,
}

impl Plan {
    pub fn renamed(&self) -> bool {
        !self.old_name.eq_ignore_ascii_case(&self.new_name)
    }

    pub fn readdressed(&self) -> bool {
        self.old_address != self.new_address
    }
}

/// The address and node name this machine restores the bundle's node under: the bundle's address
/// when the machine has it, else its first address (`--ip` in the order given, `cpr.ip=`, DHCP); its
/// hostname lowercased, as kubeadm names a node (`nodeutil.GetHostname`).
pub fn new_identity(machine: &Machine, manifest: &Manifest) -> Result<(IpAddr, String), Error> {
    let old = old_address(manifest)?;
    let address = if machine.ips.contains(&old) {
        old
    } else {
        *machine.ips.first().ok_or_else(|| refusal(
            manifest,
            "this machine has no address to restore onto (no interface is up with a global address); bring its network up, or name the address with --ip (cpr.ip= on a recovery boot)".to_string(),
        ))?
    };
    let name = machine.hostname.trim().to_ascii_lowercase();
    if !is_node_name(&name) {
        return Err(refusal(
            manifest,
            format!("this machine's hostname {name:?} cannot name a Node (kubeadm wants a DNS-1123 subdomain: lowercase letters, digits, '-' and '.'); set one, or pass --hostname (cpr.hostname= on a recovery boot)"),
        ));
    }
    Ok((address, name))
}

/// A DNS-1123 subdomain, as kubeadm's `ValidateNodeRegistrationOptions` requires of a node name
/// (k8s.io/apimachinery pkg/util/validation: `IsDNS1123Subdomain`).
fn is_node_name(name: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label)
}

fn old_address(manifest: &Manifest) -> Result<IpAddr, Error> {
    manifest
        .node
        .advertise_address
        .as_deref()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| refusal(manifest, "the bundle records no advertise address for its node, so cpr cannot tell which certificates and settings name it".to_string()))
}

fn refusal(manifest: &Manifest, why: String) -> Error {
    Error::NewAddress {
        node: manifest.node.name.clone(),
        why,
    }
}

/// The refusals that need only the manifest: another member's address, and a cluster of several
/// members (a rejoin, not a re-address).
pub fn check_members(manifest: &Manifest, address: IpAddr) -> Result<(), Error> {
    let others: Vec<_> = manifest
        .etcd
        .members
        .iter()
        .filter(|m| m.name != manifest.etcd.member_name)
        .collect();
    if let Some(member) = others.iter().find(|m| {
        m.peer_urls
            .iter()
            .chain(&m.client_urls)
            .any(|url| url_host(url) == Some(address))
    }) {
        return Err(refusal(
            manifest,
            format!(
                "{address} is the address of etcd member {} ({}); two members on one address cannot both serve. Give this machine an address of its own (--ip, cpr.ip=) and restore again",
                member_label(member),
                member.peer_urls.join(", ")
            ),
        ));
    }
    if !others.is_empty() {
        return Err(refusal(
            manifest,
            format!(
                "the backup's etcd cluster has {} members ({}); --new-address restores single-member control planes only, until cpr's HA support covers re-addressing one member of several. If the other members still have quorum, remove the lost member (etcdctl member remove) and join this machine with `kubeadm join --control-plane` instead; if they are all lost, restore on a machine with the lost node's address",
                manifest.etcd.members.len(),
                manifest
                    .etcd
                    .members
                    .iter()
                    .map(member_label)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(())
}

/// A member's name, or its ID when it never started (etcd names a member when it first joins).
fn member_label(member: &crate::bundle::manifest::Member) -> String {
    if member.name.is_empty() {
        format!("{} (not started yet)", member.id)
    } else {
        format!("{:?}", member.name)
    }
}

/// kubeadm signs the re-issued leaves with the restored CAs: each needs its certificate and key,
/// unexpired (`pki` is the staged copy).
pub fn check_authorities(
    manifest: &Manifest,
    pki: &Path,
    now: OffsetDateTime,
) -> Result<(), Error> {
    for name in certs::AUTHORITIES {
        for ext in ["crt", "key"] {
            if !pki.join(format!("{name}.{ext}")).exists() {
                return Err(refusal(
                    manifest,
                    format!(
                        "the bundle holds no {name}.{ext} under {}: kubeadm needs the certificate authority {name} with its key to sign the re-issued certificates (an external CA cannot be re-addressed by cpr). Restore on a machine with the lost node's address, or put the CA's files into the bundle's pki",
                        layout::PKI_DIR
                    ),
                ));
            }
        }
        let info = read_cert(&pki.join(format!("{name}.crt")))?;
        if certs::due(info.not_after, now, 0) == Some(Due::Expired) {
            return Err(refusal(
                manifest,
                format!(
                    "the certificate authority {name}.crt expired on {}: nothing it signs is trusted, so re-issued certificates would be useless. Rotate the CA (Kubernetes docs, \"Manual rotation of CA certificates\") and take a new backup",
                    info.not_after.date()
                ),
            ));
        }
    }
    Ok(())
}

/// The etcd member's name and peer URL on the new address (the old peer URL's scheme and port).
pub fn etcd_member(manifest: &Manifest, address: IpAddr, name: &str) -> (String, String) {
    let port = manifest
        .etcd
        .peer_urls
        .first()
        .and_then(|url| url.rsplit_once(':'))
        .and_then(|(_, port)| port.trim_end_matches('/').parse().ok())
        .unwrap_or(DEFAULT_PEER_PORT);
    (
        name.to_string(),
        format!("https://{}", host_port(address, port)),
    )
}

/// `host:port`, with an IPv6 address in brackets.
fn host_port(address: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(address, port).to_string()
}

/// The host of a member's URL as an address, if it is one.
fn url_host(url: &str) -> Option<IpAddr> {
    match url::Url::parse(url).ok()?.host()? {
        url::Host::Ipv4(address) => Some(address.into()),
        url::Host::Ipv6(address) => Some(address.into()),
        url::Host::Domain(_) => None,
    }
}

/// The host of `host`, `host:port`, `[v6]` or `[v6]:port`.
fn endpoint_host(endpoint: &str) -> &str {
    if let Some(rest) = endpoint.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match endpoint.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => endpoint,
    }
}

/// The full plan, from the staged bundle (`bundle_dir`: its files; `db`: the staged etcd db).
pub fn plan(
    manifest: &Manifest,
    address: IpAddr,
    name: &str,
    bundle_dir: &Path,
    db: &Path,
    etcd_prefix: &str,
) -> Result<Plan, Error> {
    let old_address = old_address(manifest)?;
    let old_name = manifest.node.name.clone();
    let pki = bundle_dir.join(layout::PKI_DIR);
    let renamed = !old_name.eq_ignore_ascii_case(name);
    let mut reissued = Vec::new();
    let mut kept: Vec<String> = certs::AUTHORITIES.iter().map(|a| a.to_string()).collect();
    kept.extend(["sa".to_string()]);
    for leaf in certs::KUBEADM_LEAVES {
        let path = pki.join(format!("{leaf}.crt"));
        if !path.exists() {
            continue;
        }
        let info = read_cert(&path)?;
        let names_old = (old_address != address && info.covers_ip(&old_address))
            || (renamed && info.covers_dns(&old_name));
        if names_old {
            reissued.push(leaf.to_string());
        } else {
            kept.push(leaf.to_string());
        }
    }
    let control_plane_endpoint = control_plane_endpoint(
        manifest.cluster.control_plane_endpoint.as_deref(),
        old_address,
        address,
        manifest.node.bind_port.unwrap_or(DEFAULT_BIND_PORT),
    );
    let (etcd_member, etcd_peer_url) = etcd_member(manifest, address, name);
    let skipped = Carryover::from_snapshot(db, etcd_prefix, &old_name, bundle_dir)?
        .skip_addons
        .iter()
        .any(|phase| phase == SKIP_KUBE_PROXY);
    let (workers, pinned_settings, kube_proxy_map) = snapshot_facts(
        db,
        etcd_prefix,
        &old_name,
        old_address,
        &control_plane_endpoint,
    )?;
    Ok(Plan {
        old_address,
        new_address: address,
        old_name: old_name.clone(),
        new_name: name.to_string(),
        etcd_member,
        etcd_peer_url,
        reissued_certificates: reissued,
        kept_certificates: kept,
        kubeconfigs: layout::KUBEADM_KUBECONFIGS
            .iter()
            .map(|c| format!("/{c}"))
            .collect(),
        control_plane_endpoint,
        kube_proxy: match (skipped, kube_proxy_map) {
            (false, _) => KubeProxy::Rewritten,
            (true, true) => KubeProxy::ByHand,
            (true, false) => KubeProxy::Absent,
        },
        old_node: renamed.then_some(old_name),
        workers,
        pinned_settings,
    })
}

/// What becomes of the controlPlaneEndpoint (`endpoint`, as the ClusterConfiguration sets it) when
/// the node moves from `old_address` to `address`.
fn control_plane_endpoint(
    endpoint: Option<&str>,
    old_address: IpAddr,
    address: IpAddr,
    bind_port: u16,
) -> Endpoint {
    let endpoint = endpoint.filter(|e| !e.is_empty());
    match endpoint {
        _ if address == old_address => Endpoint::Unchanged {
            endpoint: endpoint.map_or_else(|| host_port(old_address, bind_port), str::to_string),
        },
        Some(e) if endpoint_host(e).parse::<IpAddr>().ok() != Some(old_address) => Endpoint::Kept {
            endpoint: e.to_string(),
        },
        // kubeadm adds bindPort to an endpoint without one (SetClusterDynamicDefaults).
        found => {
            let port = found
                .and_then(|e| e.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(bind_port);
            Endpoint::Moved {
                old_server: format!("https://{}", host_port(old_address, port)),
                new_server: format!("https://{}", host_port(address, port)),
                set: found.is_some(),
            }
        }
    }
}

/// The other Nodes of the snapshot with what each needs, the ConfigMap entries outside kubeadm's
/// own that name the old address, and whether kube-proxy's ConfigMap exists.
fn snapshot_facts(
    db: &Path,
    etcd_prefix: &str,
    node: &str,
    old_address: IpAddr,
    endpoint: &Endpoint,
) -> Result<(Vec<Worker>, Vec<String>, bool), Error> {
    let nodes = Resource::Nodes.key(etcd_prefix, None, "");
    let config_maps = Resource::ConfigMaps.key(etcd_prefix, None, "");
    let values = crate::etcd::keys::current_values(db, &|key| {
        key.starts_with(nodes.as_bytes()) || key.starts_with(config_maps.as_bytes())
    })?;
    let command = match endpoint {
        Endpoint::Moved { new_server, .. } => Some(format!("{WORKER_COMMAND} {new_server}")),
        Endpoint::Kept { .. } | Endpoint::Unchanged { .. } => None,
    };
    let old = old_address.to_string();
    let mut workers = Vec::new();
    let mut pinned = Vec::new();
    let kube_proxy = Resource::ConfigMaps.key(etcd_prefix, Some("kube-system"), "kube-proxy");
    let kube_proxy_map = values.contains_key(kube_proxy.as_bytes());
    for (key, value) in &values {
        let key = String::from_utf8_lossy(key);
        if let Some(name) = key.strip_prefix(nodes.as_str()) {
            if name != node {
                workers.push(Worker {
                    node: name.to_string(),
                    command: command.clone(),
                });
            }
            continue;
        }
        let Some(path) = key.strip_prefix(config_maps.as_str()) else {
            continue;
        };
        let kubeadms = KUBEADM_WRITTEN
            .iter()
            .any(|(ns, name, _)| path == format!("{ns}/{name}"));
        if kubeadms {
            continue;
        }
        // An object cpr cannot read (encrypted at rest) cannot be searched; kubeadm's are above.
        let Ok(map) = crate::k8s::config_map(value) else {
            continue;
        };
        for (entry, text) in &map.data {
            if names_address(text, &old) {
                pinned.push(format!(
                    "ConfigMap {}/{} key {entry} names {old}",
                    map.namespace, map.name
                ));
            }
        }
    }
    Ok((workers, pinned, kube_proxy_map))
}

/// `text` names `address` as a whole token (10.0.1.1 is not in 10.0.1.10).
pub fn names_address(text: &str, address: &str) -> bool {
    whole_matches(text, address).next().is_some()
}

/// Where `address` stands in `text` as a whole token, not as part of a longer address or name.
fn whole_matches<'a>(text: &'a str, address: &'a str) -> impl Iterator<Item = usize> + 'a {
    let part = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.');
    text.match_indices(address)
        .map(|(at, _)| at)
        .filter(move |&at| {
            !part(text[..at].chars().next_back())
                && !part(text[at + address.len()..].chars().next())
        })
}

/// The backed-up ClusterConfiguration for `kubeadm init` on the new address: a controlPlaneEndpoint
/// that was the old address becomes the new one, so kubeadm writes the new server into admin.conf,
/// kubelet.conf, cluster-info and kube-proxy's kubeconfig alike, and into the apiserver certificate.
pub fn cluster_configuration(yaml: &str, plan: &Plan, origin: &str) -> Result<String, Error> {
    let Endpoint::Moved { new_server, .. } = &plan.control_plane_endpoint else {
        return Ok(yaml.to_string());
    };
    let mut doc: serde_norway::Value =
        serde_norway::from_str(yaml).map_err(|e| crate::node::Error::KubeadmConfig {
            key: origin.to_string(),
            why: format!("the ClusterConfiguration is not valid YAML: {e}"),
        })?;
    let had_endpoint = doc
        .get("controlPlaneEndpoint")
        .and_then(serde_norway::Value::as_str)
        .is_some_and(|e| !e.is_empty());
    if !had_endpoint {
        return Ok(yaml.to_string());
    }
    doc["controlPlaneEndpoint"] =
        serde_norway::Value::from(new_server.trim_start_matches("https://"));
    Ok(serde_norway::to_string(&doc).expect("YAML values serialize"))
}

/// A backed-up manifest of kubeadm's own static pods for the new address: the old address becomes
/// the new one wherever it stands as a whole token (`--advertise-address`, etcd's URLs, probes), and
/// on a rename etcd's `--name` and `--initial-cluster` member name follow; the operator's other
/// changes (admission plugins, extra flags) stay.
pub fn manifest(text: &str, plan: &Plan) -> String {
    let (old, new) = (plan.old_address.to_string(), plan.new_address.to_string());
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for at in whole_matches(text, &old) {
        out.push_str(&text[last..at]);
        out.push_str(&new);
        last = at + old.len();
    }
    let rest = &text[last..];
    out.push_str(rest);
    if !plan.renamed() {
        return out;
    }
    out.replace(
        &format!("--name={}\n", plan.old_name),
        &format!("--name={}\n", plan.new_name),
    )
    .replace(
        &format!("--initial-cluster={}=", plan.old_name),
        &format!("--initial-cluster={}=", plan.new_name),
    )
}

/// The plan as an operator reads it before anything changes (and in the report).
pub fn describe(plan: &Plan) -> String {
    let mut out = format!(
        "restore onto a new address: node {} at {} becomes {} at {}\n",
        plan.old_name, plan.old_address, plan.new_name, plan.new_address
    );
    let mut line = |text: String| {
        out.push_str("  ");
        out.push_str(&text);
        out.push('\n');
    };
    line(format!(
        "etcd member: {} with peer URL {} (the restored data, a one-member cluster)",
        plan.etcd_member, plan.etcd_peer_url
    ));
    line(format!(
        "certificates re-issued by kubeadm init from the restored CAs (the old ones kept aside): {}",
        list(&plan.reissued_certificates)
    ));
    line(format!(
        "certificates kept: {}",
        list(&plan.kept_certificates)
    ));
    line(format!(
        "kubeconfigs written by kubeadm with the new server: {}",
        plan.kubeconfigs.join(", ")
    ));
    line(match &plan.old_node {
        Some(old) => format!(
            "Node {old}: deleted through the API once the new control plane is up; the kubelet registers {}",
            plan.new_name
        ),
        None => format!("Node {}: kept (same name)", plan.old_name),
    });
    match &plan.control_plane_endpoint {
        Endpoint::Moved {
            old_server,
            new_server,
            set,
        } => {
            let mut rewritten = vec!["cluster-info"];
            if *set {
                rewritten.insert(0, "kubeadm-config");
            }
            if plan.kube_proxy == KubeProxy::Rewritten {
                rewritten.push("kube-proxy's kubeconfig");
            }
            line(format!(
                "controlPlaneEndpoint {old_server} becomes {new_server}; kubeadm rewrites {} from it",
                rewritten.join(", ")
            ));
            line(kube_proxy_step(plan.kube_proxy, new_server));
            if plan.workers.is_empty() {
                line("workers: none in the backup".to_string());
            }
            for worker in &plan.workers {
                line(format!(
                    "worker {}: run `{}` on it",
                    worker.node,
                    worker.command.as_deref().unwrap_or_default()
                ));
            }
        }
        Endpoint::Kept { endpoint } => line(format!(
            "controlPlaneEndpoint {endpoint} is kept: point it (its DNS record or load balancer) at {} before phase 2 (`cpr finish`), whose kubeadm init waits for the API server through it; workers need nothing",
            plan.new_address
        )),
        Endpoint::Unchanged { endpoint } => line(format!(
            "controlPlaneEndpoint {endpoint} is unchanged (the node keeps its address); workers need nothing"
        )),
    }
    for pinned in &plan.pinned_settings {
        line(format!("change by hand: {pinned}"));
    }
    out
}

/// kubeadm's ConfigMaps that name the new server once phase 2 ran: kubeadm-config only when the
/// ClusterConfiguration set the endpoint, kube-proxy's only when kubeadm's phase rewrote it.
pub fn rewritten_config_maps(plan: &Plan) -> Vec<(&'static str, &'static str, &'static str)> {
    let Endpoint::Moved { set, .. } = &plan.control_plane_endpoint else {
        return Vec::new();
    };
    KUBEADM_WRITTEN
        .into_iter()
        .filter(|(_, name, _)| match *name {
            "kubeadm-config" => *set,
            "kube-proxy" => plan.kube_proxy == KubeProxy::Rewritten,
            _ => true,
        })
        .collect()
}

/// What happens to kube-proxy when the server moves.
pub fn kube_proxy_step(kube_proxy: KubeProxy, new_server: &str) -> String {
    match kube_proxy {
        KubeProxy::Rewritten => "kube-proxy: cpr deletes its pods through the API once the control plane is up, so that its DaemonSet starts them with the new kubeconfig".to_string(),
        KubeProxy::ByHand => format!("kube-proxy: kubeadm's addon/kube-proxy phase is skipped (its ConfigMap is encrypted at rest, or no kube-proxy DaemonSet), so ConfigMap kube-system/kube-proxy keeps the old server: set kubeconfig.conf's server to {new_server} (kubectl -n kube-system edit configmap kube-proxy), then `kubectl -n kube-system delete pods -l k8s-app=kube-proxy`"),
        KubeProxy::Absent => "kube-proxy: none in the cluster".to_string(),
    }
}

/// Phase 2's `kubeadm init` waits for the API server through a kept controlPlaneEndpoint: a name
/// that still leads to the lost node, or nowhere, would time it out after the node changed, so
/// phase 2 refuses first. An address (a VIP, a load balancer) and a name leading elsewhere (a load
/// balancer's) are the operator's to know.
pub fn check_endpoint(plan: &Plan) -> Result<(), Error> {
    let Endpoint::Kept { endpoint } = &plan.control_plane_endpoint else {
        return Ok(());
    };
    let host = endpoint_host(endpoint);
    if !plan.readdressed() || host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let resolved: Vec<IpAddr> = (host, 0)
        .to_socket_addrs()
        .map(|addrs| addrs.map(|a| a.ip()).collect())
        .unwrap_or_default();
    let leads = if resolved.is_empty() {
        "does not resolve".to_string()
    } else if resolved.contains(&plan.old_address) {
        format!(
            "still resolves to the lost node's address {}",
            plan.old_address
        )
    } else {
        return Ok(());
    };
    Err(Error::NewAddress {
        node: plan.old_name.clone(),
        why: format!(
            "the controlPlaneEndpoint {endpoint} {leads}, and kubeadm init waits for the API server through it. Point {host} (its DNS record or load balancer) at {}, then run `cpr finish`",
            plan.new_address
        ),
    })
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeadm_manifest_follows_the_new_address_and_name() {
        let mut plan = plan_with(
            Endpoint::Kept {
                endpoint: "cp:6443".into(),
            },
            KubeProxy::Rewritten,
        );
        plan.new_name = "master0b".into();
        plan.old_node = Some("master0".into());
        let text = "    - --listen-peer-urls=https://10.0.1.10:2380\n    - --name=master0\n    - --initial-cluster=master0=https://10.0.1.10:2380\n    - --other=10.0.1.100\n";
        assert_eq!(
            manifest(text, &plan),
            "    - --listen-peer-urls=https://10.0.1.20:2380\n    - --name=master0b\n    - --initial-cluster=master0b=https://10.0.1.20:2380\n    - --other=10.0.1.100\n"
        );
    }

    fn plan_with(endpoint: Endpoint, kube_proxy: KubeProxy) -> Plan {
        Plan {
            old_address: "10.0.1.10".parse().unwrap(),
            new_address: "10.0.1.20".parse().unwrap(),
            old_name: "master0".into(),
            new_name: "master0".into(),
            etcd_member: "master0".into(),
            etcd_peer_url: "https://10.0.1.20:2380".into(),
            reissued_certificates: vec![],
            kept_certificates: vec![],
            kubeconfigs: vec![],
            control_plane_endpoint: endpoint,
            kube_proxy,
            old_node: None,
            workers: vec![],
            pinned_settings: vec![],
        }
    }

    #[test]
    fn the_same_address_changes_nothing_for_the_workers() {
        let old: IpAddr = "10.0.1.10".parse().unwrap();
        for endpoint in [None, Some("10.0.1.10:6443"), Some("cp.example.org:6443")] {
            assert!(
                matches!(
                    control_plane_endpoint(endpoint, old, old, 6443),
                    Endpoint::Unchanged { .. }
                ),
                "{endpoint:?}"
            );
        }
        let new = "10.0.1.20".parse().unwrap();
        assert_eq!(
            control_plane_endpoint(None, old, new, 6443),
            Endpoint::Moved {
                old_server: "https://10.0.1.10:6443".into(),
                new_server: "https://10.0.1.20:6443".into(),
                set: false
            }
        );
    }

    #[test]
    fn only_the_config_maps_kubeadm_rewrites_are_expected_to_name_the_new_server() {
        let moved = |set| Endpoint::Moved {
            old_server: "https://10.0.1.10:6443".into(),
            new_server: "https://10.0.1.20:6443".into(),
            set,
        };
        let names = |plan: &Plan| -> Vec<&str> {
            rewritten_config_maps(plan)
                .into_iter()
                .map(|(_, name, _)| name)
                .collect()
        };
        let all = plan_with(moved(true), KubeProxy::Rewritten);
        assert_eq!(
            names(&all),
            ["kubeadm-config", "cluster-info", "kube-proxy"]
        );
        // kubeadm never fills in an unset endpoint; a skipped kube-proxy phase leaves its ConfigMap.
        let unset = plan_with(moved(false), KubeProxy::ByHand);
        assert_eq!(names(&unset), ["cluster-info"]);
        let said = describe(&unset);
        assert!(
            said.contains("kubeadm rewrites cluster-info from it")
                && said.contains("kubectl -n kube-system edit configmap kube-proxy")
                && !said.contains("cpr deletes its pods"),
            "{said}"
        );
    }

    #[test]
    fn a_kept_endpoint_must_not_lead_to_the_lost_node() {
        let kept = |endpoint: &str| {
            let mut plan = plan_with(
                Endpoint::Kept {
                    endpoint: endpoint.into(),
                },
                KubeProxy::Rewritten,
            );
            plan.old_address = "127.0.0.1".parse().unwrap();
            plan
        };
        let err = check_endpoint(&kept("localhost:6443"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("still resolves to the lost node's address 127.0.0.1")
                && err.contains("Point localhost (its DNS record or load balancer) at 10.0.1.20, then run `cpr finish`"),
            "{err}"
        );
        let err = check_endpoint(&kept("cp.invalid:6443"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not resolve"), "{err}");
        // A VIP or a load balancer's address is the operator's to know.
        check_endpoint(&kept("10.0.1.5:6443")).unwrap();
    }

    #[test]
    fn endpoint_hosts_and_whole_addresses() {
        assert_eq!(endpoint_host("10.0.1.10:6443"), "10.0.1.10");
        assert_eq!(endpoint_host("[fd00::10]:6443"), "fd00::10");
        assert_eq!(endpoint_host("api.example.org"), "api.example.org");
        assert_eq!(url_host("https://10.0.1.11:2380"), "10.0.1.11".parse().ok());
        assert!(names_address("server: https://10.0.1.10:6443", "10.0.1.10"));
        assert!(!names_address("10.0.1.100", "10.0.1.10"));
        assert!(!names_address("110.0.1.10", "10.0.1.10"));
        assert!(is_node_name("master0b.example.org"));
        assert!(!is_node_name("(none)") && !is_node_name("") && !is_node_name("-a"));
    }
}
