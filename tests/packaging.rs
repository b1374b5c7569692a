//! How operators install cpr, checked with the tools they would use: `cpr --version` against Cargo.toml
//! and git, the man page through groff and man, the bash completion through bash's own completion
//! machinery, the .deb through lintian and dpkg in a Debian bookworm made by mmdebstrap, the OCI
//! image through umoci. The packaging scripts (packaging/) take the binary under test.

mod common;
mod store_common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use store_common::require;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A private copy of the release binary, which is what gets packaged (lintian sees other strings in
/// it than in a debug build). `cargo build --release` first: a no-op after scripts/test's own, and
/// otherwise the packages would hold old code. A copy, because other runs in this checkout rebuild
/// target/ when a commit lands, and a package must be compared with the binary it holds.
fn release_binary() -> (tempfile::TempDir, PathBuf) {
    run(cargo()
        .args(["build", "--release", "--quiet", "--bin", "cpr"])
        .current_dir(repo(".")));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("cpr");
    std::fs::copy(repo("target/x86_64-unknown-linux-gnu/release/cpr"), &copy).unwrap();
    (dir, copy)
}

fn version_of(binary: &Path) -> String {
    run(Command::new(binary).arg("--version"))
}

fn version_json() -> Value {
    serde_json::from_str(&ok(&cpr(&["version", "--output", "json"]))).unwrap()
}

fn git(args: &[&str]) -> String {
    run(Command::new("git").args(args).current_dir(repo(".")))
        .trim()
        .to_string()
}

/// `cpr [COMMAND...] --help`'s command list: what the man page and the completion must know.
fn subcommands(path: &[&str]) -> Vec<String> {
    let help = ok(&cpr(&[path, &["--help"]].concat()));
    help.split("\nCommands:\n")
        .nth(1)
        .map(|list| {
            list.lines()
                .take_while(|l| l.starts_with("  "))
                .filter(|l| !l.starts_with("   "))
                .map(|l| l.split_whitespace().next().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn every_command() -> Vec<Vec<String>> {
    let mut all = Vec::new();
    let mut todo = vec![Vec::<String>::new()];
    while let Some(path) = todo.pop() {
        let borrowed: Vec<&str> = path.iter().map(String::as_str).collect();
        for sub in subcommands(&borrowed) {
            let mut child = path.clone();
            child.push(sub);
            all.push(child.clone());
            todo.push(child);
        }
    }
    all
}

#[test]
fn version_names_the_cargo_version_the_commit_and_its_time() {
    let info = version_json();
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["target"], "x86_64-unknown-linux-gnu");
    assert_eq!(info["staticBinary"], true);
    assert_eq!(info["features"], serde_json::json!([]));
    let commit = info["gitCommit"].as_str().unwrap();
    assert_ne!(
        commit, "unknown",
        "the binary was built where git could not read this checkout (cargo printed why)"
    );
    let head = git(&["rev-parse", "HEAD"]);
    // Others commit in this checkout while tests run: a HEAD newer than the binary is a stale build,
    // not a wrong stamp; the commit must still be one of this branch's.
    if commit != head {
        run(Command::new("git")
            .args(["merge-base", "--is-ancestor", commit, "HEAD"])
            .current_dir(repo(".")));
        eprintln!("HEAD moved to {head} after the binary was built from {commit}");
    }
    let expected_epoch: i64 = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => epoch.parse().unwrap(),
        Err(_) => git(&["show", "-s", "--format=%ct", commit])
            .parse()
            .unwrap(),
    };
    let built = time::OffsetDateTime::parse(
        info["buildDate"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(built.unix_timestamp(), expected_epoch, "{info}");

    // --version and `cpr version` print the same text, first line `cpr VERSION`.
    let printed = ok(&cpr(&["--version"]));
    assert_eq!(printed, ok(&cpr(&["version"])));
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines[0], format!("cpr {}", env!("CARGO_PKG_VERSION")));
    assert!(
        lines.contains(&format!("commit: {commit}").as_str()),
        "{printed}"
    );
    assert!(
        lines.contains(&"target: x86_64-unknown-linux-gnu (static)"),
        "{printed}"
    );

    // Usage errors: exit 2, nothing on stdout.
    for args in [&["--version", "list"][..], &[]] {
        let out = cpr(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(out.stdout.is_empty());
    }
}

/// The version a bundle's manifest records is the one `cpr version` reports.
#[test]
fn a_bundles_cpr_version_is_the_binarys() {
    let node = KubeadmNode::start(EtcdVersion::V3_4, 1);
    let store = tempfile::tempdir().unwrap();
    let report: Value = serde_json::from_str(&ok(&cpr_backup(
        node.root(),
        store.path(),
        &["--output", "json"],
    )))
    .unwrap();
    let bundle = store.path().join(report["bundle"].as_str().unwrap());
    let manifest: Value = serde_json::from_str(&ok(&cpr(&[
        "inspect",
        "--output",
        "json",
        bundle.to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(
        manifest["cprVersion"],
        version_json()["version"],
        "{manifest}"
    );
}

fn gen_docs() -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    run(Command::new(repo("packaging/gen-docs"))
        .arg(cpr_bin())
        .arg(out.path()));
    out
}

#[test]
fn the_man_page_renders_without_warnings_and_documents_every_command_and_flag() {
    let groff = require("groff", "the apt package groff-base");
    let man = require("man", "the apt package man-db");
    let docs = gen_docs();
    let page = docs.path().join("cpr.8");
    let out = Command::new(groff)
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&page)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "groff: {}",
        text(&out)
    );
    let out = Command::new(man)
        .arg("-l")
        .arg(&page)
        .env("MANWIDTH", "200")
        .env("MAN_KEEP_FORMATTING", "")
        .env("PAGER", "cat")
        .output()
        .unwrap();
    assert!(out.status.success(), "man -l: {}", text(&out));
    // man's own warnings (and groff's through it) go to stderr.
    assert!(out.stderr.is_empty(), "man -l: {}", text(&out));
    let rendered = String::from_utf8(out.stdout).unwrap();
    let commands = every_command();
    assert!(commands.len() >= 14, "{commands:?}");
    for command in &commands {
        let heading = format!("cpr {}", command.join(" "));
        assert!(
            rendered.lines().any(|l| l.trim() == heading),
            "{heading} has no section in the man page:\n{rendered}"
        );
    }
    for flag in ["--version", "--metrics-file", "--keep-weekly", "--data-dir"] {
        assert!(
            rendered.contains(flag),
            "{flag} is not in the man page:\n{rendered}"
        );
    }
    assert!(
        rendered.contains(&format!("cpr {}", env!("CARGO_PKG_VERSION"))),
        "{rendered}"
    );
}

/// What bash completes for the words of `line` (the last one, possibly empty, is being completed),
/// through the function `complete -p cpr` names, as bash calls it; sorted, as bash shows them.
fn complete(script: &Path, line: &[&str]) -> Vec<String> {
    let words: Vec<String> = line.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\n\
         spec=$(complete -p cpr) || exit 3\n\
         function=$(printf '%s\\n' \"$spec\" | sed -n 's/.*-F \\([^ ]*\\) .*/\\1/p')\n\
         COMP_WORDS=({})\n\
         COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n\
         COMPREPLY=()\n\
         \"$function\" cpr\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words.join(" ")
    );
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("config.yaml"), "").unwrap();
    std::fs::create_dir(scratch.path().join("configs")).unwrap();
    run(Command::new("bash")
        .args(["--norc", "-c", &program])
        .current_dir(scratch.path()))
    .lines()
    .filter(|l| !l.is_empty())
    .map(String::from)
    .collect::<std::collections::BTreeSet<_>>()
    .into_iter()
    .collect()
}

#[test]
fn bash_completes_subcommands_flags_and_file_values() {
    let docs = gen_docs();
    let script = docs.path().join("cpr.bash");
    let sorted = |mut words: Vec<String>| {
        words.sort();
        words
    };
    assert_eq!(
        complete(&script, &["cpr", ""]),
        sorted(subcommands(&[])),
        "top-level commands"
    );
    assert_eq!(complete(&script, &["cpr", "ba"]), ["backup"]);
    assert_eq!(complete(&script, &["cpr", "--ver"]), ["--version"]);
    assert_eq!(
        complete(&script, &["cpr", "backup", "--metr"]),
        ["--metrics-file"]
    );
    // A flag's value is a file name, and the word after it is not taken for a subcommand.
    assert_eq!(
        complete(&script, &["cpr", "backup", "--config", "conf"]),
        ["config.yaml", "configs"]
    );
    assert_eq!(
        complete(&script, &["cpr", "prune", "--store", "/srv", "--keep-l"]),
        ["--keep-last"]
    );
    assert_eq!(
        complete(&script, &["cpr", "etcd", "snapshot", ""]),
        sorted(subcommands(&["etcd", "snapshot"]))
    );
    assert_eq!(
        complete(&script, &["cpr", "etcd", "snapshot", "restore", "--data-"]),
        ["--data-dir"]
    );
    // A switch takes no value: the next word is a flag again.
    assert_eq!(
        complete(&script, &["cpr", "restore", "--no-finish", "--out"]),
        ["--output"]
    );
}

/// This machine's Debian apt sources (what image/build-target-os builds its OS from too).
fn debian_sources() -> PathBuf {
    [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| {
        std::fs::read_to_string(p).is_ok_and(|t| {
            t.lines()
                .any(|l| !l.starts_with('#') && (l.contains("deb") || l.contains("URIs:")))
        })
    })
    .expect("no Debian apt sources file on this machine (/etc/apt/sources.list.d/debian.sources)")
}

/// A copy of a Debian bookworm with systemd (mmdebstrap minbase), built once from this machine's
/// Debian sources and cached under target/packaging/bookworm-KEY (KEY: the mmdebstrap arguments and
/// the sources file). Nothing is excluded from it, so a package's man page and docs land as on a node.
fn bookworm() -> tempfile::TempDir {
    use sha2::{Digest, Sha256};
    let mmdebstrap = require("mmdebstrap", "the apt package mmdebstrap");
    let sources = debian_sources();
    let args = [
        "--mode=root",
        "--format=directory",
        "--variant=minbase",
        // man-db: systemd-analyze verify runs `man` for the units' Documentation=man:cpr(8).
        "--include=systemd,init-system-helpers,man-db",
        "--aptopt=APT::Install-Recommends \"false\"",
        "--aptopt=Acquire::Check-Valid-Until \"false\"",
    ];
    let mut hash = Sha256::new();
    hash.update(args.join("\n"));
    hash.update(std::fs::read(&sources).unwrap());
    let key = hex::encode(hash.finalize());
    let cache = repo("target/packaging").join(format!("bookworm-{}", &key[..16]));
    if !cache.join("rootfs").is_dir() {
        let work = cache.with_extension("build");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let out = Command::new(mmdebstrap)
            .args(args)
            .arg("bookworm")
            .arg(work.join("rootfs"))
            .arg(&sources)
            .output()
            .unwrap();
        assert!(out.status.success(), "mmdebstrap: {}", text(&out));
        // A new key makes the older trees dead weight (about 200 MB each).
        for entry in std::fs::read_dir(repo("target/packaging"))
            .unwrap()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("bookworm-") && !name.ends_with(".build") {
                std::fs::remove_dir_all(entry.path()).unwrap();
            }
        }
        std::fs::rename(&work, &cache).unwrap();
    }
    let copy = tempfile::tempdir_in(repo("target/packaging")).unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg(cache.join("rootfs"))
        .arg(copy.path()));
    copy
}

/// `command` run inside the chroot `root`, with a clean environment as dpkg would see from a shell.
fn in_chroot(root: &Path, command: &str) -> Output {
    Command::new("chroot")
        .arg(root)
        .args(["sh", "-c", command])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap()
}

fn ok_in_chroot(root: &Path, command: &str) -> String {
    let out = in_chroot(root, command);
    assert!(out.status.success(), "chroot: {command}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn build_deb(binary: &Path, outdir: &Path) -> PathBuf {
    let deb = run(Command::new(repo("packaging/build-deb"))
        .arg(binary)
        .arg(outdir));
    PathBuf::from(deb.trim())
}

#[test]
fn the_deb_is_lintian_clean_installs_into_bookworm_and_purges_all_but_backups() {
    require("dpkg-deb", "the apt package dpkg");
    let lintian = require("lintian", "the apt package lintian");
    let (_keep, binary) = release_binary();
    let packages = tempfile::tempdir().unwrap();
    let deb = build_deb(&binary, &packages.path().join("a"));
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("cpr_{}_amd64.deb", env!("CARGO_PKG_VERSION"))
    );
    // The same binary gives the same package, byte for byte.
    let again = build_deb(&binary, &packages.path().join("b"));
    assert_eq!(std::fs::read(&deb).unwrap(), std::fs::read(&again).unwrap());

    // Every tag lintian still finds is overridden with a reason (packaging/debian/lintian-overrides);
    // --fail-on info: even its informational tags count.
    let out = Command::new(lintian)
        .args(["--fail-on", "error,warning,info", "--display-info"])
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "lintian: {}",
        text(&out)
    );
    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/sbin/cpr",
        "./lib/systemd/system/cpr-backup.service",
        "./lib/systemd/system/cpr-backup.timer",
        "./lib/systemd/system/cpr-drill.service",
        "./lib/systemd/system/cpr-drill.timer",
        "./lib/systemd/system/cpr-finish.service",
        "./etc/cpr/config.yaml",
        "./usr/share/man/man8/cpr.8.gz",
        "./usr/share/bash-completion/completions/cpr",
        "./usr/share/doc/cpr/copyright",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} is not in the package:\n{contents}"
        );
    }
    for line in contents.lines() {
        assert!(line.contains(" root/root "), "not owned by root: {line}");
    }
    // The copyright file names every crate the binary links, with its licence.
    let copyright = run(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -xO ./usr/share/doc/cpr/copyright",
        deb.display()
    )));
    for crate_name in ["etcd-client", "rustls", "zstd-sys", "ring", "serde_norway"] {
        assert!(
            copyright.contains(&format!("Files: rust-crates/{crate_name}-")),
            "{crate_name} is not in the copyright file"
        );
    }
    assert!(
        !copyright.contains("Files: rust-crates/rcgen-"),
        "a dev-dependency is listed"
    );

    let system = bookworm();
    let root = system.path().join("rootfs");
    std::fs::copy(&deb, root.join("tmp/cpr.deb")).unwrap();
    ok_in_chroot(&root, "dpkg -i /tmp/cpr.deb");
    let version = ok_in_chroot(&root, "cpr --version");
    assert_eq!(
        version.lines().next(),
        Some(format!("cpr {}", env!("CARGO_PKG_VERSION")).as_str())
    );
    assert_eq!(
        version,
        version_of(&binary),
        "the installed binary is the one packaged"
    );
    // systemd knows the units, finds nothing wrong in them, and they run the packaged binary.
    let units = "cpr-backup.service cpr-backup.timer cpr-finish.service";
    let listed = ok_in_chroot(
        &root,
        &format!("systemctl list-unit-files --no-legend {units}"),
    );
    // Installed, not enabled: the service has no [Install] (the timer starts it).
    for (unit, state) in [
        ("cpr-backup.service", "static"),
        ("cpr-backup.timer", "disabled"),
        ("cpr-finish.service", "disabled"),
    ] {
        assert!(
            listed
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([unit, state])),
            "{unit} is not {state}:\n{listed}"
        );
    }
    let out = in_chroot(&root, &format!("systemd-analyze verify {units}"));
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );
    let exec = ok_in_chroot(
        &root,
        "grep -h ^ExecStart= /lib/systemd/system/cpr-*.service",
    );
    assert!(
        exec.lines()
            .all(|l| l.starts_with("ExecStart=/usr/sbin/cpr ")),
        "{exec}"
    );
    // The conffile parses: the only complaint about it is the store it leaves to the operator.
    let out = in_chroot(&root, "cpr list");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no store given") && text(&out).contains("/etc/cpr/config.yaml"),
        "{}",
        text(&out)
    );
    let conffiles = ok_in_chroot(&root, "dpkg-query -W -f '${Conffiles}' cpr");
    assert!(conffiles.contains("/etc/cpr/config.yaml"), "{conffiles}");
    // The completion is where bash-completion loads it from, and completes the installed binary.
    let completed = ok_in_chroot(
        &root,
        "bash --norc -c '. /usr/share/bash-completion/completions/cpr; COMP_WORDS=(cpr ver); COMP_CWORD=1; _cpr; echo \"${COMPREPLY[*]}\"'",
    );
    assert_eq!(completed.trim(), "verify version");

    // An operator enables the timer, cpr leaves state, a directory store holds a bundle; then purge.
    let installed = ok_in_chroot(&root, "dpkg -L cpr");
    ok_in_chroot(
        &root,
        "systemctl enable cpr-backup.timer && test -L /etc/systemd/system/timers.target.wants/cpr-backup.timer && \
         mkdir -p /srv/cpr-backups/prod/master0 /var/lib/cpr /etc/issue.d && \
         echo bundle > /srv/cpr-backups/prod/master0/20260101T000000Z.tar.zst && \
         echo '{}' > /var/lib/cpr/state.json && echo failed > /etc/issue.d/cpr-finish.issue",
    );
    ok_in_chroot(&root, "dpkg --purge cpr");
    let out = in_chroot(&root, "dpkg-query -W -f '${Status}' cpr");
    assert!(
        !out.status.success() || text(&out).contains("not-installed"),
        "cpr is still known to dpkg: {}",
        text(&out)
    );
    for path in installed
        .lines()
        .filter(|p| root.join(&p[1..]).is_file() || p.contains("cpr"))
    {
        assert!(
            !root.join(&path[1..]).exists(),
            "{path} is still there after the purge"
        );
    }
    for gone in [
        "etc/cpr",
        "var/lib/cpr",
        "etc/issue.d/cpr-finish.issue",
        "etc/systemd/system/timers.target.wants/cpr-backup.timer",
        "var/lib/systemd/deb-systemd-helper-enabled/cpr-backup.timer.dsh-also",
    ] {
        assert!(
            root.join(gone).symlink_metadata().is_err(),
            "/{gone} is still there after the purge"
        );
    }
    assert_eq!(
        std::fs::read_to_string(root.join("srv/cpr-backups/prod/master0/20260101T000000Z.tar.zst"))
            .unwrap(),
        "bundle\n",
        "the purge touched the backups"
    );

    // Keys and a store under /var/lib/cpr are backups too: a purge keeps them and says so.
    ok_in_chroot(&root, "dpkg -i /tmp/cpr.deb");
    ok_in_chroot(
        &root,
        "mkdir -p /etc/cpr/keys /var/lib/cpr/store/prod/master0 && echo key > /etc/cpr/keys/age.key && \
         echo bundle > /var/lib/cpr/store/prod/master0/20260101T000000Z.tar.zst.age",
    );
    let out = in_chroot(&root, "dpkg --purge cpr");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("/etc/cpr/keys is kept"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("/var/lib/cpr holds bundles"),
        "{}",
        text(&out)
    );
    assert!(root.join("etc/cpr/keys/age.key").is_file());
    assert!(!root.join("etc/cpr/config.yaml").exists());
    assert!(root
        .join("var/lib/cpr/store/prod/master0/20260101T000000Z.tar.zst.age")
        .is_file());
}

