//! kubeconfig files as kubeadm writes them: one cluster, one user, credentials embedded as base64 data.

use base64::Engine;
use serde_norway::Value;
use std::path::Path;

use super::Error;

#[derive(Clone, PartialEq, Eq)]
pub struct Kubeconfig {
    pub server: String,
    pub ca_pem: Vec<u8>,
    pub client_cert_pem: Vec<u8>,
    pub client_key_pem: Vec<u8>,
}

impl std::fmt::Debug for Kubeconfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubeconfig")
            .field("server", &self.server)
            .field("client_key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Kubeconfig {
    pub fn load(path: &Path) -> Result<Kubeconfig, Error> {
        Self::read(path, None)
    }

    /// As `load`, also reading credentials the file names by path (`client-certificate:`, as a
    /// kubelet.conf after TLS bootstrap does) from under `root`.
    pub fn load_under(root: &Path, path: &Path) -> Result<Kubeconfig, Error> {
        Self::read(path, Some(root))
    }

    fn read(path: &Path, root: Option<&Path>) -> Result<Kubeconfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_with(&text, path, root)
    }

    /// Reads the current context's cluster and user (the first of each when there is no context).
    pub fn parse(text: &str, path: &Path) -> Result<Kubeconfig, Error> {
        Self::parse_with(text, path, None)
    }

    /// `parse`; with `root`, a credential given as a file (`certificate-authority`, `client-key`, …)
    /// instead of embedded data is read from that path under `root`, a relative one from the
    /// kubeconfig's own directory (client-go's `ResolveLocalPaths`).
    fn parse_with(text: &str, path: &Path, root: Option<&Path>) -> Result<Kubeconfig, Error> {
        let invalid = |why: &str| Error::Kubeconfig {
            path: path.to_path_buf(),
            why: why.to_string(),
        };
        let doc: Value = serde_norway::from_str(text).map_err(|e| invalid(&e.to_string()))?;
        let context = doc
            .get("current-context")
            .and_then(Value::as_str)
            .and_then(|name| named(&doc, "contexts", name))
            .and_then(|c| c.get("context"));
        let pick = |list: &str, key: &str, inner: &str| {
            context
                .and_then(|c| c.get(key))
                .and_then(Value::as_str)
                .and_then(|name| named(&doc, list, name))
                .or_else(|| doc.get(list).and_then(|l| l.get(0)))
                .and_then(|item| item.get(inner))
                .cloned()
        };
        let cluster =
            pick("clusters", "cluster", "cluster").ok_or_else(|| invalid("no cluster"))?;
        let user = pick("users", "user", "user").ok_or_else(|| invalid("no user"))?;
        let data = |item: &Value, key: &str| -> Result<Vec<u8>, Error> {
            let file = item
                .get(key.trim_end_matches("-data"))
                .and_then(Value::as_str);
            if let (None, Some(root), Some(file)) = (item.get(key), root, file) {
                let file = match file.strip_prefix('/') {
                    Some(absolute) => root.join(absolute),
                    None => path.parent().unwrap_or(Path::new(".")).join(file),
                };
                return std::fs::read(&file).map_err(|source| Error::Read { path: file, source });
            }
            let text = item.get(key).and_then(Value::as_str).ok_or_else(|| {
                invalid(&format!(
                    "no {key} (cpr reads kubeadm's embedded credentials)"
                ))
            })?;
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| invalid(&format!("{key} is not base64: {e}")))
        };
        Ok(Kubeconfig {
            server: cluster
                .get("server")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("the cluster has no server"))?
                .to_string(),
            ca_pem: data(&cluster, "certificate-authority-data")?,
            client_cert_pem: data(&user, "client-certificate-data")?,
            client_key_pem: data(&user, "client-key-data")?,
        })
    }
}

fn named<'a>(doc: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    doc.get(list)?
        .as_sequence()?
        .iter()
        .find(|item| item.get("name").and_then(Value::as_str) == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker's kubelet.conf after TLS bootstrap names its client pair by path (kubeadm join:
    /// `/var/lib/kubelet/pki/kubelet-client-current.pem`); read under the given root.
    #[test]
    fn a_relative_credential_path_is_read_beside_the_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("etc/kubernetes");
        std::fs::create_dir_all(conf.join("pki")).unwrap();
        std::fs::write(conf.join("pki/client.pem"), "PAIR").unwrap();
        let path = conf.join("kubelet.conf");
        std::fs::write(
            &path,
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: Q0E=\n    server: https://10.0.1.10:6443\n  name: c\nusers:\n- name: u\n  user:\n    client-certificate: pki/client.pem\n    client-key: pki/client.pem\n",
        )
        .unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let config = Kubeconfig::load_under(elsewhere.path(), &path).unwrap();
        assert_eq!(config.client_key_pem, b"PAIR");
    }

    #[test]
    fn credentials_named_by_path_are_read_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        let pki = root.path().join("var/lib/kubelet/pki");
        std::fs::create_dir_all(&pki).unwrap();
        std::fs::write(pki.join("kubelet-client-current.pem"), "PAIR").unwrap();
        let path = root.path().join("kubelet.conf");
        std::fs::write(
            &path,
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: Q0E=\n    server: https://10.0.1.10:6443\n  name: default-cluster\nusers:\n- name: default-auth\n  user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem\n",
        )
        .unwrap();
        let config = Kubeconfig::load_under(root.path(), &path).unwrap();
        assert_eq!(config.ca_pem, b"CA");
        assert_eq!(
            (config.client_cert_pem, config.client_key_pem),
            (b"PAIR".to_vec(), b"PAIR".to_vec())
        );
        assert!(Kubeconfig::load(&path)
            .unwrap_err()
            .to_string()
            .contains("no client-certificate-data"));
    }
}
