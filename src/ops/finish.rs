//! `cpr finish`, phase 2 of a recovery, on the normal OS: `kubeadm init` over the restored pki and
//! etcd data, kubeconfigs for root and the sudo user, the custom static pods back, health checks.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::backup::{client_endpoint, client_tls};
use super::carryover::{self, Carryover};
use super::check::CERT_WARN_DAYS;
use super::readdress;
use super::rejoin;
use super::restore::{data_dir, staged_bundle_dir, staged_manifest};
use super::state::{self, Phase, State};
use super::survivor;
use super::Error;
use crate::bundle::Manifest;
use crate::etcd::client::EtcdClient;
use crate::fsutil;
use crate::host::failpoint;
use crate::k8s::{self, Taint};
use crate::node::apiserver::ApiServer;
use crate::node::certs::{self, Expiry};
use crate::node::kubeadm::{self, InitNode};
use crate::node::kubeadm_config;
use crate::node::kubeconfig::Kubeconfig;
use crate::node::layout::{self, Layout};
use crate::node::{ports, StaticPod};

const KUBEADM_CONFIG: &str = "kubeadm-init.yaml";
/// What this recovery carries into `kubeadm init`, read once from the restored etcd db before init.
const CARRYOVER_FILE: &str = "carryover.json";
/// kubeadm's own manifests, kept where kubelet does not look, when the backup's version replaces them.
const GENERATED_DIR: &str = "kubeadm-generated";
const KUBEADM_MANIFESTS: [&str; 4] = [
    "etcd.yaml",
    "kube-apiserver.yaml",
    "kube-controller-manager.yaml",
    "kube-scheduler.yaml",
];
/// The machine's /proc, whatever `--root` is: ports belong to the network namespace cpr runs in.
const PROC: &str = "/proc";
const PORT_POLL: Duration = Duration::from_millis(200);

