//! `cpr worker repoint`, run on each worker after its control plane was restored onto a new address
//! (`cpr restore --new-address`): the kubelet's kubeconfig gets the new API server, but only once that
//! server proved, over TLS, to hold a certificate from the cluster CA this worker already trusts.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_norway::Value;

use super::Error;
use crate::fsutil;
use crate::node::apiserver::ApiServer;
use crate::node::kubeconfig::Kubeconfig;
use crate::node::layout::Layout;

/// kubeadm's kubelet kubeconfig on every node (cmd/kubeadm/app/constants: `KubeletKubeConfigFileName`).
pub const KUBELET_CONF: &str = "etc/kubernetes/kubelet.conf";

pub struct RepointRequest {
    pub root: PathBuf,
    /// The kubelet's kubeconfig, relative to the root.
    pub kubeconfig: String,
    /// `https://HOST:PORT` of the restored control plane.
    pub server: String,
    pub systemctl: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepointReport {
    pub kubeconfig: PathBuf,
    pub old_server: String,
    pub new_server: String,
    /// The kubeconfig as it was (kept, never deleted); `None` when nothing changed.
    pub moved_aside: Option<PathBuf>,
    /// It already named the new server: nothing changed, kubelet was not restarted.
    pub already_done: bool,
}

pub fn repoint(request: &RepointRequest) -> Result<RepointReport, Error> {
    let layout = Layout::new(&request.root);
    let path = layout.path(&request.kubeconfig);
    let failed = |why: String| Error::Repoint {
        kubeconfig: path.clone(),
        server: request.server.clone(),
        why,
    };
    let refuse = |why: String| failed(format!("refused: {why}. Nothing was changed"));
    let server = request.server.trim_end_matches('/').to_string();
    if !server.starts_with("https://") || server.len() <= "https://".len() {
        return Err(refuse(
            "the server must be an https:// URL, as `cpr restore --new-address` prints it (https://ADDRESS:6443)".to_string(),
        ));
    }
    let current = Kubeconfig::load_under(&request.root, &path)?;
    // The CA this worker already trusts, and its own credentials: a server without a certificate
    // from that CA (another cluster's, a forged one) fails the TLS handshake.
    let probe = Kubeconfig {
        server: server.clone(),
        ..current.clone()
    };
    let api = ApiServer::new(&probe)?;
    if let Err(why) = api.request(reqwest::Method::GET, "/healthz") {
        return Err(refuse(format!(
            "it did not prove to be this cluster's API server (checked against the cluster CA in the kubeconfig): {why}"
        )));
    }
    let report = |moved_aside, already_done| RepointReport {
        kubeconfig: path.clone(),
        old_server: current.server.clone(),
        new_server: server.clone(),
        moved_aside,
        already_done,
    };
    if current.server.trim_end_matches('/') == server {
        log::info!(
            "worker: {} already names {server}; nothing to change",
            path.display()
        );
        return Ok(report(None, true));
    }
    let text = fs::read_to_string(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let rewritten = with_server(&text, &current.server, &server)
        .map_err(|why| refuse(format!("its YAML cannot be rewritten: {why}")))?;
    let mode = fs::metadata(&path)
        .map(|m| m.mode() & 0o777)
        .map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
    let stamp = crate::bundle::name::stamp(time::OffsetDateTime::now_utc());
    let aside = fsutil::sibling(&path, &format!(".cpr-old-{stamp}"));
    keep(&path, &aside).map_err(|source| Error::Write {
        path: aside.clone(),
        source,
    })?;
    fsutil::write_atomic(&path, rewritten.as_bytes(), mode).map_err(|source| Error::Write {
        path: path.clone(),
        source,
    })?;
    log::info!(
        "worker: {} now names {server} (was {}; the old file is {})",
        path.display(),
        current.server,
        aside.display()
    );
    let status = std::process::Command::new(&request.systemctl)
        .args(["restart", "kubelet"])
        .status()
        .map_err(|source| crate::node::Error::Run {
            command: format!("{} restart kubelet", request.systemctl.display()),
            source,
        })?;
    if !status.success() {
        return Err(failed(format!(
            "the kubeconfig now names the new server (the old one is {}), but `systemctl restart kubelet` exited with {status}: restart the kubelet by hand",
            aside.display()
        )));
    }
    Ok(report(Some(aside), false))
}

/// The kubeconfig with every cluster whose server is `old` pointed at `new`.
fn with_server(text: &str, old: &str, new: &str) -> Result<String, String> {
    let mut doc: Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    let clusters = doc
        .get_mut("clusters")
        .and_then(Value::as_sequence_mut)
        .ok_or("it has no clusters")?;
    for cluster in clusters {
        let Some(server) = cluster.get_mut("cluster").and_then(|c| c.get_mut("server")) else {
            continue;
        };
        if server.as_str() == Some(old) {
            *server = Value::from(new);
        }
    }
    serde_norway::to_string(&doc).map_err(|e| e.to_string())
}

/// Keeps `live` as `aside` (a second link, durable) before `live` is replaced: old data is moved
/// aside, never deleted, and `live` is never missing.
fn keep(live: &Path, aside: &Path) -> std::io::Result<()> {
    fs::hard_link(live, aside)?;
    fsutil::sync_dir(aside.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_old_server_is_rewritten() {
        let text = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: Q0E=\n    server: https://10.0.1.10:6443\n  name: default-cluster\n- cluster:\n    server: https://other:6443\n  name: other\nkind: Config\n";
        let out = with_server(text, "https://10.0.1.10:6443", "https://10.0.1.20:6443").unwrap();
        assert!(out.contains("server: https://10.0.1.20:6443"), "{out}");
        assert!(out.contains("server: https://other:6443"), "{out}");
        assert!(out.contains("certificate-authority-data: Q0E="), "{out}");
    }
}
