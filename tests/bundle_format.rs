//! The bundle format on its own: round trips, and every way a damaged or crafted bundle is refused;
//! a real backup read by the standard tools and by cpr 1.1.

mod common;

use cpr::bundle::manifest::{self, Cluster, Etcd, FileEntry, Manifest, Node, SnapshotEntry};
use cpr::bundle::{
    read_bundle, read_manifest, write_bundle, Discard, Error, Extract, FrameChecksum, WriteOptions,
};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const NAME: &str = "prod/master0/20261124T080000Z.tar.zst";

fn snapshot() -> Vec<u8> {
    let mut db: Vec<u8> = (0..16384u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let trailer = Sha256::digest(&db);
    db.extend_from_slice(&trailer);
    db
}

fn file(path: &str, data: &[u8], mode: u32) -> (FileEntry, Vec<u8>) {
    (
        FileEntry {
            path: path.to_string(),
            size: data.len() as u64,
            mode,
            uid: 0,
            gid: 0,
            sha256: hex::encode(Sha256::digest(data)),
            source: None,
        },
        data.to_vec(),
    )
}

fn sample() -> (Manifest, Vec<Vec<u8>>, Vec<u8>) {
    let files = vec![
        file(
            "etc/kubernetes/pki/ca.crt",
            b"-----BEGIN CERTIFICATE-----\n",
            0o644,
        ),
        file(
            "etc/kubernetes/pki/ca.key",
            b"-----BEGIN PRIVATE KEY-----\n",
            0o600,
        ),
        file("etc/kubernetes/manifests/etcd.yaml", b"kind: Pod\n", 0o600),
    ];
    let snap = snapshot();
    let manifest = Manifest {
        format_version: Manifest::format_version(),
        cpr_version: "test".to_string(),
        created_at: "2026-11-24T08:00:00Z".to_string(),
        cluster: Cluster {
            name: "prod".to_string(),
            ..Cluster::default()
        },
        node: Node {
            name: "master0".to_string(),
            ..Node::default()
        },
        etcd: Etcd::default(),
        files: files.iter().map(|(e, _)| e.clone()).collect(),
        snapshot: SnapshotEntry::new(snap.len() as u64),
    };
    (manifest, files.into_iter().map(|(_, d)| d).collect(), snap)
}

fn options() -> WriteOptions {
    WriteOptions {
        zstd_level: 3,
        zstd_threads: 2,
        mtime: 1_790_000_000,
    }
}

fn bundle_bytes() -> Vec<u8> {
    let (manifest, files, snap) = sample();
    let (out, stats) = write_bundle(
        Vec::new(),
        &manifest,
        &files,
        &mut &snap[..],
        &options(),
        NAME,
    )
    .unwrap();
    assert!(stats.tar_bytes > snap.len() as u64);
    out
}

#[test]
fn round_trip_extracts_every_file_with_its_mode() {
    let bytes = bundle_bytes();
    let (manifest, files, snap) = sample();
    assert_eq!(read_manifest(&bytes[..], NAME).unwrap(), manifest);
    let dir = tempfile::tempdir().unwrap();
    let read = read_bundle(
        &bytes[..],
        NAME,
        FrameChecksum::Check,
        &mut Extract::new(dir.path()),
    )
    .unwrap();
    assert_eq!(read, manifest);
    for (entry, data) in manifest.files.iter().zip(&files) {
        let path = dir.path().join(&entry.path);
        assert_eq!(&std::fs::read(&path).unwrap(), data);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            entry.mode
        );
    }
    assert_eq!(
        std::fs::read(dir.path().join(manifest::SNAPSHOT_PATH)).unwrap(),
        snap
    );
}