pub struct FinishRequest {
    pub root: PathBuf,
    pub kubeadm: PathBuf,
    /// Asked for its version (`kubelet --version`), as kubeadm's preflight check KubeletVersion does.
    pub kubelet: PathBuf,
    pub systemctl: PathBuf,
    /// How long to wait for the ports kubeadm's preflight checks to free, and for kube-apiserver and
    /// etcd to become healthy.
    pub timeout: Duration,
    /// The user who ran `sudo cpr …` (`SUDO_USER`): gets `~/.kube/config` too.
    pub sudo_user: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FinishReport {
    pub bundle: String,
    pub already_done: bool,
    pub moved_aside: Vec<PathBuf>,
    pub kubeconfigs: Vec<PathBuf>,
    /// Static pod manifests brought back from the bundle.
    pub static_pods: Vec<String>,
    /// Restored leaf certificates (as `etcd/server`) that had expired or were about to, moved aside so
    /// that kubeadm signed new ones with the restored CAs.
    pub regenerated_certificates: Vec<String>,
    /// Restored leaf certificates that named the lost node's address or name, moved aside so that
    /// kubeadm signed new ones for the new address (`--new-address`).
    pub readdressed_certificates: Vec<String>,
    /// The plan of a restore onto a new address, and what was done for it once the control plane was up.
    pub new_address: Option<readdress::Plan>,
    pub new_address_steps: Vec<String>,
    /// A node that rejoined a live quorum (kubeadm join) instead of restoring etcd.
    pub rejoin: Option<rejoin::RejoinReport>,
    /// The survivor of a lost quorum, its member started alone from its own data.
    pub survivor: Option<survivor::AloneReport>,
    /// What `kubeadm init` was given from the backup besides the ClusterConfiguration.
    pub carried_over: Option<CarriedOver>,
    /// What kubeadm changed compared with the backup (ConfigMaps, addons, the Node's taints), read from
    /// the restored etcd once the control plane is up.
    pub kubeadm_changes: Vec<String>,
    pub apiserver: String,
    pub etcd_revision: i64,
    /// `name status` of every Node.
    pub nodes: Vec<String>,
    /// `name phase` of every kube-system pod.
    pub pods: Vec<String>,
}

pub fn finish(request: &FinishRequest) -> Result<FinishReport, Error> {
    let layout = Layout::new(&request.root);
    let mut state = State::load(&layout)?.ok_or_else(|| Error::NotRestored {
        state: state::state_path(&layout),
    })?;
    if state.phase < Phase::Restored {
        return Err(Error::NotRestored {
            state: state::state_path(&layout),
        });
    }
    if state.phase == Phase::Finished {
        log::info!(
            "finish: the recovery from {} already finished; nothing to do",
            state.bundle
        );
        return Ok(FinishReport {
            bundle: state.bundle.clone(),
            already_done: true,
            moved_aside: state.moved_aside.clone(),
            regenerated_certificates: regenerated(&layout, &state, Reissue::Expiring),
            ..FinishReport::default()
        });
    }
    let manifest = staged_manifest(&layout)?;
    if let Some(rejoin) = state.rejoin.clone() {
        return finish_rejoin(request, &layout, &manifest, &mut state, &rejoin);
    }
    if let Some(survivor) = state.survivor.clone() {
        return finish_survivor(request, &layout, &mut state, &survivor);
    }
    if state.phase == Phase::Restored {
        init(request, &layout, &manifest, &mut state)?;
    }
    let kubeconfigs = install_kubeconfigs(&layout, request.sudo_user.as_deref())?;
    let (static_pods, changed) =
        restore_static_pods(&layout, StaticPods::All, state.new_address.as_ref())?;
    failpoint("finish:static-pods");
    if changed {
        restart_kubelet(request)?;
    }
    let mut report = health(request, &layout)?;
    if let Some(moved) = &state.new_address {
        report.new_address_steps = after_new_address(&layout, moved);
        report.readdressed_certificates = regenerated(&layout, &state, Reissue::Readdressed);
        report.new_address = Some(moved.clone());
    }
    let carried = load_carryover(&layout, &state).map(|mut carried| {
        // The taints were read from the lost node's Node; kubeadm marked the one under the new name.
        if let Some(moved) = &state.new_address {
            carried.node = moved.new_name.clone();
        }
        carried
    });
    if let Some(carried) = &carried {
        report.kubeadm_changes = kubeadm_changes(&layout, carried);
        report.carried_over = Some(CarriedOver::from(&carried.carryover));
    }
    failpoint("finish:healthy");
    state.phase = Phase::Finished;
    state.save(&layout)?;
    clear_failure_notices(&layout)?;
    report.bundle = state.bundle.clone();
    report.moved_aside = state.moved_aside.clone();
    report.kubeconfigs = kubeconfigs;
    report.static_pods = static_pods;
    report.regenerated_certificates = regenerated(&layout, &state, Reissue::Expiring);
    Ok(report)
}

/// Phase 2 of a node that rejoins a live quorum: kubeadm join instead of kubeadm init, then the
/// kubeconfigs. kubeadm join waits for its own control plane; cpr waits for the member to vote.
fn finish_rejoin(
    request: &FinishRequest,
    layout: &Layout,
    manifest: &Manifest,
    state: &mut State,
    rejoin: &rejoin::Rejoin,
) -> Result<FinishReport, Error> {
    finish_without_init(request, layout, state, |state, report| {
        // After kubeadm join succeeded, the manifests, kubeconfigs and data dir are the new member's.
        if rejoin.joined.is_none() {
            move_aside_old_member(layout, manifest, state)?;
        }
        let bundle_dir = staged_bundle_dir(layout);
        let join = rejoin::Join {
            kubeadm: &request.kubeadm,
            bundle_dir: &bundle_dir,
            timeout: request.timeout,
        };
        let joined = rejoin::join(&join, manifest, rejoin, &mut |joined| {
            if let Some(planned) = state.rejoin.as_mut() {
                planned.joined = Some(joined.clone());
            }
            state.save(layout)
        })?;
        log::info!(
            "finish: {} rejoined the cluster through {} as member {}{}",
            manifest.node.name,
            joined.api_endpoint,
            joined.member,
            joined
                .removed_member
                .as_deref()
                .map(|m| format!(", replacing {m}"))
                .unwrap_or_default()
        );
        report.rejoin = Some(joined);
        Ok(())
    })
}

/// Phase 2 of the survivor of a lost quorum: its member starts alone from its own data; its
/// control plane's manifests were kept with its disk, so kubeadm has nothing to write.
fn finish_survivor(
    request: &FinishRequest,
    layout: &Layout,
    state: &mut State,
    survivor: &super::ha::Survivor,
) -> Result<FinishReport, Error> {
    finish_without_init(request, layout, state, |_, report| {
        let alone = survivor::start_alone(layout, survivor, request.timeout, &|| {
            restart_kubelet(request)
        })?;
        log::info!(
            "finish: the surviving member {} serves alone at revision {}; the other nodes rejoin it",
            alone.member,
            alone.revision
        );
        report.survivor = Some(alone);
        Ok(())
    })
}

/// A phase 2 that runs no `kubeadm init`: `step` once (a rerun after it finds the state past it),
/// then the kubeconfigs, and the state finished.
fn finish_without_init(
    request: &FinishRequest,
    layout: &Layout,
    state: &mut State,
    step: impl FnOnce(&mut State, &mut FinishReport) -> Result<(), Error>,
) -> Result<FinishReport, Error> {
    let mut report = FinishReport::default();
    if state.phase == Phase::Restored {
        step(state, &mut report)?;
        state.phase = Phase::Initialized;
        state.save(layout)?;
    }
    report.kubeconfigs = install_kubeconfigs(layout, request.sudo_user.as_deref())?;
    state.phase = Phase::Finished;
    state.save(layout)?;
    clear_failure_notices(layout)?;
    report.bundle = state.bundle.clone();
    report.moved_aside = state.moved_aside.clone();
    Ok(report)
}

/// A node that rejoins kept what its old member left, and kubeadm join's preflight refuses it: the
/// static pod manifests (`FileAvailable--etc-kubernetes-manifests-*`), kubelet.conf
/// (`FileAvailable--etc-kubernetes-kubelet.conf`) and a non-empty etcd data dir
/// (`DirAvailable--var-lib-etcd`), all in `cmd/kubeadm/app/preflight/checks.go`
/// `RunJoinNodeChecks`/`addCommonChecks`; and the other kubeconfigs, which kubeadm keeps when they
/// exist (`phases/kubeconfig/kubeconfig.go` `validateKubeConfig` only warns) and then joins
/// through admin.conf (`cmd/join.go` `Client`), the old node's own API server, which is down. They are
/// moved aside, never deleted.
fn move_aside_old_member(
    layout: &Layout,
    manifest: &Manifest,
    state: &mut State,
) -> Result<(), Error> {
    move_aside_stale_manifests(layout, state)?;
    let data_dir = data_dir(layout, manifest);
    let data_dir_used = fs::read_dir(&data_dir).is_ok_and(|mut entries| entries.next().is_some());
    let kubeconfigs = layout::KUBEADM_KUBECONFIGS.map(|relative| {
        let path = layout.path(relative);
        let used = path.exists();
        (path, used)
    });
    for (path, used) in kubeconfigs.into_iter().chain([(data_dir, data_dir_used)]) {
        if !used {
            continue;
        }
        let aside = fsutil::untaken(fsutil::sibling(&path, &format!(".cpr-old-{}", state.stamp)));
        move_aside(layout, state, &path, aside.clone())?;
        log::info!(
            "finish: {} was the old member's, and kubeadm join refuses it: moved aside to {}",
            path.display(),
            aside.display()
        );
    }
    Ok(())
}

fn init(
    request: &FinishRequest,
    layout: &Layout,
    manifest: &Manifest,
    state: &mut State,
) -> Result<(), Error> {
    // Checks first: a refusal leaves every file as it was.
    let prepared = prepare(request, layout, manifest, state, true)?;
    if let Some(moved) = &state.new_address {
        readdress::check_endpoint(moved)?;
    }
    let expiring: Vec<(String, String)> = expiring_leaves(layout, time::OffsetDateTime::now_utc())?
        .into_iter()
        .map(|leaf| (leaf.name, format!("expires {}", leaf.not_after)))
        .collect();
    move_aside_leaves(layout, state, Reissue::Expiring, &expiring)?;
    if let Some(moved) = state.new_address.clone() {
        let readdressed: Vec<(String, String)> = moved
            .reissued_certificates
            .iter()
            .map(|leaf| {
                (
                    leaf.clone(),
                    format!(
                        "names the lost node ({} / {})",
                        moved.old_name, moved.old_address
                    ),
                )
            })
            .collect();
        move_aside_leaves(layout, state, Reissue::Readdressed, &readdressed)?;
        move_aside_old_kubeconfigs(layout, state, &moved)?;
    }
    move_aside_stale_manifests(layout, state)?;
    free_preflight_ports(request, prepared.bind_port)?;
    restore_static_pods(layout, StaticPods::Custom, None)?;
    // Before kubeadm starts etcd on the data dir: a re-run reads this, never the changed db.
    let carried_path = state::state_dir(layout).join(CARRYOVER_FILE);
    let carried = serde_json::to_vec_pretty(&prepared.carried).expect("the carry-over serializes");
    fsutil::write_atomic(&carried_path, &carried, 0o600).map_err(|source| Error::Write {
        path: carried_path.clone(),
        source,
    })?;
    let config = prepared.versions.init_config;
    let config_path = state::state_dir(layout).join(KUBEADM_CONFIG);
    fsutil::write_atomic(&config_path, config.as_bytes(), 0o600).map_err(|source| {
        Error::Write {
            path: config_path.clone(),
            source,
        }
    })?;
    let data_dir = manifest
        .etcd
        .data_dir
        .as_deref()
        .unwrap_or(layout::DEFAULT_ETCD_DATA_DIR);
    failpoint("finish:before-init");
    kubeadm::run_init(
        &request.kubeadm,
        &config_path,
        &kubeadm::restore_preflight_ignores(data_dir),
    )?;
    failpoint("finish:initialized");
    state.phase = Phase::Initialized;
    state.save(layout)
}

/// What `cpr finish` checked about versions, and the config `kubeadm init` gets.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionReport {
    pub kubeadm: String,
    pub kubelet: String,
    /// The bundle's kubernetesVersion.
    pub bundle: String,
    /// The backed-up ClusterConfiguration's apiVersion.
    pub bundle_api_version: String,
    #[serde(flatten)]
    pub plan: kubeadm::Plan,
    pub init_config: String,
}

