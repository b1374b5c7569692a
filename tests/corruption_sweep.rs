//! The corruption sweep: 1,000 random single-byte flips and 100 random truncations (seeded, so every
//! run tries the same ones) of a real bundle from a real etcd, each restored into a fresh root. Every
//! one must be refused, and the root must be exactly as it was.
//!
//! A flip can land where the bundle's own checks cannot see it: a zstd frame-header bit (the window
//! size, the content-size flag) may leave every decoded byte the same. Two things close that gap,
//! and the sweep runs once for each: the BLAKE3 digest of the stored object that `cpr backup` records
//! in the store's index (plain bundles; an older cpr's index records sha256, which is checked too),
//! and the minisign signature over the stored bytes (encrypted and signed bundles, where age's
//! per-chunk authentication also refuses any changed ciphertext). Random flips rarely hit the frame
//! header, so every bit of it is also flipped on purpose, and the ones the format cannot see must be
//! refused by the index's digest.

mod common;

use common::*;
use cpr::bundle::{read_bundle, Discard, FrameChecksum};
use cpr::node::identity::Machine;
use cpr::ops::restore::{restore, RestoreRequest};
use cpr::store::{self, StoreOptions};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

const FLIPS: usize = 1000;
const TRUNCATIONS: usize = 100;

/// xorshift64*: deterministic, so a failure names a flip that the next run tries again.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Why a damaged bundle was refused, reduced to the first check that caught it.
fn category(error: &str) -> &'static str {
    [
        ("index recorded", "stored object's digest (index)"),
        ("signature refused", "minisign signature"),
        ("decryption failed", "age authentication"),
        ("has sha256", "file digest"),
        ("trailer", "snapshot sha256 trailer"),
        ("bbolt", "bbolt structure"),
        ("reading the archive failed", "zstd/tar stream"),
        ("manifest", "manifest checks"),
        ("entry", "tar entry checks"),
    ]
    .iter()
    .find(|(needle, _)| error.contains(needle))
    .map_or("other", |(_, what)| what)
}

struct Sweep<'a> {
    store_dir: &'a Path,
    name: &'a str,
    identity: Option<PathBuf>,
    verify_key: Option<PathBuf>,
}

impl Sweep<'_> {
    /// Restores the damaged `bytes` as the bundle; Err(reason) when refused, as it must be.
    fn attempt(&self, bytes: &[u8], root: &Path) -> Result<(), String> {
        let object = self.store_dir.join(self.name);
        fs::write(&object, bytes).unwrap();
        let store =
            store::open(self.store_dir.to_str().unwrap(), &StoreOptions::default()).unwrap();
        let result = restore(&RestoreRequest {
            root: root.to_path_buf(),
            store: store.as_ref(),
            bundle: Some(self.name.to_string()),
            cluster: None,
            node: Some(NODE_NAME.to_string()),
            machine: Machine {
                hostname: NODE_NAME.to_string(),
                ips: vec![NODE_IP.parse().unwrap()],
            },
            force_identity: true,
            new_address: false,
            bump_revision: Some(1_000_000_000),
            identity: self.identity.clone(),
            verify_key: self.verify_key.clone(),
            members: cpr::ops::restore::Members::Cluster {
                quorum_probe: cpr::ops::ha::DEFAULT_PROBE,
                discard_survivors: false,
            },
            plan_only: false,
        });
        result.map(drop).map_err(|e| e.to_string())
    }

    fn run(&self, label: &str) {
        let original = fs::read(self.store_dir.join(self.name)).unwrap();
        let root = provisioned_root();
        let before = tree_with_modes(root.path());

        // The undamaged bundle restores (into a root of its own): the sweep tests detection, not luck.
        let good = provisioned_root();
        self.attempt(&original, good.path())
            .unwrap_or_else(|e| panic!("{label}: the undamaged bundle was refused: {e}"));

        let mut rng = Rng(0x00C0_FFEE_5EED_0001);
        let mut caught: BTreeMap<&str, usize> = BTreeMap::new();
        let mut missed = Vec::new();
        let mut damaged = Vec::with_capacity(FLIPS + TRUNCATIONS);
        for _ in 0..FLIPS {
            let mut bytes = original.clone();
            let at = rng.below(bytes.len());
            bytes[at] ^= 1 + rng.below(255) as u8;
            damaged.push((format!("flip at {at}"), bytes));
        }
        for _ in 0..TRUNCATIONS {
            let len = rng.below(original.len());
            damaged.push((format!("truncated to {len}"), original[..len].to_vec()));
        }
        // Damage the bundle format's own checks let through (frame-header bits): only the stored
        // object's digest or signature sees it.
        let mut format_blind = 0;
        for (what, bytes) in damaged {
            if self.identity.is_none()
                && read_bundle(&bytes[..], self.name, FrameChecksum::Check, &mut Discard).is_ok()
            {
                format_blind += 1;
            }
            match self.attempt(&bytes, root.path()) {
                Ok(()) => missed.push(what.clone()),
                Err(error) => *caught.entry(category(&error)).or_default() += 1,
            }
            let mut after = tree_with_modes(root.path());
            after.retain(|(p, _, _)| p != Path::new("var/lib/cpr"));
            assert_eq!(after, before, "{label}: {what} changed the root");
        }
        let total: usize = caught.values().sum();
        eprintln!(
            "{label}: {FLIPS} flips + {TRUNCATIONS} truncations of a {}-byte bundle: {total} detected, {} missed ({format_blind} of them pass the bundle format's own checks); first caught by {caught:?}",
            original.len(),
            missed.len()
        );
        assert!(missed.is_empty(), "{label}: undetected: {missed:?}");
        assert_eq!(total, FLIPS + TRUNCATIONS);
        fs::write(self.store_dir.join(self.name), &original).unwrap();
    }

    /// Flips every bit of the stored bundle's bytes `at`, one at a time, and hands each damaged copy
    /// with its position to `check`, which may restore it into `root`; then puts the bundle back and
    /// asserts that `root` is as it was.
    fn each_bit_of(&self, at: std::ops::Range<usize>, mut check: impl FnMut(&[u8], &str, &Path)) {
        let original = fs::read(self.store_dir.join(self.name)).unwrap();
        let root = provisioned_root();
        let before = tree_with_modes(root.path());
        for at in at {
            for bit in 0..8 {
                let mut bytes = original.clone();
                bytes[at] ^= 1 << bit;
                check(&bytes, &format!("byte {at} bit {bit}"), root.path());
            }
        }
        fs::write(self.store_dir.join(self.name), &original).unwrap();
        let mut after = tree_with_modes(root.path());
        after.retain(|(p, _, _)| p != Path::new("var/lib/cpr"));
        assert_eq!(after, before);
    }

    /// Every bit of the zstd frame header, flipped: the ones the bundle format cannot see (the
    /// decoded content is unchanged) must still be refused, by the index's digest, named in the
    /// error as `digest` ("BLAKE3 digest" as cpr records it, "sha256" in an older cpr's index).
    fn frame_header_bits(&self, digest: &str) {
        let mut blind = 0;
        self.each_bit_of(0..16, |bytes, flip, root| {
            if read_bundle(bytes, self.name, FrameChecksum::Check, &mut Discard).is_err() {
                return;
            }
            blind += 1;
            let error = self
                .attempt(bytes, root)
                .expect_err("a frame-header flip was restored");
            assert!(
                error.contains("index recorded")
                    && error.contains(&format!("the stored object has {digest} ")),
                "{flip}: {error}"
            );
        });
        eprintln!("{blind} frame-header bit flips leave the content unchanged; the index's {digest} refused each");
        assert!(
            blind > 0,
            "expected some invisible header bits to exercise the index check"
        );
    }

    /// Every bit of the zstd frame checksum, flipped. A restore with the index's digest to check
    /// tells zstd not to check its own (`FrameChecksum::CoveredByObjectDigest`), so the digest is
    /// what refuses each flip, and the root stays as it was.
    fn frame_checksum_bits(&self) {
        let len = fs::metadata(self.store_dir.join(self.name)).unwrap().len() as usize;
        self.each_bit_of(len - 4..len, |bytes, flip, root| {
            let error = read_bundle(bytes, self.name, FrameChecksum::Check, &mut Discard)
                .expect_err("zstd let a flipped checksum through");
            assert!(error.to_string().contains("checksum"), "{flip}: {error}");
            read_bundle(
                bytes,
                self.name,
                FrameChecksum::CoveredByObjectDigest,
                &mut Discard,
            )
            .unwrap_or_else(|e| panic!("{flip}: zstd checked: {e}"));
            let error = self
                .attempt(bytes, root)
                .expect_err("a flipped frame checksum was restored");
            assert!(error.contains("index recorded"), "{flip}: {error}");
        });
    }
}