#[test]
fn standard_tools_open_a_bundle() {
    let bytes = bundle_bytes();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("b.tar.zst");
    std::fs::write(&bundle, &bytes).unwrap();
    let listing = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc {} | tar tvf -", bundle.display()))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert_eq!(
        names,
        [
            "cpr/manifest.json",
            "etc/kubernetes/pki/ca.crt",
            "etc/kubernetes/pki/ca.key",
            "etc/kubernetes/manifests/etcd.yaml",
            "etcd/snapshot.db",
        ]
    );
    assert!(
        listing.contains("-rw-------"),
        "ca.key keeps mode 0600: {listing}"
    );
    // The check README gives an operator, as it gives it: GNU tar stops at the end-of-archive marker without a
    // word about the BLAKE3 line after it; b3sum (Debian's) checks that line against the
    // extracted snapshot; Python's tarfile lists the same entries.
    let check = std::process::Command::new("sh")
        .arg("-c")
        .arg(
            "set -e; zstd -dc b.tar.zst | tar x; zstd -dc b.tar.zst | tail -c 83 | b3sum -c -
             zstd -dc b.tar.zst | python3 -c 'import sys, tarfile
print(*tarfile.open(fileobj=sys.stdin.buffer, mode=\"r|\").getnames())'",
        )
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        check.status.success() && check.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&check.stdout),
        format!("etcd/snapshot.db: OK\n{}\n", names.join(" "))
    );
}

/// Writes the sample with `snapshot` in place of its own, as a 1.2 bundle or, with `blake3` None,
/// as a 1.1 bundle (no digest line; the reader checks etcd's trailer).
fn bundle_with(snapshot: &[u8], blake3: Option<String>) -> Vec<u8> {
    let (manifest, files, _) = sample();
    let manifest = Manifest {
        snapshot: SnapshotEntry {
            blake3,
            ..SnapshotEntry::new(snapshot.len() as u64)
        },
        ..manifest
    };
    write_bundle(
        Vec::new(),
        &manifest,
        &files,
        &mut &snapshot[..],
        &options(),
        NAME,
    )
    .unwrap()
    .0
}

#[test]
fn format_1_1_bundles_without_a_snapshot_digest_are_checked_by_the_trailer() {
    let bytes = bundle_with(&snapshot(), None);
    let content = zstd::decode_all(&bytes[..]).unwrap();
    assert!(
        content.ends_with(&[0; 1024]),
        "nothing after the end marker"
    );
    let read = read_bundle(&bytes[..], NAME, FrameChecksum::Check, &mut Discard).unwrap();
    assert_eq!(read.snapshot.blake3, None);
}

/// A 1.2 bundle whose snapshot was replaced by another valid etcd snapshot (its trailer recomputed)
/// is refused by the BLAKE3 digest, naming both digests.
#[test]
fn a_snapshot_that_does_not_match_its_blake3_digest_is_refused() {
    let good = snapshot();
    let mut other = good[..good.len() - 32].to_vec();
    other[100] ^= 1;
    let trailer = Sha256::digest(&other);
    other.extend_from_slice(&trailer);
    let at = Some(manifest::SNAPSHOT_BLAKE3_END_OF_ARCHIVE.to_string());
    let line_len = 83;
    let tail = |bytes: &[u8]| {
        let content = zstd::decode_all(bytes).unwrap();
        content[content.len() - line_len..].to_vec()
    };
    let original_line = tail(&bundle_with(&good, at.clone()));
    let swapped = zstd::decode_all(&bundle_with(&other, at)[..]).unwrap();
    let mut crafted = swapped[..swapped.len() - line_len].to_vec();
    crafted.extend_from_slice(&original_line);
    let err = read_bundle(
        &zstd::encode_all(&crafted[..], 3).unwrap()[..],
        NAME,
        FrameChecksum::Check,
        &mut Discard,
    )
    .unwrap_err();
    assert!(matches!(err, Error::SnapshotDigest { .. }), "{err}");
    for digest in [blake3::hash(&good), blake3::hash(&other)] {
        assert!(err.to_string().contains(&*digest.to_hex()), "{err}");
    }
    assert!(err.to_string().contains(NAME), "{err}");
}