struct Prepared {
    versions: VersionReport,
    bind_port: u16,
    carried: Carried,
}

/// The carry-over of one recovery (its bundle and stamp), as `var/lib/cpr/carryover.json` keeps it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Carried {
    bundle: String,
    stamp: String,
    etcd_prefix: String,
    node: String,
    carryover: Carryover,
}

/// What the report says was carried over into `kubeadm init`.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CarriedOver {
    /// Where the KubeletConfiguration came from (the kubelet-config ConfigMap's etcd key, or the
    /// bundle's kubelet config file); `None`: kubeadm's defaults.
    pub kubelet_configuration: Option<String>,
    /// Whether the kube-proxy ConfigMap's KubeProxyConfiguration was given to kubeadm.
    pub kube_proxy_configuration: bool,
    pub skip_phases: Vec<String>,
    /// `nodeRegistration.taints` as the Node had them; `None`: no Node in the backup, kubeadm's default.
    pub taints: Option<Vec<Taint>>,
    /// `--name=value` of each kubeletExtraArgs entry.
    pub kubelet_extra_args: Vec<String>,
    pub warnings: Vec<String>,
}

impl From<&Carryover> for CarriedOver {
    fn from(c: &Carryover) -> Self {
        CarriedOver {
            kubelet_configuration: c.kubelet_config_source.clone(),
            kube_proxy_configuration: c.kube_proxy_config.is_some(),
            skip_phases: c.skip_addons.clone(),
            taints: c.taints.clone(),
            kubelet_extra_args: c
                .kubelet_extra_args
                .iter()
                .map(|(n, v)| format!("--{n}={v}"))
                .collect(),
            warnings: c.warnings.clone(),
        }
    }
}

/// The carry-over this recovery recorded before `kubeadm init`, if any.
fn load_carryover(layout: &Layout, state: &State) -> Option<Carried> {
    let bytes = fs::read(state::state_dir(layout).join(CARRYOVER_FILE)).ok()?;
    let carried: Carried = serde_json::from_slice(&bytes).ok()?;
    (carried.bundle == state.bundle && carried.stamp == state.stamp).then_some(carried)
}

/// The backup's cluster settings (`Carryover`): recorded by an earlier attempt of this recovery, or
/// read from the restored etcd db. Phase 1 streamed the snapshot into the data dir without reading it
/// back, so this is the one read of the db, made before kubeadm starts etcd on it; a re-run of
/// `cpr finish` reads the record (by then etcd may have changed the db).
fn carryover(layout: &Layout, manifest: &Manifest, state: &State) -> Result<Carried, Error> {
    if let Some(carried) = load_carryover(layout, state) {
        return Ok(carried);
    }
    let data_dir = manifest
        .etcd
        .data_dir
        .as_deref()
        .unwrap_or(layout::DEFAULT_ETCD_DATA_DIR);
    let db = crate::etcd::db_path(&layout.path(data_dir));
    let bundle_dir = staged_bundle_dir(layout);
    let etcd_prefix = carryover::etcd_prefix(&bundle_dir);
    log::info!(
        "finish: reading the cluster's kubelet and kube-proxy settings, addons and the node's taints from {} (keys under {etcd_prefix})",
        db.display()
    );
    let carryover = Carryover::from_snapshot(&db, &etcd_prefix, &manifest.node.name, &bundle_dir)?;
    for warning in &carryover.warnings {
        log::warn!("finish: {warning}");
    }
    Ok(Carried {
        bundle: state.bundle.clone(),
        stamp: state.stamp.clone(),
        etcd_prefix,
        node: manifest.node.name.clone(),
        carryover,
    })
}

/// Reads the installed kubeadm's and kubelet's versions, compares them with the bundle's
/// (`kubeadm::plan`) and builds the InitConfiguration + ClusterConfiguration with the cluster's settings
/// from the backup (`carryover`; only `for_init` needs them); reads only.
fn prepare(
    request: &FinishRequest,
    layout: &Layout,
    manifest: &Manifest,
    state: &State,
    for_init: bool,
) -> Result<Prepared, Error> {
    let bind_port = manifest
        .node
        .bind_port
        .unwrap_or(readdress::DEFAULT_BIND_PORT);
    let cluster_path = staged_bundle_dir(layout).join(layout::CLUSTER_CONFIGURATION_ENTRY);
    let origin = cluster_path.display().to_string();
    let cluster = fs::read_to_string(&cluster_path).map_err(|source| Error::Read {
        path: cluster_path.clone(),
        source,
    })?;
    let info = kubeadm_config::cluster_info(&cluster, &origin)?;
    let api_version = info.api_version.unwrap_or_default();
    let bundle = info
        .kubernetes_version
        .or_else(|| manifest.cluster.kubernetes_version.clone())
        .ok_or_else(|| Error::State {
            path: cluster_path.clone(),
            why: "neither the ClusterConfiguration nor the bundle's manifest records a kubernetesVersion".to_string(),
        })?;
    let bundle = kubeadm::Version::parse(&bundle).ok_or_else(|| Error::State {
        path: cluster_path.clone(),
        why: format!("kubernetesVersion {bundle:?} is not a release version (vMAJOR.MINOR.PATCH)"),
    })?;
    let skew = kubeadm::Skew {
        kubeadm: kubeadm::kubeadm_version(&request.kubeadm)?,
        kubelet: kubeadm::kubelet_version(&request.kubelet)?,
        bundle,
        api_version,
    };
    let plan = kubeadm::plan(&skew)?;
    if plan.converted {
        log::info!(
            "finish: kubeadm {} gets the backed-up ClusterConfiguration converted from {} to {}",
            skew.kubeadm,
            skew.api_version,
            plan.api_version
        );
    }
    let address = manifest
        .node
        .advertise_address
        .as_deref()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| Error::State {
            path: cluster_path.clone(),
            why: "the bundle records no advertise address for the node".to_string(),
        })?;
    let carried = match carryover(layout, manifest, state) {
        Ok(carried) => carried,
        // `--check-versions` is about versions: the carried settings it cannot read are left out.
        Err(e) if !for_init => {
            log::warn!("finish: the init config below leaves out the cluster's settings from the backup: {e}");
            Carried {
                bundle: state.bundle.clone(),
                stamp: state.stamp.clone(),
                etcd_prefix: layout::DEFAULT_ETCD_PREFIX.to_string(),
                node: manifest.node.name.clone(),
                carryover: Carryover::default(),
            }
        }
        Err(e) => return Err(e),
    };
    let facts = &carried.carryover;
    let (name, address, cluster) = match &state.new_address {
        Some(moved) => (
            moved.new_name.clone(),
            moved.new_address,
            readdress::cluster_configuration(&cluster, moved, &origin)?,
        ),
        None => (manifest.node.name.clone(), address, cluster),
    };
    let node = InitNode {
        name,
        advertise_address: address,
        bind_port,
        cri_socket: manifest.node.cri_socket.clone(),
        taints: facts.taints.clone(),
        kubelet_extra_args: facts.kubelet_extra_args.clone(),
        skip_phases: facts.skip_addons.clone(),
        component_configs: facts
            .kubelet_config
            .iter()
            .chain(&facts.kube_proxy_config)
            .cloned()
            .collect(),
    };
    let init_config = kubeadm::init_config(&node, &cluster, &origin, plan.api_version)?;
    Ok(Prepared {
        versions: VersionReport {
            kubeadm: skew.kubeadm.to_string(),
            kubelet: skew.kubelet.to_string(),
            bundle: skew.bundle.to_string(),
            bundle_api_version: skew.api_version,
            plan,
            init_config,
        },
        bind_port,
        carried,
    })
}

