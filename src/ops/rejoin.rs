//! A minority of a several-member control plane lost: the replacement rejoins the live cluster.
//!
//! Restoring a snapshot would roll the live cluster back, so nothing of the bundle's etcd is used.
//! Phase 1 puts back the cluster's shared CAs and keys only: `kubeadm join --control-plane` without
//! `--certificate-key` expects them on disk (`cmd/kubeadm/app/cmd/phases/join/controlplaneprepare.go`)
//! and signs this node's leaves itself, so old etcd leaves never clash with the new member. Phase 2
//! removes the lost member through the live cluster, creates a bootstrap token through the live API
//! server, pins the cluster CA and runs `kubeadm join`, which adds this node's etcd member (a learner
//! first where kubeadm does so) and writes its static pods.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::Error;
use crate::bundle::manifest::{Cluster, Manifest, Node};
use crate::etcd::client::{EtcdClient, MemberInfo, TlsFiles};
use crate::node::apiserver::ApiServer;
use crate::node::kubeconfig::Kubeconfig;
use crate::node::layout;

/// The files of `etc/kubernetes/pki` every control-plane node shares: kubeadm's `copycerts` list
/// (`cmd/kubeadm/app/phases/copycerts/copycerts.go` `certsToTransfer`, local etcd).
pub const SHARED_PKI: [&str; 8] = [
    "ca.crt",
    "ca.key",
    "sa.key",
    "sa.pub",
    "front-proxy-ca.crt",
    "front-proxy-ca.key",
    "etcd/ca.crt",
    "etcd/ca.key",
];
/// A token lives long enough for one join, retries included (kubeadm's default is 24 h).
const TOKEN_TTL: time::Duration = time::Duration::hours(1);
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long phase 2 keeps asking the live cluster to remove the lost member. One request waits
/// 10 s, and etcd gives up on a proposal it cannot commit after 7 s (`ReqTimeout` in etcd's
/// `server/config/config.go`: 5 s plus two election timeouts), so one attempt fails on a loaded
/// cluster or one electing a leader. kubeadm retries a removal on any error as well
/// (`cmd/kubeadm/app/util/etcd/etcd.go` `RemoveMember`).
const REMOVE_PATIENCE: Duration = Duration::from_secs(120);
/// A bootstrap token's Secret is this plus its ID (`k8s.io/cluster-bootstrap/token/api/types.go`
/// `BootstrapTokenSecretPrefix`).
const BOOTSTRAP_TOKEN_PREFIX: &str = "bootstrap-token-";
/// kube-apiserver's default port, when the bundle does not name the node's.
const DEFAULT_BIND_PORT: u16 = 6443;

/// What phase 1 found and phase 2 joins through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejoin {
    /// `host:port` of the live API server kubeadm joins through.
    pub api_endpoint: String,
    /// The client URL of the live etcd member that answered the quorum probe.
    pub etcd_endpoint: String,
    /// Set once `kubeadm join` succeeded: a rerun of phase 2 then only waits for the member (the
    /// files kubeadm wrote and the member's data dir are this node's new ones, not the old member's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<Joined>,
}

/// What a successful `kubeadm join` leaves for the rest of phase 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Joined {
    /// The bootstrap token's ID, deleted once the member votes.
    pub token_id: String,
    pub removed_member: Option<String>,
}

/// What phase 2 did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RejoinReport {
    pub api_endpoint: String,
    /// The lost member removed through the live cluster (`name (id)`), if it was still listed.
    pub removed_member: Option<String>,
    /// The bootstrap token's ID (its secret is never shown).
    pub token_id: String,
    /// This node's member once kubeadm joined it: `name (id)`, a started voter.
    pub member: String,
}