/// What a 1.2 bundle may hold after the end-of-archive marker: b3sum's line for its snapshot, and
/// nothing else.
#[test]
fn a_1_2_bundle_without_its_blake3_line_right_after_the_end_is_refused() {
    let (manifest, files, snap) = sample();
    let json = manifest.to_json();
    let entries: Vec<(&str, tar::EntryType, &[u8])> = vec![
        (manifest::MANIFEST_PATH, tar::EntryType::Regular, &json),
        (&manifest.files[0].path, tar::EntryType::Regular, &files[0]),
        (&manifest.files[1].path, tar::EntryType::Regular, &files[1]),
        (&manifest.files[2].path, tar::EntryType::Regular, &files[2]),
        (manifest::SNAPSHOT_PATH, tar::EntryType::Regular, &snap),
    ];
    let line = manifest.snapshot.blake3_line(&blake3::hash(&snap));
    assert!(read_bundle(
        &craft_with_tail(&entries, line.as_bytes())[..],
        NAME,
        FrameChecksum::Check,
        &mut Discard
    )
    .is_ok());
    let other = manifest
        .snapshot
        .blake3_line(&blake3::hash(b"another snapshot"));
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("missing", Vec::new(), "there is no digest line"),
        (
            "a third zero block",
            [&[0; 512][..], line.as_bytes()].concat(),
            "are not",
        ),
        ("another digest", other.clone().into_bytes(), &other[..64]),
        (
            "bytes after the line",
            format!("{line}#").into_bytes(),
            "are not",
        ),
        ("no newline", line.trim_end().as_bytes().to_vec(), "are not"),
        ("other bytes", vec![b'x'; line.len()], "are not"),
    ];
    for (what, tail, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let err = read_bundle(
            &craft_with_tail(&entries, &tail)[..],
            NAME,
            FrameChecksum::Check,
            &mut Extract::new(dir.path()),
        )
        .unwrap_err();
        assert!(matches!(err, Error::SnapshotDigest { .. }), "{what}: {err}");
        assert!(err.to_string().contains(says), "{what}: {err}");
        assert!(
            err.to_string().contains("use another bundle"),
            "{what}: {err}"
        );
    }
    // The manifest names the only place the digest can be.
    let json = manifest_json(|m| m["snapshot"]["blake3"] = "cpr/snapshot.b3".into());
    let bytes = craft(&[(manifest::MANIFEST_PATH, tar::EntryType::Regular, &json)]);
    let err = read_manifest(&bytes[..], NAME).unwrap_err();
    assert!(matches!(err, Error::ManifestInvalid { .. }), "{err}");
    assert!(err.to_string().contains("end-of-archive"), "{err}");
}

#[test]
fn writer_refuses_a_short_or_bad_snapshot() {
    let (manifest, files, snap) = sample();
    let err = write_bundle(
        Vec::new(),
        &manifest,
        &files,
        &mut &snap[..100],
        &options(),
        NAME,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::SnapshotShort { got: 100, .. }),
        "{err}"
    );
    let mut bad = snap.clone();
    bad[10] ^= 1;
    let err = write_bundle(
        Vec::new(),
        &manifest,
        &files,
        &mut &bad[..],
        &options(),
        NAME,
    )
    .unwrap_err();
    assert!(matches!(err, Error::SnapshotTrailer { .. }), "{err}");
}

#[test]
fn every_truncation_is_detected() {
    let bytes = bundle_bytes();
    for cut in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
        assert!(
            read_bundle(&bytes[..cut], NAME, FrameChecksum::Check, &mut Discard).is_err(),
            "a bundle cut at {cut} of {} passed",
            bytes.len()
        );
    }
}