/// `cpr finish --check-versions`: whether the installed kubeadm and kubelet can restore the bundle
/// phase 1 restored, and the config kubeadm init would get. Changes nothing.
pub fn check_versions(request: &FinishRequest) -> Result<VersionReport, Error> {
    let layout = Layout::new(&request.root);
    let state = State::load(&layout)?.ok_or_else(|| Error::NotRestored {
        state: state::state_path(&layout),
    })?;
    if state.phase < Phase::Restored {
        return Err(Error::NotRestored {
            state: state::state_path(&layout),
        });
    }
    let manifest = staged_manifest(&layout)?;
    Ok(prepare(request, &layout, &manifest, &state, false)?.versions)
}

/// The restored leaf certificates kubeadm has to regenerate: expired ones fail its certs phase
/// (`VerifyCertChain`), and ones expiring within `cpr check`'s window would stop the cluster soon after.
/// An expired CA is refused: kubeadm cannot renew it, and nothing it signs would be trusted.
fn expiring_leaves(layout: &Layout, now: time::OffsetDateTime) -> Result<Vec<Expiry>, Error> {
    let pki = layout.path(layout::PKI_DIR);
    let (authorities, leaves) = certs::expiring(&pki, now, CERT_WARN_DAYS)?;
    if let Some(ca) = authorities.first() {
        let names: Vec<String> = authorities
            .iter()
            .map(|a| format!("{}.crt (expired {})", a.name, a.not_after.date()))
            .collect();
        return Err(crate::node::Error::Certificate {
            path: pki.join(format!("{}.crt", ca.name)),
            why: format!(
                "cpr finish, before kubeadm init: the restored certificate authority {} has expired. kubeadm init cannot \
                 renew a CA and every certificate signed by it is rejected; nothing was changed. Rotate that CA (Kubernetes \
                 docs, \"Manual rotation of CA certificates\": a new CA, then the certificates and kubeconfigs it signs, \
                 and the workers' trust in it) in {}, then run `cpr finish` again",
                names.join(", "),
                pki.display()
            ),
        }
        .into());
    }
    Ok(leaves)
}

/// Why restored leaf certificates are moved aside for kubeadm to sign new ones with the restored CAs;
/// they are kept in `<pki>.cpr-old-<stamp><suffix>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reissue {
    /// Expired, or expiring within `cpr check`'s window.
    Expiring,
    /// Their SANs name the lost node's address or name (`--new-address`).
    Readdressed,
}

impl Reissue {
    fn suffix(self) -> &'static str {
        match self {
            Reissue::Expiring => "-expired",
            Reissue::Readdressed => "-readdressed",
        }
    }
}

/// Moves each leaf's `.crt` and `.key` (`leaves`: its name and why, for the log) into the `why` dir
/// beside pki (kept, never deleted), so that `kubeadm init` signs new ones with the restored CA. The
/// key goes first, so a `.crt` left behind by a killed run is still seen.
fn move_aside_leaves(
    layout: &Layout,
    state: &mut State,
    why: Reissue,
    leaves: &[(String, String)],
) -> Result<(), Error> {
    let pki = layout.path(layout::PKI_DIR);
    let aside = reissue_dir(layout, state, why);
    for (name, reason) in leaves {
        log::info!(
            "finish: the restored certificate {name}.crt {reason}: moving it and its key aside for kubeadm to sign new ones with the restored CA"
        );
        for ext in ["key", "crt"] {
            let relative = format!("{name}.{ext}");
            let from = pki.join(&relative);
            if !from.exists() {
                continue;
            }
            let to = fsutil::untaken(aside.join(&relative));
            if let Some(dir) = to.parent() {
                state::ensure_dir(dir)?;
            }
            move_aside(layout, state, &from, to)?;
        }
    }
    Ok(())
}

/// Moves `from` to `to` (kept, never deleted), recording `to` in the state first: a run killed in
/// between finds `from` still there and moves it then.
fn move_aside(layout: &Layout, state: &mut State, from: &Path, to: PathBuf) -> Result<(), Error> {
    if !state.moved_aside.contains(&to) {
        state.moved_aside.push(to.clone());
        state.save(layout)?;
    }
    fsutil::rename_durable(from, &to).map_err(|source| Error::Write {
        path: from.to_path_buf(),
        source,
    })
}

fn reissue_dir(layout: &Layout, state: &State, why: Reissue) -> PathBuf {
    fsutil::sibling(
        &layout.path(layout::PKI_DIR),
        &format!(".cpr-old-{}{}", state.stamp, why.suffix()),
    )
}

/// The leaf certificates this recovery moved aside for kubeadm to regenerate (`why`), as `etcd/server`.
fn regenerated(layout: &Layout, state: &State, why: Reissue) -> Vec<String> {
    let aside = reissue_dir(layout, state, why);
    state
        .moved_aside
        .iter()
        .filter_map(|p| p.strip_prefix(&aside).ok())
        .filter_map(|p| p.to_str()?.strip_suffix(".crt").map(str::to_string))
        .collect()
}

/// kubeadm keeps an existing kubeconfig whose server differs (only a warning, phases/kubeconfig/
/// kubeconfig.go `validateKubeConfig`): one that names the lost node's address is moved aside to
/// `<file>.cpr-old-<stamp>` (kept) so that kubeadm writes it with the new server.
fn move_aside_old_kubeconfigs(
    layout: &Layout,
    state: &mut State,
    moved: &readdress::Plan,
) -> Result<(), Error> {
    let old = moved.old_address.to_string();
    for relative in layout::KUBEADM_KUBECONFIGS {
        let path = layout.path(relative);
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let names_old = text.lines().any(|line| {
            line.trim_start().starts_with("server:") && readdress::names_address(line, &old)
        });
        if !names_old {
            continue;
        }
        let aside = fsutil::untaken(fsutil::sibling(&path, &format!(".cpr-old-{}", state.stamp)));
        move_aside(layout, state, &path, aside.clone())?;
        log::info!(
            "finish: {} names the lost node's address {old}: moved aside to {} for kubeadm to write it anew",
            path.display(),
            aside.display()
        );
    }
    Ok(())
}

/// kubeadm refuses to overwrite control-plane manifests (its FileAvailable checks). Ones left by an
/// interrupted earlier run, or by whatever the node ran before, are moved aside, never deleted.
fn move_aside_stale_manifests(layout: &Layout, state: &mut State) -> Result<(), Error> {
    let dir = layout.path(layout::MANIFESTS_DIR);
    if !KUBEADM_MANIFESTS.iter().any(|m| dir.join(m).exists()) {
        return Ok(());
    }
    let old = fsutil::sibling(&dir, &format!(".cpr-old-{}", state.stamp));
    let old = if old.exists() {
        fsutil::sibling(
            &dir,
            &format!(".cpr-old-{}-{}", state.stamp, state.moved_aside.len()),
        )
    } else {
        old
    };
    fsutil::rename_durable(&dir, &old).map_err(|source| Error::Write {
        path: dir.clone(),
        source,
    })?;
    log::info!(
        "finish: moved the existing static pod manifests aside to {}",
        old.display()
    );
    state.moved_aside.push(old);
    state.save(layout)
}