#[test]
fn every_flip_and_truncation_is_detected_before_the_root_changes() {
    let mut node = KubeadmNode::start(EtcdVersion::V3_5, 20);
    let store = tempfile::tempdir().unwrap();
    let store_url = store.path().to_str().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = |name: &str| keys.path().join("k").join(name);
    ok(&cpr(&[
        "keygen",
        "--out",
        keys.path().join("k").to_str().unwrap(),
    ]));
    let recipient = fs::read_to_string(key("age.pub")).unwrap();
    let backup = |extra: &[&str]| {
        let mut args = vec![
            "backup",
            "--root",
            node.root().to_str().unwrap(),
            "--store",
            store_url,
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        let report: serde_json::Value = serde_json::from_str(&ok(&cpr(&args))).unwrap();
        report["bundle"].as_str().unwrap().to_string()
    };
    let plain = backup(&[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let sealed = backup(&[
        "--encrypt-to",
        recipient.trim(),
        "--sign-key",
        key("minisign.key").to_str().unwrap(),
    ]);
    node.stop_etcd();

    Sweep {
        store_dir: store.path(),
        name: &plain,
        identity: None,
        verify_key: None,
    }
    .run("plain bundle, index BLAKE3 digest");
    let sweep = Sweep {
        store_dir: store.path(),
        name: &plain,
        identity: None,
        verify_key: None,
    };
    let index = store
        .path()
        .join(format!("{CLUSTER}/{NODE_NAME}/index.json"));
    let mut written: serde_json::Value =
        serde_json::from_slice(&fs::read(&index).unwrap()).unwrap();
    let entry = &mut written["bundles"][0];
    assert_eq!(entry["name"], plain.as_str());
    let object = fs::read(store.path().join(&plain)).unwrap();
    assert_eq!(entry["blake3"], blake3::hash(&object).to_hex().as_str());
    assert!(entry.get("sha256").is_none(), "{entry}");
    sweep.frame_header_bits("BLAKE3 digest");
    sweep.frame_checksum_bits();
    // The index as a cpr before BLAKE3 wrote it: its sha256 is still checked.
    let entry = entry.as_object_mut().unwrap();
    entry.remove("blake3");
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&object));
    entry.insert("sha256".into(), sha256.into());
    fs::write(&index, serde_json::to_vec_pretty(&written).unwrap()).unwrap();
    sweep.frame_header_bits("sha256");
    Sweep {
        store_dir: store.path(),
        name: &sealed,
        identity: Some(key("age.key")),
        verify_key: Some(key("minisign.pub")),
    }
    .run("encrypted and signed bundle");
}