/// zstd's frame checksum (the frame's last four bytes) is checked unless the caller has a digest
/// of the stored object to check instead.
#[test]
fn the_frame_checksum_is_checked_unless_the_stored_object_is_digested() {
    let bytes = bundle_bytes();
    let good = read_bundle(&bytes[..], NAME, FrameChecksum::Check, &mut Discard).unwrap();
    let mut bad = bytes.clone();
    *bad.last_mut().unwrap() ^= 0x01;
    let err = read_bundle(&bad[..], NAME, FrameChecksum::Check, &mut Discard).unwrap_err();
    assert!(
        err.to_string().contains("at end of archive") && err.to_string().contains("checksum"),
        "{err}"
    );
    let read = read_bundle(
        &bad[..],
        NAME,
        FrameChecksum::CoveredByObjectDigest,
        &mut Discard,
    )
    .unwrap();
    assert_eq!(read, good);
}

/// A flip either fails the read or provably changed nothing the reader returns (zstd header bits
/// such as the window size, and bits of an entropy table's description the data never uses, can
/// change without changing a single decoded byte).
#[test]
fn every_flipped_byte_is_detected_or_harmless() {
    let bytes = bundle_bytes();
    let content = zstd::decode_all(&bytes[..]).unwrap();
    let mut harmless = 0;
    for at in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] ^= 0x20;
        if read_bundle(&bad[..], NAME, FrameChecksum::Check, &mut Discard).is_ok() {
            assert_eq!(
                zstd::decode_all(&bad[..]).unwrap(),
                content,
                "flip at {at} changed content unnoticed"
            );
            harmless += 1;
            eprintln!("harmless flip at {at} of {}", bytes.len());
        }
    }
    assert!(
        harmless < 12,
        "{harmless} flips passed; only header and table bits may"
    );
}

/// Builds a raw tar + zstd from entries given as (path, type, data), bypassing the writer.
fn craft(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    craft_with_tail(entries, b"")
}

/// As `craft`, with `tail` after the end-of-archive marker.
fn craft_with_tail(entries: &[(&str, tar::EntryType, &[u8])], tail: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, kind, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        if *kind == tar::EntryType::Symlink {
            header.set_link_name("/etc/shadow").unwrap();
        }
        tar.append_data(&mut header, path, *data).unwrap();
    }
    let mut bytes = tar.into_inner().unwrap();
    bytes.extend_from_slice(tail);
    zstd::encode_all(&bytes[..], 3).unwrap()
}

fn manifest_json(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let (manifest, _, _) = sample();
    let mut value = serde_json::to_value(&manifest).unwrap();
    edit(&mut value);
    serde_json::to_vec(&value).unwrap()
}

#[test]
fn refuses_an_unknown_major_version_before_anything_else() {
    let json = manifest_json(|m| m["formatVersion"] = "2.0".into());
    let bytes = craft(&[(manifest::MANIFEST_PATH, tar::EntryType::Regular, &json)]);
    let err = read_manifest(&bytes[..], NAME).unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion { .. }), "{err}");
    assert!(err.to_string().contains("\"2.0\""), "{err}");
    // A newer minor version only adds fields: it is read.
    let json = manifest_json(|m| {
        m["formatVersion"] = "1.7".into();
        m["futureField"] = true.into();
    });
    let bytes = craft(&[(manifest::MANIFEST_PATH, tar::EntryType::Regular, &json)]);
    assert!(read_manifest(&bytes[..], NAME).is_ok());
}

#[test]
fn format_1_0_manifests_without_file_sources_are_read_and_1_1_keeps_them() {
    // What cpr wrote before files[].source existed.
    let json = manifest_json(|m| {
        m["formatVersion"] = "1.0".into();
        for file in m["files"].as_array_mut().unwrap() {
            file.as_object_mut().unwrap().remove("source");
        }
    });
    assert!(!String::from_utf8_lossy(&json).contains("source"));
    let bytes = craft(&[(manifest::MANIFEST_PATH, tar::EntryType::Regular, &json)]);
    let old = read_manifest(&bytes[..], NAME).unwrap();
    assert!(old.files.iter().all(|f| f.source.is_none()));

    let json = manifest_json(|m| {
        m["files"][0]["source"] = "kube-apiserver.yaml: --encryption-provider-config".into();
    });
    let bytes = craft(&[(manifest::MANIFEST_PATH, tar::EntryType::Regular, &json)]);
    let new = read_manifest(&bytes[..], NAME).unwrap();
    assert_eq!(new.format_version, Manifest::format_version());
    assert_eq!(
        new.files[0].source.as_deref(),
        Some("kube-apiserver.yaml: --encryption-provider-config")
    );
}

