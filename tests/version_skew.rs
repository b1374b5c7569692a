//! The version-skew matrix: the kubeadm double v1.27…v1.32 × a bundle of kubernetesVersion v1.26…v1.32 ×
//! its ClusterConfiguration written as v1beta2/v1beta3/v1beta4 × a kubelet one minor older than kubeadm,
//! equal or newer. Every cell either restores — `cpr finish --check-versions` names the config, and the
//! kubeadm double of that version takes it through config loading, validation and preflight (KubeletVersion,
//! KubernetesVersion included) — or `cpr finish` refuses it before changing anything, naming the packages
//! to install. The expected outcome of each cell comes from `expected`, kubeadm's rules written down here
//! from kubeadm's source, not from cpr's code. One phase-1 restore is shared; each cell copies its state.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

const KUBEADM: std::ops::RangeInclusive<u32> = 27..=32;
const BUNDLE: std::ops::RangeInclusive<u32> = 26..=32;
const APIS: [&str; 3] = ["v1beta2", "v1beta3", "v1beta4"];
/// The kubelet's minor relative to kubeadm's.
const KUBELET: [i32; 3] = [-1, 0, 1];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// `kubeadm init` gets the ClusterConfiguration as this API version.
    Restores(&'static str),
    /// Refused; the message names these packages (`kubeadm=1.N.*`, `kubelet=1.N.*`).
    Refused(Vec<String>),
}

/// What kubeadm (paths below kubernetes/kubernetes cmd/kubeadm/app/) and the policy say about kubeadm
/// 1.`k`, a bundle of 1.`b` written as `api`, and kubelet 1.`l`.
fn expected(k: u32, b: u32, api: &str, l: u32) -> Outcome {
    let mut refused = false;
    // util/config/common.go NormalizeKubernetesVersion: control plane >= MinimumControlPlaneVersion
    // (constants.go: kubeadm's minor - 1).
    refused |= b < k - 1;
    // preflight/checks.go KubernetesVersionCheck only warns when the control plane is newer than kubeadm,
    // which then deploys it with an older release's rules: the issue refuses "a kubeadm older than the bundle".
    refused |= b > k;
    // util/config/common.go validateSupportedVersion: v1beta4 unknown to v1.27 and experimental (kubeadm init
    // has no --allow-experimental-api) in v1.28-v1.30. v1beta2 is refused from v1.27, but cpr converts it.
    refused |= api == "v1beta4" && k < 31;
    // preflight/checks.go KubeletVersionCheck: the kubelet's minor not above the control plane's, not below
    // MinimumKubeletVersion (constants.go: kubeadm's minor - 3; - 1 in v1.27).
    refused |= l > b || l < k - if k == 27 { 1 } else { 3 };
    if !refused {
        // v1.31 reads v1beta4 and deprecates v1beta3 (validateSupportedVersion): cpr writes the newest.
        return Outcome::Restores(if k >= 31 { "v1beta4" } else { "v1beta3" });
    }
    // The packages: kubeadm and kubelet of the bundle's minor; a v1beta4 config needs kubeadm >= 1.31,
    // which deploys 1.30 at the oldest: no kubeadm fits a v1beta4 bundle older than that.
    if api == "v1beta4" && b < 30 {
        return Outcome::Refused(vec![]);
    }
    let want_kubeadm = if api == "v1beta4" { b.max(31) } else { b };
    let mut packages = vec![format!("kubelet=1.{b}.*")];
    if k != want_kubeadm {
        packages.push(format!("kubeadm=1.{want_kubeadm}.*"));
    }
    Outcome::Refused(packages)
}

