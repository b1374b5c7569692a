//! The bundle format on its own: round trips, and every way a damaged or crafted bundle is refused.

use cpr::bundle::manifest::{self, Cluster, Etcd, FileEntry, Manifest, Node, SnapshotEntry};
use cpr::bundle::{
    read_bundle, read_manifest, write_bundle, Discard, Error, Extract, WriteOptions,
};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;

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
    let read = read_bundle(&bytes[..], NAME, &mut Extract::new(dir.path())).unwrap();
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
            "cpr/snapshot.b3"
        ]
    );
    assert!(
        listing.contains("-rw-------"),
        "ca.key keeps mode 0600: {listing}"
    );
    // The check README gives an operator: b3sum (Debian's b3sum) over the extracted snapshot.
    let check = std::process::Command::new("sh")
        .arg("-c")
        .arg("zstd -dc b.tar.zst | tar xf - && b3sum -c cpr/snapshot.b3")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&check.stdout),
        "etcd/snapshot.db: OK\n"
    );
}

/// Writes the sample with `snapshot` in place of its own, as a 1.2 bundle or, with `blake3` None,
/// as a 1.1 bundle (no digest entry; the reader checks etcd's trailer).
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
    assert!(!String::from_utf8_lossy(&content).contains("snapshot.b3"));
    let read = read_bundle(&bytes[..], NAME, &mut Discard).unwrap();
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
    let swapped = bundle_with(&other, Some(manifest::SNAPSHOT_BLAKE3_PATH.into()));
    let original = bundle_with(&good, Some(manifest::SNAPSHOT_BLAKE3_PATH.into()));
    // Swap the digest entry of the original into the bundle holding the other snapshot.
    let entries = |bytes: &[u8]| -> Vec<(String, Vec<u8>)> {
        let tar = zstd::decode_all(bytes).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().display().to_string();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, data)
            })
            .collect()
    };
    let original_digest = entries(&original).pop().unwrap();
    let mut crafted = entries(&swapped);
    *crafted.last_mut().unwrap() = original_digest;
    let listed: Vec<(&str, tar::EntryType, &[u8])> = crafted
        .iter()
        .map(|(p, d)| (p.as_str(), tar::EntryType::Regular, &d[..]))
        .collect();
    let err = read_bundle(&craft(&listed)[..], NAME, &mut Discard).unwrap_err();
    assert!(matches!(err, Error::SnapshotDigest { .. }), "{err}");
    let expected = blake3::hash(&good).to_hex().to_string();
    assert!(err.to_string().contains(&expected), "{err}");
    // Without its digest entry, a 1.2 bundle is incomplete.
    let err = read_bundle(&craft(&listed[..listed.len() - 1])[..], NAME, &mut Discard).unwrap_err();
    assert!(
        err.to_string().contains("cpr/snapshot.b3") && err.to_string().contains("ends before"),
        "{err}"
    );
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
            read_bundle(&bytes[..cut], NAME, &mut Discard).is_err(),
            "a bundle cut at {cut} of {} passed",
            bytes.len()
        );
    }
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
        if read_bundle(&bad[..], NAME, &mut Discard).is_ok() {
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
    zstd::encode_all(&tar.into_inner().unwrap()[..], 3).unwrap()
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
    let digest = manifest.snapshot.blake3_line(&blake3::hash(&snap));
    let good: Vec<(&str, tar::EntryType, &[u8])> = vec![
        (manifest::MANIFEST_PATH, tar::EntryType::Regular, &json),
        (&manifest.files[0].path, tar::EntryType::Regular, &files[0]),
        (&manifest.files[1].path, tar::EntryType::Regular, &files[1]),
        (&manifest.files[2].path, tar::EntryType::Regular, &files[2]),
        (manifest::SNAPSHOT_PATH, tar::EntryType::Regular, &snap),
        (
            manifest::SNAPSHOT_BLAKE3_PATH,
            tar::EntryType::Regular,
            digest.as_bytes(),
        ),
    ];
    assert!(read_bundle(&craft(&good)[..], NAME, &mut Discard).is_ok());

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
    let mut no_digest = good.clone();
    no_digest.remove(5);
    let mut wrong_content = good.clone();
    wrong_content[2].2 = b"-----BEGIN PRIVATE KEY----- (another key)\n";
    let mut not_first = good.clone();
    not_first.swap(0, 1);
    for (what, entries) in [
        ("symlink", symlink),
        ("order", swapped),
        ("entry after snapshot", extra),
        ("no snapshot", missing),
        ("no snapshot digest", no_digest),
        ("content", wrong_content),
        ("manifest not first", not_first),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let result = read_bundle(&craft(&entries)[..], NAME, &mut Extract::new(dir.path()));
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