#[test]
fn refuses_manifests_with_escaping_or_absurd_entries() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "dot-dot",
            Box::new(|m| m["files"][0]["path"] = "etc/../../root/.ssh/authorized_keys".into()),
        ),
        (
            "absolute",
            Box::new(|m| m["files"][0]["path"] = "/etc/passwd".into()),
        ),
        (
            "duplicate",
            Box::new(|m| m["files"][1]["path"] = m["files"][0]["path"].clone()),
        ),
        (
            "setuid",
            Box::new(|m| m["files"][0]["mode"] = 0o4755.into()),
        ),
        (
            "huge file",
            Box::new(|m| m["files"][0]["size"] = (1u64 << 40).into()),
        ),
        (
            "huge snapshot",
            Box::new(|m| m["snapshot"]["size"] = ((1u64 << 50) + 32).into()),
        ),
        (
            "snapshot elsewhere",
            Box::new(|m| m["snapshot"]["path"] = "etc/kubernetes/pki/ca.key".into()),
        ),
    ];
    for (what, edit) in cases {
        let json = manifest_json(|m| edit(m));
        let bytes = craft(&[(manifest::MANIFEST_PATH, tar::EntryType::Regular, &json)]);
        let err = read_manifest(&bytes[..], NAME).unwrap_err();
        assert!(
            matches!(err, Error::ManifestInvalid { .. }),
            "{what}: {err}"
        );
    }
}

#[test]
fn refuses_entries_that_differ_from_the_manifest() {
    let (manifest, files, snap) = sample();
    let json = manifest.to_json();
    let line = manifest.snapshot.blake3_line(&blake3::hash(&snap));
    let good: Vec<(&str, tar::EntryType, &[u8])> = vec![
        (manifest::MANIFEST_PATH, tar::EntryType::Regular, &json),
        (&manifest.files[0].path, tar::EntryType::Regular, &files[0]),
        (&manifest.files[1].path, tar::EntryType::Regular, &files[1]),
        (&manifest.files[2].path, tar::EntryType::Regular, &files[2]),
        (manifest::SNAPSHOT_PATH, tar::EntryType::Regular, &snap),
    ];
    let craft =
        |entries: &[(&str, tar::EntryType, &[u8])]| craft_with_tail(entries, line.as_bytes());
    assert!(read_bundle(&craft(&good)[..], NAME, FrameChecksum::Check, &mut Discard).is_ok());

    let mut symlink = good.clone();
    symlink[1].1 = tar::EntryType::Symlink;
    symlink[1].2 = b"";
    let mut swapped = good.clone();
    swapped.swap(1, 2);
    let mut extra = good.clone();
    extra.push((
        "etc/cron.d/evil",
        tar::EntryType::Regular,
        b"* * * * * root sh",
    ));
    let mut missing = good.clone();
    missing.remove(4);
    let mut digest_as_entry = good.clone();
    digest_as_entry.push(("cpr/snapshot.b3", tar::EntryType::Regular, line.as_bytes()));
    let mut wrong_content = good.clone();
    wrong_content[2].2 = b"-----BEGIN PRIVATE KEY----- (another key)\n";
    let mut not_first = good.clone();
    not_first.swap(0, 1);
    for (what, entries) in [
        ("symlink", symlink),
        ("order", swapped),
        ("entry after snapshot", extra),
        ("no snapshot", missing),
        ("digest as an entry", digest_as_entry),
        ("content", wrong_content),
        ("manifest not first", not_first),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let result = read_bundle(
            &craft(&entries)[..],
            NAME,
            FrameChecksum::Check,
            &mut Extract::new(dir.path()),
        );
        assert!(result.is_err(), "{what} was accepted");
        assert!(
            !dir.path().join("etc/cron.d/evil").exists(),
            "{what}: wrote outside the manifest"
        );
    }
}