/// admin.conf as `~/.kube/config` for root and for the sudo user (owned by that user).
fn install_kubeconfigs(layout: &Layout, sudo_user: Option<&str>) -> Result<Vec<PathBuf>, Error> {
    let admin = layout.path(layout::ADMIN_CONF);
    let bytes = fs::read(&admin).map_err(|source| Error::Read {
        path: admin.clone(),
        source,
    })?;
    let mut homes = vec![(layout.path("root"), None)];
    if let Some(user) = sudo_user.filter(|u| *u != "root") {
        match passwd_entry(layout, user) {
            Some((home, uid, gid)) => homes.push((layout.path(&home), Some((uid, gid)))),
            None => log::warn!("finish: no home directory for SUDO_USER {user} in /etc/passwd; skipping its kubeconfig"),
        }
    }
    let mut installed = Vec::new();
    for (home, owner) in homes {
        let dir = home.join(".kube");
        state::ensure_dir(&dir)?;
        let path = dir.join("config");
        fsutil::write_atomic(&path, &bytes, 0o600).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
        if let Some((uid, gid)) = owner {
            for owned in [&dir, &path] {
                std::os::unix::fs::chown(owned, Some(uid), Some(gid)).map_err(|source| {
                    Error::Write {
                        path: owned.to_path_buf(),
                        source,
                    }
                })?;
            }
        }
        installed.push(path);
    }
    Ok(installed)
}

/// `home, uid, gid` of `user` from `<root>/etc/passwd`.
fn passwd_entry(layout: &Layout, user: &str) -> Option<(String, u32, u32)> {
    let text = fs::read_to_string(layout.path("etc/passwd")).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && fields[0] == user)
            .then(|| {
                Some((
                    fields[5].to_string(),
                    fields[2].parse().ok()?,
                    fields[3].parse().ok()?,
                ))
            })
            .flatten()
    })
}

/// Which of the backup's static pods a pass puts back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StaticPods {
    /// Before `kubeadm init`: those kubeadm does not generate (kube-vip, keepalived, haproxy, a second
    /// scheduler). A controlPlaneEndpoint they serve must be up for wait-control-plane, which talks to
    /// it through admin.conf (cmd/phases/init/waitcontrolplane.go, cmd/init.go `Client`); kubelet starts
    /// them when kubeadm's kubelet-start phase starts it.
    Custom,
    /// After `kubeadm init`: those too, and kubeadm's own four where the backup's version differs from
    /// what kubeadm generated (extra admission plugins).
    All,
}

/// Puts the backup's static pods back: the names of those in place from the backup, and whether any
/// file changed. kubeadm's differing version is kept under `var/lib/cpr/kubeadm-generated/`: never in
/// the manifests dir, where kubelet would run it.
/// On a new address (`moved`), kubeadm's own manifests come back with the new address and name.
fn restore_static_pods(
    layout: &Layout,
    which: StaticPods,
    moved: Option<&readdress::Plan>,
) -> Result<(Vec<String>, bool), Error> {
    let staged_dir = staged_bundle_dir(layout).join(layout::MANIFESTS_DIR);
    let live_dir = layout.path(layout::MANIFESTS_DIR);
    let mut names: Vec<String> = match fs::read_dir(&staged_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            // kubelet runs no hidden file of the manifest dir (pkg/kubelet/config/file.go:
            // extractFromDir), such as the kubelet package's own `.kubelet-keep`.
            .filter(|name| !name.starts_with('.'))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(Error::Read {
                path: staged_dir,
                source,
            })
        }
    };
    names.sort();
    let (mut restored, mut changed) = (Vec::new(), false);
    for name in names {
        let kubeadms = KUBEADM_MANIFESTS.contains(&name.as_str());
        if kubeadms && which == StaticPods::Custom {
            continue;
        }
        let backed_up = fs::read(staged_dir.join(&name)).map_err(|source| Error::Read {
            path: staged_dir.join(&name),
            source,
        })?;
        let backed_up = match moved.filter(|_| kubeadms) {
            Some(plan) => {
                readdress::manifest(&String::from_utf8_lossy(&backed_up), plan).into_bytes()
            }
            None => backed_up,
        };
        let live = live_dir.join(&name);
        match fs::read(&live) {
            Ok(generated) if generated == backed_up => {
                if !kubeadms {
                    restored.push(name);
                }
                continue;
            }
            Ok(generated) => {
                let keep = state::state_dir(layout).join(GENERATED_DIR);
                state::ensure_dir(&keep)?;
                fsutil::write_atomic(&keep.join(&name), &generated, 0o600).map_err(|source| {
                    Error::Write {
                        path: keep.join(&name),
                        source,
                    }
                })?;
                log::info!(
                    "finish: {name} differs from what kubeadm generated; restoring the backed-up version (kubeadm's is in {})",
                    keep.display()
                );
            }
            Err(_) => log::info!("finish: {name} is a custom static pod; restoring it"),
        }
        state::ensure_dir(&live_dir)?;
        fsutil::write_atomic(&live, &backed_up, 0o600).map_err(|source| Error::Write {
            path: live.clone(),
            source,
        })?;
        restored.push(name);
        changed = true;
    }
    Ok((restored, changed))
}

/// kubeadm's preflight fails on a listener on any port it checks (`kubeadm::preflight_ports`). After an
/// earlier attempt got as far as kubelet-start, kubelet runs, and so do the static pods it started. Their
/// manifests are aside by now, and a running kubelet stops a static pod whose manifest is gone; stopping
/// kubelet would not (the containers outlive it). So cpr waits for the control-plane ports first, then
/// stops kubelet and waits for kubelet's own port. When nothing listens (a first run) nothing happens.
fn free_preflight_ports(request: &FinishRequest, bind_port: u16) -> Result<(), Error> {
    let proc = Path::new(PROC);
    let (kubelet, pods): (Vec<_>, Vec<_>) = kubeadm::preflight_ports(bind_port)
        .into_iter()
        .partition(|(port, _)| *port == kubeadm::KUBELET_PORT);
    let deadline = Instant::now() + request.timeout;
    wait_for_ports(
        proc,
        &pods,
        deadline,
        "its static pod manifest is no longer in the manifests dir, and a running kubelet stops such a pod; a \
         stopped kubelet does not (the container outlives it): find it with `crictl ps` and stop it with \
         `crictl stop ID`, or end that process",
    )?;
    if kubelet.iter().any(|(port, _)| ports::in_use(proc, *port)) {
        log::info!("finish: kubelet of an earlier attempt still runs; stopping it for kubeadm's preflight check Port-{}", kubeadm::KUBELET_PORT);
        systemctl_kubelet(request, "stop")?;
        wait_for_ports(
            proc,
            &kubelet,
            deadline,
            "`systemctl stop kubelet` did not free it: stop that process",
        )?;
    }
    Ok(())
}