fn build_oci(binary: &Path, outdir: &Path) -> String {
    run(Command::new(repo("packaging/build-oci"))
        .arg(binary)
        .arg(outdir))
    .trim()
    .to_string()
}

#[test]
fn the_oci_image_is_reproducible_and_its_unpacked_rootfs_runs_cpr() {
    let umoci = require("umoci", "the apt package umoci");
    let (_keep, binary) = release_binary();
    let images = tempfile::tempdir().unwrap();
    let (first, second) = (images.path().join("first"), images.path().join("second"));
    let digest = build_oci(&binary, &first);
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(
        build_oci(&binary, &second),
        digest,
        "two builds, two digests"
    );
    for file in ["index.json", "oci-layout"] {
        assert_eq!(
            std::fs::read(first.join(file)).unwrap(),
            std::fs::read(second.join(file)).unwrap(),
            "{file} differs between two builds"
        );
    }
    // A layout is written whole, never over another.
    let out = Command::new(repo("packaging/build-oci"))
        .arg(&binary)
        .arg(&first)
        .output()
        .unwrap();
    assert!(
        !out.status.success() && text(&out).contains("is not empty"),
        "{}",
        text(&out)
    );

    let index: Value =
        serde_json::from_slice(&std::fs::read(first.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    let tag = env!("CARGO_PKG_VERSION");
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        tag
    );
    // umoci checks every digest while it unpacks.
    let bundle = images.path().join("bundle");
    run(Command::new(&umoci)
        .args(["unpack", "--image"])
        .arg(format!("{}:{tag}", first.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    let files = files_below(&rootfs);
    let mut names: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(&rootfs).unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["etc/ssl/certs/ca-certificates.crt", "usr/sbin/cpr"],
        "the image holds only the binary and the CA bundle"
    );
    // deploy/cronjob.yaml runs this image's binary.
    let cronjob: Value =
        serde_norway::from_str(&std::fs::read_to_string(repo("deploy/cronjob.yaml")).unwrap())
            .unwrap();
    let container = &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    let command = container["command"][0].as_str().unwrap();
    assert!(
        rootfs.join(command.trim_start_matches('/')).is_file(),
        "the CronJob runs {command}, which the image does not hold"
    );
    assert!(
        container["image"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/cpr:{tag}")),
        "{container}"
    );
    let config: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["args"][0], "/usr/sbin/cpr", "{config}");
    // The binary runs with nothing but the image around it, and is the one built.
    let out = Command::new("chroot")
        .arg(&rootfs)
        .args(["/usr/sbin/cpr", "--version"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        version_of(&binary),
        "{}",
        text(&out)
    );
    let info: Value = serde_json::from_str(&run(
        Command::new(&binary).args(["version", "--output", "json"])
    ))
    .unwrap();
    let labels = &config["annotations"];
    assert_eq!(
        labels["org.opencontainers.image.created"], info["buildDate"],
        "{config}"
    );
    assert_eq!(
        labels["org.opencontainers.image.revision"], info["gitCommit"],
        "{config}"
    );
}