#[test]
fn inspect_reads_only_the_manifest() {
    let bytes = bundle_bytes();
    // A reader that fails past the first 64 KiB proves inspect never gets there.
    struct Limited<'a>(&'a [u8], usize);
    impl Read for Limited<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.1 > 64 << 10 {
                return Err(std::io::Error::other("read past the manifest"));
            }
            let n = self.0.read(buf)?;
            self.1 += n;
            Ok(n)
        }
    }
    let big = {
        let (manifest, files, _) = sample();
        let mut db = vec![7u8; 8 << 20];
        let trailer = Sha256::digest(&db);
        db.extend_from_slice(&trailer);
        let manifest = Manifest {
            snapshot: SnapshotEntry::new(db.len() as u64),
            ..manifest
        };
        write_bundle(
            Vec::new(),
            &manifest,
            &files,
            &mut &db[..],
            &options(),
            NAME,
        )
        .unwrap()
        .0
    };
    assert!(read_manifest(Limited(&big, 0), NAME).is_ok());
    assert!(read_manifest(&bytes[..], NAME).is_ok());
}

/// The last cpr that wrote (and read only) format 1.0 and 1.1: what recovery media built before 1.2
/// run.
const CPR_1_1_COMMIT: &str = "80fa0fd";

/// The names the archived 1.1 tree is built under, so that its binary never replaces this tree's
/// target/…/debug/cpr, which other tests run; Cargo.lock's entry of the package is renamed with it so
/// that `--locked` holds. The library keeps the name `cpr`: `main.rs` uses it, and the logger tells
/// cpr's records from its dependencies' by the `cpr::` module path.
const CPR_1_1_RENAMES: [(&str, &str, &str); 4] = [
    (
        "Cargo.toml",
        "[package]\nname = \"cpr\"\n",
        "[package]\nname = \"cpr-1-1\"\n",
    ),
    ("Cargo.toml", "[lib]\n", "[lib]\nname = \"cpr\"\n"),
    (
        "Cargo.toml",
        "[[bin]]\nname = \"cpr\"\n",
        "[[bin]]\nname = \"cpr-1-1\"\n",
    ),
    (
        "Cargo.lock",
        "name = \"cpr\"\nversion = \"0.1.0\"\n",
        "name = \"cpr-1-1\"\nversion = \"0.1.0\"\n",
    ),
];

/// cpr 1.1's binary, built once from git into this tree's own target dir, which scripts/test keeps:
/// later runs take it as it is. Same target dir, profile and rustflags as the test build, and 1.1's
/// Cargo.lock agrees with this one on every crate they share, so a fresh checkout compiles the cpr
/// crate of 1.1 and reuses every dependency the test build compiled.
fn cpr_1_1() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = repo.join("target");
    let bin = target.join("x86_64-unknown-linux-gnu/debug/cpr-1-1");
    if bin.is_file() {
        return bin;
    }
    let has_commit = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["cat-file", "-e", &format!("{CPR_1_1_COMMIT}^{{commit}}")])
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "building cpr 1.1: cannot run git in {}: {e}",
                repo.display()
            )
        });
    assert!(
        has_commit.success(),
        "building cpr 1.1: commit {CPR_1_1_COMMIT} is not in the git history of {} (a shallow clone?); \
         fetch it with `git fetch --unshallow` (or `git fetch origin {CPR_1_1_COMMIT}`) and run the test again",
        repo.display()
    );
    let src = target.join("cpr-1.1/src");
    common::run(Command::new("sh").arg("-c").arg(format!(
        "rm -rf '{src}' && mkdir -p '{src}' && git -C '{repo}' archive {CPR_1_1_COMMIT} | tar -x -C '{src}'",
        src = src.display(),
        repo = repo.display(),
    )));
    for (file, from, to) in CPR_1_1_RENAMES {
        let path = src.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.matches(from).count(),
            1,
            "{from:?} in {}",
            path.display()
        );
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }
    // This checkout's profiles replace 1.1's: a dependency is compiled once for both builds only with
    // the same settings (1.1 predates `[profile.dev.package."*"] debug = false`, and with its own
    // profiles a fresh checkout compiled every dependency a second time: 378 s in a clean-clone run).
    let profiles = |manifest: &str| {
        manifest
            .find("\n[profile.")
            .map(|at| at + 1)
            .expect("a Cargo.toml with [profile.*] sections last")
    };
    let ours = std::fs::read_to_string(repo.join("Cargo.toml")).unwrap();
    let manifest = src.join("Cargo.toml");
    let theirs = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        format!(
            "{}{}",
            &theirs[..profiles(&theirs)],
            &ours[profiles(&ours)..]
        ),
    )
    .unwrap();
    common::run(
        common::cargo()
            .args(["build", "--locked", "--bin", "cpr-1-1", "--target-dir"])
            .arg(&target)
            .arg("--manifest-path")
            .arg(src.join("Cargo.toml"))
            // Run from this checkout, not the archive: cargo would read both .cargo/config.toml and
            // repeat the rustflags, which changes every dependency's hash and rebuilds them all.
            .current_dir(repo)
            // The archive lies inside this checkout: without a ceiling, 1.1's build.rs would stamp it
            // with this checkout's HEAD. Above none, it says what a source tarball's build says.
            .env("GIT_CEILING_DIRECTORIES", src.parent().unwrap()),
    );
    bin
}