/// The source cluster's ClusterConfiguration as kubeadm 1.`b` wrote it in `api`: extraArgs as maps (or
/// lists in v1beta4), the control-plane timeout, and in v1beta2 the fields v1beta3 removed.
fn cluster_configuration(b: u32, api: &str) -> String {
    let args = |pairs: &[(&str, &str)], indent: &str| -> String {
        pairs
            .iter()
            .map(|(n, v)| {
                if api == "v1beta4" {
                    format!("{indent}- name: {n}\n{indent}  value: \"{v}\"\n")
                } else {
                    format!("{indent}{n}: \"{v}\"\n")
                }
            })
            .collect()
    };
    let mut text = format!(
        "apiVersion: kubeadm.k8s.io/{api}\nkind: ClusterConfiguration\nclusterName: {CLUSTER}\nkubernetesVersion: v1.{b}.3\ncontrolPlaneEndpoint: {NODE_IP}:6443\n"
    );
    text.push_str("apiServer:\n  extraArgs:\n");
    text.push_str(&args(
        &[
            ("authorization-mode", "Node,RBAC"),
            ("audit-log-maxage", "30"),
        ],
        "    ",
    ));
    if api != "v1beta4" {
        text.push_str("  timeoutForControlPlane: 4m0s\n");
    }
    text.push_str("controllerManager:\n  extraArgs:\n");
    text.push_str(&args(&[("bind-address", "0.0.0.0")], "    "));
    text.push_str("etcd:\n  local:\n    dataDir: /var/lib/etcd\n    extraArgs:\n");
    text.push_str(&args(
        &[("listen-metrics-urls", "http://127.0.0.1:2381")],
        "      ",
    ));
    text.push_str("networking:\n  podSubnet: 192.168.0.0/16\n  serviceSubnet: 10.96.0.0/12\n");
    if api == "v1beta2" {
        text.push_str("useHyperKubeImage: false\ndns:\n  type: CoreDNS\n");
    }
    text
}

