//! Static pod manifests as kubeadm writes them: one container whose command is `binary --flag=value …`.

use serde_norway::Value;
use std::path::{Path, PathBuf};

use super::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticPod {
    pub path: PathBuf,
    pub image: String,
    /// Every container and init container, the first container first.
    pub containers: Vec<Container>,
    /// `spec.volumes` of type hostPath.
    pub host_paths: Vec<HostPathVolume>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// `--flag=value` pairs of its command and args, in order.
    pub flags: Vec<(String, String)>,
    pub mounts: Vec<VolumeMount>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The volume's name.
    pub name: String,
    /// Where the container sees it.
    pub mount_path: String,
    pub sub_path: Option<String>,
}

/// A `hostPath` volume: `path` on the node, with kubelet's type check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPathVolume {
    pub name: String,
    pub path: String,
    /// `File`, `FileOrCreate`, `Directory`, `DirectoryOrCreate`, `Socket`, …; empty when untyped
    /// (kubeadm writes `type: ""` for extra volumes without a pathType).
    pub kind: String,
}

impl StaticPod {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let invalid = |why: &str| Error::Manifest {
            path: path.to_path_buf(),
            why: why.to_string(),
        };
        let doc: Value = serde_norway::from_str(text).map_err(|e| invalid(&e.to_string()))?;
        let spec = doc.get("spec");
        let first = spec
            .and_then(|s| s.get("containers"))
            .and_then(|c| c.get(0))
            .ok_or_else(|| invalid("no spec.containers[0]"))?;
        let image = str_of(first, "image").unwrap_or_default().to_string();
        let containers: Vec<Container> = ["containers", "initContainers"]
            .iter()
            .filter_map(|key| spec.and_then(|s| s.get(key)).and_then(Value::as_sequence))
            .flatten()
            .map(container)
            .collect();
        let host_paths = spec
            .and_then(|s| s.get("volumes"))
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(|volume| {
                let host = volume.get("hostPath")?;
                Some(HostPathVolume {
                    name: str_of(volume, "name").unwrap_or_default().to_string(),
                    path: str_of(host, "path")?.to_string(),
                    kind: str_of(host, "type").unwrap_or_default().to_string(),
                })
            })
            .collect();
        Ok(StaticPod {
            path: path.to_path_buf(),
            image,
            containers,
            host_paths,
        })
    }

    /// The last value given for `--name` in the first container's command and args, as the
    /// binary's flag parser would take it.
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.containers
            .first()?
            .flags
            .iter()
            .rev()
            .find(|(flag, _)| flag == name)
            .map(|(_, value)| value.as_str())
    }

    /// A comma-separated flag as a list.
    pub fn list_flag(&self, name: &str) -> Vec<String> {
        self.flag(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn required_flag(&self, name: &str) -> Result<&str, Error> {
        self.flag(name).ok_or_else(|| Error::Manifest {
            path: self.path.clone(),
            why: format!("the container command has no --{name}"),
        })
    }

    /// The tag of the image (`registry.k8s.io/etcd:3.5.9-0` → `3.5.9-0`).
    pub fn image_tag(&self) -> Option<&str> {
        let (_, tag) = self.image.rsplit_once(':')?;
        (!tag.contains('/')).then_some(tag)
    }
}

fn str_of<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value.get(key).and_then(Value::as_str)
}

fn container(value: &Value) -> Container {
    let words = ["command", "args"]
        .iter()
        .filter_map(|key| value.get(key).and_then(Value::as_sequence))
        .flatten()
        .filter_map(Value::as_str);
    let flags = words
        .filter_map(|word| word.strip_prefix("--"))
        .map(|flag| match flag.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => (flag.to_string(), "true".to_string()),
        })
        .collect();
    let mounts = value
        .get("volumeMounts")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|mount| {
            Some(VolumeMount {
                name: str_of(mount, "name")?.to_string(),
                mount_path: str_of(mount, "mountPath")?.to_string(),
                sub_path: str_of(mount, "subPath")
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            })
        })
        .collect();
    Container { flags, mounts }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETCD_YAML: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubeadm.kubernetes.io/etcd.advertise-client-urls: https://10.0.1.10:2379
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls=https://10.0.1.10:2379
    - --client-cert-auth=true
    - --data-dir=/var/lib/etcd
    - --initial-cluster=master0=https://10.0.1.10:2380
    - --listen-client-urls=https://127.0.0.1:2379,https://10.0.1.10:2379
    - --name=master0
    image: registry.k8s.io/etcd:3.5.9-0
    name: etcd
"#;

    #[test]
    fn reads_kubeadm_etcd_flags() {
        let pod = StaticPod::parse(ETCD_YAML, Path::new("etcd.yaml")).unwrap();
        assert_eq!(pod.flag("name"), Some("master0"));
        assert_eq!(pod.flag("data-dir"), Some("/var/lib/etcd"));
        assert_eq!(pod.flag("client-cert-auth"), Some("true"));
        assert_eq!(
            pod.list_flag("listen-client-urls"),
            vec!["https://127.0.0.1:2379", "https://10.0.1.10:2379"]
        );
        assert_eq!(pod.image_tag(), Some("3.5.9-0"));
        assert!(pod.required_flag("peer-cert-file").is_err());
    }

    #[test]
    fn names_the_file_when_the_manifest_is_not_a_pod() {
        let err = StaticPod::parse("kind: Pod\nspec: {}\n", Path::new("/x/etcd.yaml")).unwrap_err();
        assert!(err.to_string().contains("/x/etcd.yaml"), "{err}");
    }
}