fn wait_for_ports(
    proc: &Path,
    ports: &[(u16, &str)],
    deadline: Instant,
    advice: &str,
) -> Result<(), Error> {
    let mut logged = false;
    loop {
        let listening = ports::listening(proc);
        let Some((&(port, component), inodes)) = ports
            .iter()
            .find_map(|p| listening.get(&p.0).map(|inodes| (p, inodes)))
        else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(Error::PortInUse {
                port,
                component: component.to_string(),
                holder: ports::describe_holder(proc, port, inodes),
                advice: advice.to_string(),
            });
        }
        if !logged {
            log::info!(
                "finish: waiting for port {port} ({component}, held by {}) to free for kubeadm's preflight",
                ports::describe_holder(proc, port, inodes)
            );
            logged = true;
        }
        std::thread::sleep(PORT_POLL);
    }
}

fn restart_kubelet(request: &FinishRequest) -> Result<(), Error> {
    systemctl_kubelet(request, "restart")
}

/// `systemctl ARGS…`; only failing to run it is an error, its exit status is the caller's to judge.
fn systemctl(request: &FinishRequest, args: &[&str]) -> Result<std::process::ExitStatus, Error> {
    std::process::Command::new(&request.systemctl)
        .args(args)
        .status()
        .map_err(|source| {
            crate::node::Error::Run {
                command: format!("{} {}", request.systemctl.display(), args.join(" ")),
                source,
            }
            .into()
        })
}

/// `systemctl VERB kubelet`; a failure is only logged: what it was for is checked afterwards.
fn systemctl_kubelet(request: &FinishRequest, verb: &str) -> Result<(), Error> {
    let status = systemctl(request, &[verb, "kubelet"])?;
    if !status.success() {
        log::warn!("finish: `systemctl {verb} kubelet` exited with {status}");
    }
    Ok(())
}

/// The end of `cpr finish --unit UNIT`, the boot-time run of phase 2: its outcome is final. A failure
/// (`failure` is its message) is recorded in `/var/lib/cpr/finish-failed` and in a banner at the
/// console's login prompt and at login, until a later `cpr finish` succeeds. Either way UNIT is
/// disabled, so phase 2 does not run by itself again. A run that never gets here (power loss, reboot,
/// a kill) leaves UNIT enabled: the next boot runs it again and it converges from the state file.
pub fn settle_unit(
    request: &FinishRequest,
    unit: &str,
    failure: Option<&str>,
) -> Result<(), Error> {
    let layout = Layout::new(&request.root);
    if let Some(why) = failure {
        record_failure(&layout, unit, why)?;
    }
    let status = systemctl(request, &["disable", unit])?;
    if !status.success() {
        return Err(Error::DisableUnit {
            command: format!("{} disable {unit}", request.systemctl.display()),
            unit: unit.to_string(),
            status,
        });
    }
    log::info!("finish: {unit} disabled; phase 2 does not run again at boot");
    Ok(())
}

/// The marker and the two banners of a failed boot-time phase 2; `cpr finish` removes them once it succeeds.
fn failure_notices(layout: &Layout) -> [PathBuf; 3] {
    [
        layout::FINISH_FAILED,
        layout::FINISH_ISSUE_BANNER,
        layout::FINISH_MOTD_BANNER,
    ]
    .map(|relative| layout.path(relative))
}

fn record_failure(layout: &Layout, unit: &str, why: &str) -> Result<(), Error> {
    let notices = failure_notices(layout);
    let when = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let record = format!(
        "cpr finish (phase 2 of the control-plane recovery, run by {unit}) failed at {when}:\n{why}\n\n\
         It does not run again by itself. Fix the cause, then run `sudo cpr finish`; it resumes where this run stopped.\n\
         The whole output: journalctl -b -u {unit}\n"
    );
    let first_line = why.lines().next().unwrap_or_default();
    let banner = format!(
        "\n*** cpr: the control-plane recovery (phase 2) FAILED: {first_line}\n*** Details in /{}; after fixing the cause run `sudo cpr finish`.\n\n",
        layout::FINISH_FAILED
    );
    // agetty expands backslash escapes in issue files: the message must stay literal.
    let issue = banner.replace('\\', "\\\\");
    for (path, text) in notices.iter().zip([&record, &issue, &banner]) {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|source| Error::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        fsutil::write_atomic(path, text.as_bytes(), 0o644).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
    }
    log::error!("finish: {}", banner.trim());
    Ok(())
}