/// A directory with a `kubelet` that answers `--version` as kubelet 1.`minor`.3 does.
fn kubelet_bin(dir: &Path, minor: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join(format!("kubelet-1.{minor}"));
    fs::create_dir_all(&bin).unwrap();
    let path = bin.join("kubelet");
    fs::write(
        &path,
        format!("#!/bin/sh\necho 'Kubernetes v1.{minor}.3'\n"),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    files_below(dir).into_iter().find(|p| p.ends_with(name))
}

#[test]
fn every_cell_restores_or_is_refused_before_anything_changes() {
    let started = std::time::Instant::now();
    // One real phase 1: its state and staged bundle are what `cpr finish` reads.
    let mut source = KubeadmNode::start(EtcdVersion::V3_5, 3);
    let cluster_file = source.root().join("cluster-configuration.yaml");
    fs::write(&cluster_file, cluster_configuration(27, "v1beta3")).unwrap();
    let store = backup_into_dir(&source, &cluster_file);
    source.stop_etcd();
    let work = tempfile::tempdir().unwrap();
    let template = work.path().join("restored");
    let args = restore_args(store.path(), &template, NODE_IP);
    ok(&cpr(&with(&args, &["--no-finish"])));
    let staged = find(
        &template.join("var/lib/cpr"),
        "kubeadm/cluster-configuration.yaml",
    )
    .unwrap();
    let staged = staged.strip_prefix(&template).unwrap().to_path_buf();
    let staged_manifest = find(&template.join("var/lib/cpr"), "manifest.json").unwrap();
    let staged_manifest = staged_manifest
        .strip_prefix(&template)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();

    let mut cells = Vec::new();
    for k in KUBEADM {
        for b in BUNDLE {
            for api in APIS {
                for dl in KUBELET {
                    cells.push((k, b, api, (k as i32 + dl) as u32));
                }
            }
        }
    }
    let kubelets: std::collections::BTreeMap<u32, PathBuf> = (26..=33)
        .map(|m| (m, kubelet_bin(work.path(), m)))
        .collect();
    let next = AtomicUsize::new(0);
    let (restored, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| loop {
                let Some(&(k, b, api, l)) = cells.get(next.fetch_add(1, Ordering::SeqCst)) else {
                    return;
                };
                let cell = format!("kubeadm 1.{k}, bundle 1.{b} as {api}, kubelet 1.{l}");
                let root = work.path().join(format!("cell-{k}-{b}-{api}-{l}"));
                // What `cpr finish` reads before it changes anything: the state and the staged manifest.
                for file in ["var/lib/cpr/state.json", &staged_manifest] {
                    fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
                    fs::copy(template.join(file), root.join(file)).unwrap();
                }
                fs::create_dir_all(root.join(&staged).parent().unwrap()).unwrap();
                fs::create_dir_all(root.join("proc/sys/net/ipv4")).unwrap();
                fs::write(root.join("proc/sys/net/ipv4/ip_forward"), "1\n").unwrap();
                fs::write(root.join(&staged), cluster_configuration(b, api)).unwrap();
                let path = format!(
                    "{}:{}:{}",
                    kubelets[&l].display(),
                    doubles().display(),
                    std::env::var("PATH").unwrap()
                );
                let kubeadm_version = format!("v1.{k}.2");
                let env = [
                    ("PATH", path.as_str()),
                    ("KUBEADM_DOUBLE_VERSION", kubeadm_version.as_str()),
                    ("KUBEADM_DOUBLE_ROOT", root.to_str().unwrap()),
                    // The node IP is on loopback, which kubeadm refuses as advertiseAddress.
                    ("KUBEADM_DOUBLE_ALLOW_LOOPBACK", "1"),
                    // Cells run side by side in this namespace; ports are not what they test.
                    ("KUBEADM_DOUBLE_SKIP_PORT_CHECKS", "1"),
                    ("KUBEADM_DOUBLE_HOSTNAME", NODE_NAME),
                ];
                let before = tree_with_modes(&root);
                let root_arg = root.to_str().unwrap();
                match expected(k, b, api, l) {
                    Outcome::Refused(packages) => {
                        let out = cpr_env(&["finish", "--root", root_arg, "--timeout", "1"], &env);
                        let message = stderr(&out);
                        assert_eq!(out.status.code(), Some(6), "{cell}: {message}");
                        assert!(message.contains("Nothing was changed"), "{cell}: {message}");
                        for package in &packages {
                            assert!(message.contains(package.as_str()), "{cell}: no {package} in {message}");
                        }
                        if packages.is_empty() {
                            assert!(message.contains("No kubeadm reads"), "{cell}: {message}");
                        }
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    Outcome::Restores(api_version) => {
                        let out = cpr_env(
                            &["finish", "--root", root_arg, "--check-versions", "--output", "json"],
                            &env,
                        );
                        let report: Value = serde_json::from_slice(&out.stdout)
                            .unwrap_or_else(|e| panic!("{cell}: {e}: {}", stderr(&out)));
                        assert_eq!(report["apiVersion"], format!("kubeadm.k8s.io/{api_version}"), "{cell}");
                        assert_eq!(report["converted"], api != api_version, "{cell}");
                        assert_eq!(tree_with_modes(&root), before, "{cell}: --check-versions changed files");
                        // The kubeadm double of that version takes the config through loading, validation
                        // and preflight; the phases that write are kubeadm's own --skip-phases.
                        let config = work.path().join(format!("config-{k}-{b}-{api}-{l}.yaml"));
                        fs::write(&config, report["initConfig"].as_str().unwrap()).unwrap();
                        let mut kubeadm = std::process::Command::new(doubles().join("kubeadm"));
                        kubeadm.args(["init", "--config", config.to_str().unwrap(),
                            "--ignore-preflight-errors=DirAvailable--var-lib-etcd",
                            "--skip-phases=certs,kubeconfig,kubelet-start,control-plane,etcd,wait-control-plane"]);
                        for (key, value) in env {
                            kubeadm.env(key, value);
                        }
                        let out = kubeadm.output().unwrap();
                        let err = String::from_utf8_lossy(&out.stderr);
                        assert!(out.status.success(), "{cell}: kubeadm refused cpr's config: {err}");
                        assert!(!err.contains("unknown field") && !err.contains("deprecated API spec"), "{cell}: {err}");
                        restored.fetch_add(1, Ordering::SeqCst);
                    }
                }
                if matches!(expected(k, b, api, l), Outcome::Refused(_)) {
                    assert_eq!(tree_with_modes(&root), before, "{cell}: refused, but files changed");
                }
            });
        }
    });
    let (restored, refused) = (restored.into_inner(), refused.into_inner());
    eprintln!(
        "version-skew matrix: {} cells, {restored} restore, {refused} refused, {:.1} s",
        cells.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(restored + refused, 6 * 7 * 3 * 3);
}