/// A 1.2 bundle of a real etcd 3.5: cpr 1.1 verifies it (the BLAKE3 line after the end of the archive
/// is invisible to it), and etcdutl reads the snapshot GNU tar extracts, which b3sum checks.
#[test]
fn cpr_1_1_and_etcdutl_read_a_1_2_backup() {
    let cpr_1_1 = cpr_1_1();
    let node = common::KubeadmNode::start(common::EtcdVersion::V3_5, 20);
    let store = tempfile::tempdir().unwrap();
    common::ok(&common::cpr_backup(node.root(), store.path(), &[]));
    let bundle = common::files_below(store.path())
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .unwrap();
    let bytes = std::fs::read(&bundle).unwrap();
    let manifest = read_manifest(&bytes[..], NAME).unwrap();
    assert_eq!(manifest.format_version, "1.2");
    assert_eq!(
        manifest.snapshot.blake3.as_deref(),
        Some(manifest::SNAPSHOT_BLAKE3_END_OF_ARCHIVE)
    );

    let verify = |cpr: &Path| -> serde_json::Value {
        let out = common::run(Command::new(cpr).args([
            "verify",
            bundle.to_str().unwrap(),
            "--output",
            "json",
        ]));
        serde_json::from_str(&out).unwrap()
    };
    let by_1_1 = verify(&cpr_1_1);
    let by_this = verify(&common::cpr_bin());
    assert_eq!(by_1_1["ok"], true, "{by_1_1}");
    assert_eq!(
        by_1_1["revision"].as_i64(),
        Some(node.revision()),
        "{by_1_1}"
    );
    for field in ["revision", "totalKeys", "hash", "snapshotSize"] {
        assert_eq!(by_1_1[field], by_this[field], "{field}: {by_1_1} {by_this}");
    }

    let dir = tempfile::tempdir().unwrap();
    let checked = common::run(
        Command::new("sh")
            .current_dir(dir.path())
            .arg("-c")
            .arg(format!(
                "set -e; zstd -dc '{b}' | tar x; zstd -dc '{b}' | tail -c 83 | b3sum -c -",
                b = bundle.display()
            )),
    );
    assert_eq!(checked, "etcd/snapshot.db: OK\n");
    let status = common::run(Command::new(common::etcdutl()).args([
        "snapshot",
        "status",
        dir.path().join(manifest::SNAPSHOT_PATH).to_str().unwrap(),
        "-w",
        "json",
    ]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(status["totalKey"].as_i64().unwrap() > 20, "{status}");
}