fn clear_failure_notices(layout: &Layout) -> Result<(), Error> {
    for path in failure_notices(layout) {
        match fs::remove_file(&path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Write { path, source })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Waits for kube-apiserver (with admin.conf's credentials) and etcd (with the health-check client),
/// then lists nodes and kube-system pods.
fn health(request: &FinishRequest, layout: &Layout) -> Result<FinishReport, Error> {
    let kubeconfig = Kubeconfig::load(&layout.path(layout::ADMIN_CONF))?;
    let api = ApiServer::new(&kubeconfig)?;
    api.wait_ready(request.timeout)?;
    let etcd_pod = StaticPod::load(&layout.path(layout::ETCD_MANIFEST))?;
    let endpoint = client_endpoint(&etcd_pod)?;
    let tls = client_tls(layout, &etcd_pod)?;
    let revision = wait_for_etcd(&endpoint, &tls, request.timeout)?;
    let nodes = api.get_json("/api/v1/nodes")?;
    let pods = api.get_json("/api/v1/namespaces/kube-system/pods")?;
    let summarize =
        |list: &serde_json::Value, state: &dyn Fn(&serde_json::Value) -> String| -> Vec<String> {
            list["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|item| {
                            format!(
                                "{} {}",
                                item["metadata"]["name"].as_str().unwrap_or("?"),
                                state(item)
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
    Ok(FinishReport {
        apiserver: api.server().to_string(),
        etcd_revision: revision,
        nodes: summarize(&nodes, &|node| {
            node["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map(|c| {
                    if c["status"] == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown")
                .to_string()
        }),
        pods: summarize(&pods, &|pod| {
            pod["status"]["phase"]
                .as_str()
                .unwrap_or("Unknown")
                .to_string()
        }),
        ..FinishReport::default()
    })
}

/// kubelet may still be (re)starting etcd from its manifest: retry until `timeout`.
fn wait_for_etcd(
    endpoint: &str,
    tls: &crate::etcd::client::TlsFiles,
    timeout: Duration,
) -> Result<i64, Error> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match EtcdClient::connect(endpoint, Some(tls)).and_then(|mut client| client.status()) {
            Ok(status) => return Ok(status.revision),
            Err(error) if std::time::Instant::now() >= deadline => {
                return Err(crate::etcd::Error::from(error).into())
            }
            Err(error) => log::info!("finish: waiting for etcd at {endpoint}: {error}"),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// What kubeadm changed compared with the backup, from the restored etcd now that kubeadm's phases
/// after wait-control-plane ran: the kubelet and kube-proxy settings kubeadm stored (each setting of
/// the backup's config that now differs), addons it created, taints it added to or that left the Node.
/// A part that cannot be read is said, never an error: the control plane is up by now.
fn kubeadm_changes(layout: &Layout, carried: &Carried) -> Vec<String> {
    let facts = &carried.carryover;
    let mut client = match restored_etcd(layout) {
        Ok(client) => client,
        Err(e) => {
            return vec![format!(
                "not compared: reading the restored etcd failed: {e}"
            )]
        }
    };
    let keys = carryover::Keys::new(&carried.etcd_prefix, &carried.node);
    let mut get = |key: &str| client.get(key.as_bytes());
    let mut changes = Vec::new();
    let config_map = |key: &str, value: Vec<u8>, data_key: &str| {
        carryover::config_map_data(&value, data_key)
            .map(Option::unwrap_or_default)
            .map_err(|e| format!("{key} not compared: {e}"))
    };
    for (name, key, data_key, before, skipped) in [
        (
            carryover::KUBELET_CONFIG,
            &keys.kubelet_config,
            carryover::KUBELET_CONFIG_KEY,
            &facts.kubelet_config,
            false,
        ),
        (
            carryover::KUBE_PROXY,
            &keys.kube_proxy_config,
            carryover::KUBE_PROXY_CONFIG_KEY,
            &facts.kube_proxy_config,
            facts
                .skip_addons
                .iter()
                .any(|p| p == carryover::SKIP_KUBE_PROXY),
        ),
    ] {
        let after = match get(key) {
            Ok(Some(value)) => config_map(key, value, data_key),
            Ok(None) => continue,
            Err(e) => Err(format!("{key} not compared: {e}")),
        };
        match (after, before) {
            (Err(why), _) => changes.push(why),
            (Ok(_), _) if skipped => {}
            (Ok(after), Some(before)) => {
                let settings = changed_settings(before, &after);
                if !settings.is_empty() {
                    changes.push(format!(
                        "ConfigMap {}/{name}: kubeadm changed {}",
                        carryover::KUBE_SYSTEM,
                        settings.join(", ")
                    ));
                }
            }
            (Ok(_), None) => changes.push(format!(
                "ConfigMap {}/{name}: kubeadm's defaults (the backup's could not be read)",
                carryover::KUBE_SYSTEM
            )),
        }
    }
    for (key, phase) in [
        (&keys.kube_proxy_daemonset, carryover::SKIP_KUBE_PROXY),
        (&keys.coredns, carryover::SKIP_COREDNS),
    ] {
        if facts.skip_addons.iter().any(|p| p == phase) && matches!(get(key), Ok(Some(_))) {
            changes.push(format!(
                "{key}: created by kubeadm although {phase} was skipped"
            ));
        }
    }
    if let Some(before) = &facts.taints {
        let key = &keys.node;
        match get(key).map(|v| v.map(|v| k8s::node(&v))) {
            Ok(Some(Ok(node))) => {
                let after = node.operator_taints();
                let same = |a: &Taint, b: &Taint| {
                    (&a.key, &a.value, &a.effect) == (&b.key, &b.value, &b.effect)
                };
                let text = |t: &Taint| {
                    let value = if t.value.is_empty() {
                        String::new()
                    } else {
                        format!("={}", t.value)
                    };
                    format!("{}{value}:{}", t.key, t.effect)
                };
                for t in after.iter().filter(|a| !before.iter().any(|b| same(a, b))) {
                    changes.push(format!("Node taint added by kubeadm: {}", text(t)));
                }
                for t in before.iter().filter(|b| !after.iter().any(|a| same(a, b))) {
                    changes.push(format!("Node taint gone: {}", text(t)));
                }
            }
            Ok(Some(Err(e))) => changes.push(format!("{key} not compared: {e}")),
            Ok(None) => changes.push(format!("{key}: the Node is gone")),
            Err(e) => changes.push(format!("{key} not compared: {e}")),
        }
    }
    changes
}

/// The restored etcd, through the client URL and certificates of the etcd manifest kubeadm wrote.
fn restored_etcd(layout: &Layout) -> Result<EtcdClient, Error> {
    let pod = StaticPod::load(&layout.path(layout::ETCD_MANIFEST))?;
    let (endpoint, tls) = (client_endpoint(&pod)?, client_tls(layout, &pod)?);
    EtcdClient::connect(&endpoint, Some(&tls)).map_err(|e| crate::etcd::Error::from(e).into())
}

/// What a restore onto a new address does once the new control plane is up, as report lines: the old
/// Node deleted through the API (`kubectl delete node`), the ConfigMaps kubeadm rewrote from the new
/// controlPlaneEndpoint checked in etcd, and kube-proxy's pods deleted so that their DaemonSet starts
/// them again with the new kubeconfig (kube-proxy reads it only at start) — once each pod's kubelet,
/// reaching the new server, has stopped it (a scheduled pod's deletion is graceful). A step that fails is said
/// with what to do, never an error: the control plane is up by now.
fn after_new_address(layout: &Layout, moved: &readdress::Plan) -> Vec<String> {
    let mut lines = Vec::new();
    let api = Kubeconfig::load(&layout.path(layout::ADMIN_CONF))
        .and_then(|kubeconfig| ApiServer::new(&kubeconfig));
    let api = match api {
        Ok(api) => api,
        Err(e) => {
            return vec![format!(
                "not done: reaching kube-apiserver through admin.conf failed: {e}"
            )]
        }
    };
    if let Some(old) = &moved.old_node {
        lines.push(match api.delete(&format!("/api/v1/nodes/{old}")) {
            Ok(true) => format!(
                "Node {old} deleted (the lost node's; {} registers itself)",
                moved.new_name
            ),
            Ok(false) => format!("Node {old} was already gone"),
            Err(e) => format!("Node {old} NOT deleted: {e}. Run `kubectl delete node {old}`"),
        });
    }
    let readdress::Endpoint::Moved { new_server, .. } = &moved.control_plane_endpoint else {
        return lines;
    };
    let prefix = carryover::etcd_prefix(&staged_bundle_dir(layout));
    let host_port = new_server.trim_start_matches("https://");
    match restored_etcd(layout) {
        Ok(mut client) => {
            for (namespace, name, data_key) in readdress::rewritten_config_maps(moved) {
                let key = crate::k8s::Resource::ConfigMaps.key(&prefix, Some(namespace), name);
                let entry = client
                    .get(key.as_bytes())
                    .map_err(|e| e.to_string())
                    .and_then(|value| match value {
                        Some(value) => {
                            carryover::config_map_data(&value, data_key).map_err(|e| e.to_string())
                        }
                        None => Ok(None),
                    });
                lines.push(match entry {
                    Ok(Some(text)) if readdress::names_address(&text, host_port) => {
                        format!("ConfigMap {namespace}/{name}: names {new_server} (written by kubeadm)")
                    }
                    Ok(Some(_)) => format!(
                        "ConfigMap {namespace}/{name}: its {data_key} does NOT name {new_server}; edit it (kubectl -n {namespace} edit configmap {name})"
                    ),
                    Ok(None) => format!("ConfigMap {namespace}/{name}: not in the cluster"),
                    Err(e) => format!("ConfigMap {namespace}/{name}: not checked: {e}"),
                });
            }
        }
        Err(e) => lines.push(format!(
            "ConfigMaps not checked: reading the restored etcd failed: {e}"
        )),
    }
    if moved.kube_proxy != readdress::KubeProxy::Rewritten {
        lines.push(readdress::kube_proxy_step(moved.kube_proxy, new_server));
        return lines;
    }
    let pods =
        api.get_json("/api/v1/namespaces/kube-system/pods?labelSelector=k8s-app%3Dkube-proxy");
    let names: Vec<String> = match pods {
        Ok(list) => list["items"]
            .as_array()
            .into_iter()
            .flatten()
            // The selector again: a server that ignored it must not lose other pods.
            .filter(|pod| pod["metadata"]["labels"]["k8s-app"] == "kube-proxy")
            .filter_map(|pod| pod["metadata"]["name"].as_str().map(str::to_string))
            .collect(),
        Err(e) => {
            lines.push(format!("kube-proxy pods not restarted: listing them failed: {e}. Run `kubectl -n kube-system delete pods -l k8s-app=kube-proxy`"));
            return lines;
        }
    };
    if names.is_empty() {
        lines.push("kube-proxy: no pods to restart".to_string());
    }
    for pod in names {
        lines.push(match api.delete(&format!("/api/v1/namespaces/kube-system/pods/{pod}")) {
            Ok(_) => format!("kube-proxy pod {pod}: deletion requested; its DaemonSet starts it again with the new server once its node's kubelet, reaching the new control plane (on a worker: after `cpr worker repoint`), stops it"),
            Err(e) => format!("kube-proxy pod {pod} NOT restarted: {e}. Run `kubectl -n kube-system delete pod {pod}`"),
        });
    }
    lines
}

/// Each setting (leaf of the YAML document `before`) whose value in `after` differs, as
/// `path: before → after`; a setting `after` does not have counts as changed unless it was null.
fn changed_settings(before: &str, after: &str) -> Vec<String> {
    use serde_norway::Value;
    fn show(v: &Value) -> String {
        serde_json::to_string(v).unwrap_or_default()
    }
    fn walk(before: &Value, after: Option<&Value>, path: &str, out: &mut Vec<String>) {
        if let Value::Mapping(map) = before {
            for (k, v) in map {
                let name = k.as_str().map(str::to_string).unwrap_or_else(|| show(k));
                let path = if path.is_empty() {
                    name
                } else {
                    format!("{path}.{name}")
                };
                walk(v, after.and_then(|a| a.get(k)), &path, out);
            }
            return;
        }
        match after {
            Some(a) if a == before => {}
            None if before.is_null() => {}
            Some(a) => out.push(format!("{path}: {} → {}", show(before), show(a))),
            None => out.push(format!("{path}: {} → (unset)", show(before))),
        }
    }
    let parse = |text: &str| serde_norway::from_str::<Value>(text);
    match (parse(before), parse(after)) {
        (Ok(b), Ok(a)) => {
            let mut out = Vec::new();
            walk(&b, Some(&a), "", &mut out);
            out
        }
        _ => vec!["its content (not comparable as YAML)".to_string()],
    }
}

/// The report as an operator reads it at the end of a recovery.
pub fn describe(report: &FinishReport) -> String {
    if report.already_done {
        return format!(
            "cpr finish: the recovery from {} had already finished; nothing changed\n",
            report.bundle
        );
    }
    if let Some(joined) = &report.rejoin {
        return format!(
            "cpr finish: rejoined the live cluster through {} (kubeadm join --control-plane, bootstrap token {}); etcd member {} votes{}\n",
            joined.api_endpoint,
            joined.token_id,
            joined.member,
            joined
                .removed_member
                .as_deref()
                .map(|m| format!("; the lost member {m} was removed"))
                .unwrap_or_default()
        );
    }
    if let Some(alone) = &report.survivor {
        return format!(
            "cpr finish: the surviving etcd member {} serves alone at revision {} (its own data: every write of its WAL kept){}; the other control-plane nodes rejoin it\n",
            alone.member,
            alone.revision,
            if alone.forced {
                ", started once with --force-new-cluster"
            } else {
                ""
            }
        );
    }
    let mut out = format!(
        "cpr finish: control plane restored from {}\n  kube-apiserver {} ready, etcd healthy at revision {}\n",
        report.bundle, report.apiserver, report.etcd_revision
    );
    let list = |title: &str, items: &[String]| {
        if items.is_empty() {
            String::new()
        } else {
            format!(
                "  {title}:\n{}",
                items
                    .iter()
                    .map(|i| format!("    {i}\n"))
                    .collect::<String>()
            )
        }
    };
    let paths = |paths: &[PathBuf]| {
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
    };
    out.push_str(&list("nodes", &report.nodes));
    out.push_str(&list("kube-system pods", &report.pods));
    out.push_str(&list(
        "static pods restored from the backup",
        &report.static_pods,
    ));
    out.push_str(&list(
        &format!("certificates regenerated by kubeadm from the restored CAs (expired or expiring within {CERT_WARN_DAYS} days; the old ones are kept aside)"),
        &report.regenerated_certificates,
    ));
    if let Some(carried) = &report.carried_over {
        let mut items = vec![format!(
            "KubeletConfiguration: {}",
            carried
                .kubelet_configuration
                .as_deref()
                .unwrap_or("none in the backup (kubeadm's defaults)")
        )];
        items.push(format!(
            "KubeProxyConfiguration: {}",
            if carried.kube_proxy_configuration {
                "the kube-proxy ConfigMap's config.conf"
            } else {
                "none (see skipPhases)"
            }
        ));
        if !carried.skip_phases.is_empty() {
            items.push(format!("skipPhases: {}", carried.skip_phases.join(", ")));
        }
        items.push(match &carried.taints {
            None => "taints: no Node in the backup (kubeadm's control-plane taint)".to_string(),
            Some(t) if t.is_empty() => "taints: none (kubeadm adds none)".to_string(),
            Some(t) => format!(
                "taints: {}",
                t.iter()
                    .map(|t| format!("{}:{}", t.key, t.effect))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        if !carried.kubelet_extra_args.is_empty() {
            items.push(format!(
                "kubeletExtraArgs: {}",
                carried.kubelet_extra_args.join(" ")
            ));
        }
        out.push_str(&list(
            "carried over from the backup into kubeadm init",
            &items,
        ));
        out.push_str(&list(
            "WARNING, not carried over as it was",
            &carried.warnings,
        ));
        let changes = if report.kubeadm_changes.is_empty() {
            vec!["nothing: the restored cluster objects keep the backup's settings".to_string()]
        } else {
            report.kubeadm_changes.clone()
        };
        out.push_str(&list(
            "what kubeadm changed compared with the backup",
            &changes,
        ));
    }
    if let Some(moved) = &report.new_address {
        for line in readdress::describe(moved).lines() {
            out.push_str(&format!("  {line}\n"));
        }
        out.push_str(&list(
            "certificates re-issued by kubeadm for the new address (the old ones are kept aside)",
            &report.readdressed_certificates,
        ));
        out.push_str(&list(
            "done for the new address once the control plane was up",
            &report.new_address_steps,
        ));
    }
    out.push_str(&list("kubeconfig installed", &paths(&report.kubeconfigs)));
    out.push_str(&list(
        "originals moved aside (kept, never deleted)",
        &paths(&report.moved_aside),
    ));
    out
}