/// Joins through the controlPlaneEndpoint, unless it is this node's own address (then through the
/// member that answered, on the node's API server port). A cluster without one is refused here, in
/// phase 1, before anything changes: kubeadm refuses to add a control-plane node to it
/// (`cmd/kubeadm/app/cmd/phases/join/preflight.go` `checkIfReadyForAdditionalControlPlane`), and
/// phase 2 would find that out only after removing the lost member and creating a token.
pub fn plan(cluster: &Cluster, node: &Node, etcd_endpoint: &str) -> Result<Rejoin, Error> {
    let host = url::Url::parse(etcd_endpoint)
        .ok()
        .and_then(|url| url.host_str().map(str::to_string))
        .ok_or_else(|| Error::Rejoin {
            step: "plan",
            object: etcd_endpoint.to_string(),
            why: "the member's client URL has no host".into(),
        })?;
    let live_api = format!("{host}:{}", node.bind_port.unwrap_or(DEFAULT_BIND_PORT));
    let Some(endpoint) = cluster.control_plane_endpoint.clone() else {
        return Err(Error::Rejoin {
            step: "plan the rejoin",
            object: "controlPlaneEndpoint in the bundle's kubeadm-config".into(),
            why: format!(
                "the cluster has none, and kubeadm join --control-plane refuses a cluster without a stable controlPlaneEndpoint. Nothing was changed. Set it on the live cluster (kubectl -n kube-system edit cm kubeadm-config: controlPlaneEndpoint in ClusterConfiguration, host:port of a load balancer or DNS name in front of every API server, or {live_api}, the live member's), then join this node by hand (kubeadm token create --print-join-command on a live node, plus --control-plane); its bundle predates the change"
            ),
        });
    };
    let own = |host: &str| {
        node.ips.iter().any(|ip| ip == host) || node.advertise_address.as_deref() == Some(host)
    };
    let api_endpoint = if own(host_of(&endpoint)) {
        live_api
    } else {
        endpoint
    };
    Ok(Rejoin {
        api_endpoint,
        etcd_endpoint: etcd_endpoint.to_string(),
        joined: None,
    })
}

fn host_of(endpoint: &str) -> &str {
    match endpoint.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            host.trim_start_matches('[').trim_end_matches(']')
        }
        _ => endpoint,
    }
}

/// Whether `path` (relative to the bundle's pki dir) is shared by every control-plane node.
pub fn is_shared(path: &Path) -> bool {
    SHARED_PKI.iter().any(|shared| path == Path::new(shared))
}

/// Everything phase 2 needs besides the files: the kubeadm binary, the staged bundle and how long to
/// wait for the new member.
pub struct Join<'a> {
    pub kubeadm: &'a Path,
    /// The verified bundle's files (its admin.conf and etcd client pair reach the live cluster).
    pub bundle_dir: &'a Path,
    pub timeout: Duration,
}

/// Phase 2: the lost member out, a bootstrap token in, `kubeadm join --control-plane` (then
/// `record` keeps that it succeeded), this node's member a started voter and the token deleted. A
/// rerun after `kubeadm join` succeeded (`rejoin.joined`) only waits for the member.
pub fn join(
    join: &Join<'_>,
    manifest: &Manifest,
    rejoin: &Rejoin,
    record: &mut dyn FnMut(&Joined) -> Result<(), Error>,
) -> Result<RejoinReport, Error> {
    let tls = super::ha::client_tls(join.bundle_dir);
    let mut etcd = connect(&rejoin.etcd_endpoint, &tls)?;
    let admin = join.bundle_dir.join(layout::ADMIN_CONF);
    let mut kubeconfig = Kubeconfig::load(&admin)?;
    kubeconfig.server = format!("https://{}", rejoin.api_endpoint);
    let api = ApiServer::new(&kubeconfig)?;
    let joined = match &rejoin.joined {
        Some(joined) => {
            log::info!(
                "finish: kubeadm join succeeded in an earlier run (bootstrap token {}); waiting for the member only",
                joined.token_id
            );
            joined.clone()
        }
        None => {
            let removed_member = remove_lost_member(&mut etcd, manifest, &tls)?;
            let token = Token::new()?;
            create_token(&api, &token, &manifest.node.name)?;
            log::info!(
                "finish: bootstrap token {} created through {}",
                token.id,
                api.server()
            );
            let ca = join.bundle_dir.join(layout::PKI_DIR).join("ca.crt");
            let pin = ca_cert_hash(&ca)?;
            run_kubeadm_join(join.kubeadm, manifest, rejoin, &token, &pin)?;
            let joined = Joined {
                token_id: token.id,
                removed_member,
            };
            record(&joined)?;
            joined
        }
    };
    let member = wait_for_voter(&mut etcd, manifest, join.timeout)?;
    delete_token(&api, &joined.token_id);
    Ok(RejoinReport {
        api_endpoint: rejoin.api_endpoint.clone(),
        removed_member: joined.removed_member,
        token_id: joined.token_id,
        member,
    })
}

fn connect(endpoint: &str, tls: &TlsFiles) -> Result<EtcdClient, Error> {
    EtcdClient::connect_within(endpoint, Some(tls), ASK_TIMEOUT, Duration::from_secs(10)).map_err(
        |e| Error::Rejoin {
            step: "connect to the live etcd",
            object: endpoint.to_string(),
            why: format!("{e}; the quorum answered there in phase 1: is the network up?"),
        },
    )
}

/// The member this node was: its name, or a peer URL on one of its addresses.
fn is_lost_member(member: &MemberInfo, manifest: &Manifest) -> bool {
    member.name == manifest.etcd.member_name
        || member.peer_urls.iter().any(|url| {
            url::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .is_some_and(|host| manifest.node.ips.contains(&host))
        })
}

/// Removes this node's old member through the live cluster, unless it still answers: then the old
/// node is alive and nothing is removed.
fn remove_lost_member(
    etcd: &mut EtcdClient,
    manifest: &Manifest,
    tls: &TlsFiles,
) -> Result<Option<String>, Error> {
    let endpoint = etcd.endpoint().to_string();
    let members = etcd.members().map_err(|e| Error::Rejoin {
        step: "list the etcd members",
        object: endpoint.clone(),
        why: e.to_string(),
    })?;
    let Some(lost) = members.iter().find(|m| is_lost_member(m, manifest)) else {
        log::info!(
            "finish: no member named {} or on this node's addresses is left; nothing to remove",
            manifest.etcd.member_name
        );
        return Ok(None);
    };
    for url in &lost.client_urls {
        if EtcdClient::connect_within(url, Some(tls), ASK_TIMEOUT, ASK_TIMEOUT)
            .and_then(|mut c| c.status())
            .is_ok()
        {
            return Err(Error::Rejoin {
                step: "remove the lost member",
                object: format!("{} ({url})", lost.name),
                why: "it still answers: the old node is alive. Stop its etcd (or power it off), then run cpr finish again; nothing was removed".into(),
            });
        }
    }
    let named = format!("{} ({:x})", lost.name, lost.id);
    let deadline = Instant::now() + REMOVE_PATIENCE;
    loop {
        let failed = match etcd.member_remove(lost.id) {
            Ok(true) => {
                log::info!("finish: removed the lost etcd member {named} through {endpoint}");
                break;
            }
            Ok(false) => {
                log::info!("finish: the lost etcd member {named} is no longer a member: an earlier request removed it");
                break;
            }
            Err(e) => e,
        };
        // A removal etcd committed after its answer was lost is done: asking again would only be
        // told the member is not found.
        let listed = match etcd.members() {
            Ok(now) if now.iter().all(|m| m.id != lost.id) => {
                log::info!("finish: the lost etcd member {named} is gone from the member list: the removal whose answer was lost ({failed}) went through");
                break;
            }
            Ok(_) => "the member is still listed".to_string(),
            Err(e) => format!("the member list did not answer either ({e})"),
        };
        if Instant::now() >= deadline {
            return Err(Error::Rejoin {
                step: "remove the lost member",
                object: format!("{named} through {endpoint}"),
                why: format!(
                    "{failed}; asked for {} s. Check the live cluster's health (etcdctl endpoint status --cluster), then run cpr finish again",
                    REMOVE_PATIENCE.as_secs()
                ),
            });
        }
        log::warn!(
            "finish: removing the lost etcd member {named} through {endpoint}: {failed}; {listed}, asking again (for up to {} s in all)",
            REMOVE_PATIENCE.as_secs()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    warn_of_unreachable_voters(&members, lost.id, tls);
    Ok(Some(named))
}

/// etcd's strict reconfiguration check adds no member while a voting member is unreachable, so
/// kubeadm join waits (and retries) until every other lost node is rejoined or removed: say which.
fn warn_of_unreachable_voters(members: &[MemberInfo], removed: u64, tls: &TlsFiles) {
    for member in members.iter().filter(|m| m.id != removed && !m.is_learner) {
        let answers = member.client_urls.iter().any(|url| {
            EtcdClient::connect_within(url, Some(tls), ASK_TIMEOUT, ASK_TIMEOUT)
                .and_then(|mut c| c.status())
                .is_ok()
        });
        if !answers {
            log::warn!(
                "finish: etcd member {} ({:x}) does not answer: etcd adds no member while a voting member is unreachable, so kubeadm join waits until its node is restored too (cpr restore there) or it is removed (etcdctl member remove {:x})",
                member.name, member.id, member.id
            );
        }
    }
}

/// A bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}` (`k8s.io/cluster-bootstrap/token/api/types.go`
/// `BootstrapTokenPattern`).
struct Token {
    id: String,
    secret: String,
}

impl Token {
    fn new() -> Result<Token, Error> {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut bytes = [0u8; 22];
        let mut text = String::new();
        while text.len() < bytes.len() {
            getrandom::getrandom(&mut bytes).map_err(|e| Error::Rejoin {
                step: "create a bootstrap token",
                object: "the kernel's random source".into(),
                why: e.to_string(),
            })?;
            // 252 is the largest multiple of 36 below 256: no character is likelier than another.
            text.extend(
                bytes
                    .iter()
                    .filter(|b| **b < 252)
                    .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char),
            );
        }
        Ok(Token {
            id: text[..6].to_string(),
            secret: text[6..22].to_string(),
        })
    }

    fn text(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

/// The Secret `kubeadm token create` stores (`cmd/kubeadm/app/phases/bootstraptoken/node/token.go`,
/// fields from `k8s.io/cluster-bootstrap/token/api/types.go`): authentication and signing, the
/// default node group, an expiration.
fn token_secret(token: &Token, node: &str, expires: time::OffsetDateTime) -> serde_json::Value {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let expiration = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("{BOOTSTRAP_TOKEN_PREFIX}{}", token.id), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "data": {
            "description": b64(&format!("cpr: rejoin of control-plane node {node}")),
            "token-id": b64(&token.id),
            "token-secret": b64(&token.secret),
            "expiration": b64(&expiration),
            "usage-bootstrap-authentication": b64("true"),
            "usage-bootstrap-signing": b64("true"),
            "auth-extra-groups": b64("system:bootstrappers:kubeadm:default-node-token"),
        },
    })
}

fn create_token(api: &ApiServer, token: &Token, node: &str) -> Result<(), Error> {
    let secret = token_secret(token, node, time::OffsetDateTime::now_utc() + TOKEN_TTL);
    api.create("/api/v1/namespaces/kube-system/secrets", &secret)
        .map(drop)
        .map_err(|e| Error::Rejoin {
            step: "create a bootstrap token",
            object: api.server().to_string(),
            why: format!("{e}; the bundle's admin.conf must be accepted by the live API server"),
        })
}

/// The token was on kubeadm's command line and stays valid for an hour: once the member votes it
/// has done its work. Failing to delete it costs nothing of the rejoin, so it is a warning.
fn delete_token(api: &ApiServer, token_id: &str) {
    let path = format!("/api/v1/namespaces/kube-system/secrets/{BOOTSTRAP_TOKEN_PREFIX}{token_id}");
    match api.delete(&path) {
        Ok(true) => log::info!("finish: bootstrap token {token_id} deleted"),
        Ok(false) => log::info!("finish: bootstrap token {token_id} was gone already"),
        Err(error) => log::warn!(
            "finish: could not delete the bootstrap token {token_id} ({error}); it expires within {} h, or delete it now: kubeadm token delete {token_id}",
            TOKEN_TTL.whole_hours()
        ),
    }
}

/// `sha256:` + the hex sha256 of the CA certificate's SubjectPublicKeyInfo, as kubeadm's
/// `cmd/kubeadm/app/util/pubkeypin/pubkeypin.go` `Hash` pins it.
pub fn ca_cert_hash(ca: &Path) -> Result<String, Error> {
    let failed = |why: String| Error::Rejoin {
        step: "pin the cluster CA",
        object: ca.display().to_string(),
        why,
    };
    let pem = std::fs::read(ca).map_err(|e| failed(e.to_string()))?;
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(&pem).map_err(|e| failed(format!("not PEM: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| failed(format!("not a certificate: {e}")))?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(cert.tbs_certificate.subject_pki.raw))
    ))
}

fn run_kubeadm_join(
    kubeadm: &Path,
    manifest: &Manifest,
    rejoin: &Rejoin,
    token: &Token,
    pin: &str,
) -> Result<(), Error> {
    let address = manifest
        .node
        .advertise_address
        .clone()
        .or_else(|| manifest.node.ips.first().cloned())
        .unwrap_or_default();
    let port = manifest
        .node
        .bind_port
        .unwrap_or(DEFAULT_BIND_PORT)
        .to_string();
    let mut command = Command::new(kubeadm);
    command
        .args(["join", &rejoin.api_endpoint, "--control-plane"])
        .args(["--discovery-token-ca-cert-hash", pin])
        .args(["--node-name", &manifest.node.name])
        .args(["--apiserver-advertise-address", &address])
        .args(["--apiserver-bind-port", &port]);
    if let Some(socket) = &manifest.node.cri_socket {
        command.args(["--cri-socket", socket]);
    }
    log::info!("finish: running {command:?} --token {}.<secret>", token.id);
    let status = command
        .args(["--token", &token.text()])
        // cpr's stdout carries its own report; kubeadm's progress goes with the logs.
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .map_err(|e| Error::Rejoin {
            step: "run kubeadm join",
            object: kubeadm.display().to_string(),
            why: format!("{e}. Is kubeadm installed and on PATH?"),
        })?;
    if status.success() {
        return Ok(());
    }
    Err(Error::Rejoin {
        step: "run kubeadm join",
        object: format!("kubeadm join {} --control-plane", rejoin.api_endpoint),
        why: format!(
            "exit status {}; its output is above. Fix the cause and run cpr finish again",
            status.code().unwrap_or(-1)
        ),
    })
}

/// Waits until this node's member is listed started (it has client URLs) and a voter.
fn wait_for_voter(
    etcd: &mut EtcdClient,
    manifest: &Manifest,
    timeout: Duration,
) -> Result<String, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let members = etcd.members();
        if let Ok(members) = &members {
            if let Some(m) = members.iter().find(|m| {
                m.name == manifest.etcd.member_name && !m.client_urls.is_empty() && !m.is_learner
            }) {
                return Ok(format!("{} ({:x})", m.name, m.id));
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Rejoin {
                step: "wait for the new member",
                object: format!("{} through {}", manifest.etcd.member_name, etcd.endpoint()),
                why: format!(
                    "not a started voting member after {} s ({}); check its etcd pod's log",
                    timeout.as_secs(),
                    match members {
                        Ok(members) => members
                            .iter()
                            .map(|m| format!(
                                "{}{}",
                                if m.name.is_empty() {
                                    "(unstarted)"
                                } else {
                                    &m.name
                                },
                                if m.is_learner { " learner" } else { "" }
                            ))
                            .collect::<Vec<_>>()
                            .join(", "),
                        Err(e) => e.to_string(),
                    }
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_kubeadms_form() {
        let token = Token::new().unwrap();
        let text = token.text();
        assert_eq!(text.len(), 23);
        assert_eq!(&text[6..7], ".");
        assert!(text
            .chars()
            .filter(|c| *c != '.')
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        let secret = token_secret(&token, "master3", time::OffsetDateTime::UNIX_EPOCH);
        assert_eq!(
            secret["metadata"]["name"],
            format!("bootstrap-token-{}", token.id)
        );
        assert_eq!(secret["type"], "bootstrap.kubernetes.io/token");
    }

    #[test]
    fn the_endpoint_is_never_the_lost_node_itself() {
        let node = Node {
            ips: vec!["10.77.0.3".into()],
            ..Node::default()
        };
        let mut cluster = Cluster {
            control_plane_endpoint: Some("10.77.0.3:6443".into()),
            ..Cluster::default()
        };
        let rejoin = plan(&cluster, &node, "https://10.77.0.1:2379").unwrap();
        assert_eq!(rejoin.api_endpoint, "10.77.0.1:6443");
        cluster.control_plane_endpoint = Some("cp.example:6443".into());
        let rejoin = plan(&cluster, &node, "https://10.77.0.1:2379").unwrap();
        assert_eq!(rejoin.api_endpoint, "cp.example:6443");
    }

    #[test]
    fn a_cluster_without_a_control_plane_endpoint_is_refused_in_the_plan() {
        let node = Node {
            ips: vec!["10.77.0.3".into()],
            ..Node::default()
        };
        let error = plan(&Cluster::default(), &node, "https://10.77.0.1:2379")
            .unwrap_err()
            .to_string();
        assert!(error.contains("controlPlaneEndpoint"), "{error}");
        assert!(
            error.contains("kubectl -n kube-system edit cm kubeadm-config"),
            "{error}"
        );
        assert!(error.contains("10.77.0.1:6443"), "{error}");
        assert!(error.contains("Nothing was changed"), "{error}");
    }
}
