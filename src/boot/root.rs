//! Finding the target's root filesystem by label, UUID or device path, from the superblocks
//! themselves (no blkid in the image): ext2/3/4 and XFS, the filesystems kubeadm nodes run on.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::cmdline::RootSpec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    /// The device node under the boot root (`<root>/dev/vda1`).
    pub device: PathBuf,
    /// The type to mount it with.
    pub fstype: &'static str,
    pub label: String,
    pub uuid: String,
}

/// Reads the superblock of `device`; `None` when it holds no filesystem cpr can mount.
pub fn probe(device: &Path) -> Option<Filesystem> {
    let mut head = vec![0u8; 2048];
    let mut file = std::fs::File::open(device).ok()?;
    file.read_exact(&mut head).ok()?;
    let text = |bytes: &[u8]| {
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    };
    let (fstype, label, uuid) = if head[1024 + 0x38..1024 + 0x3a] == [0x53, 0xef] {
        // ext2/3/4: superblock at 1024; s_uuid at 0x68, s_volume_name at 0x78.
        let sb = &head[1024..];
        ("ext4", text(&sb[0x78..0x88]), uuid(&sb[0x68..0x78]))
    } else if &head[0..4] == b"XFSB" {
        // XFS: sb_uuid at 32, sb_fname (12 bytes) at 108.
        ("xfs", text(&head[108..120]), uuid(&head[32..48]))
    } else {
        return None;
    };
    Some(Filesystem {
        device: device.to_path_buf(),
        fstype,
        label,
        uuid,
    })
}

fn uuid(bytes: &[u8]) -> String {
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The filesystem `spec` names, among the block devices the kernel lists in `<root>/sys/class/block`
/// (whole disks and partitions alike), with their nodes in `<root>/dev`.
pub fn find(root: &Path, spec: &RootSpec) -> Option<Filesystem> {
    if let RootSpec::Device(path) = spec {
        return probe(&root.join(path.strip_prefix("/").unwrap_or(path)));
    }
    let mut names: Vec<String> = std::fs::read_dir(root.join("sys/class/block"))
        .ok()?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|name| probe(&root.join("dev").join(name)))
        .find(|fs| match spec {
            RootSpec::Label(label) => fs.label == *label,
            RootSpec::Uuid(uuid) => fs.uuid == *uuid,
            RootSpec::Device(_) => false,
        })
}

/// What the block devices hold, for the message when the root is not found.
pub fn describe(root: &Path) -> String {
    let mut seen: Vec<String> = std::fs::read_dir(root.join("sys/class/block"))
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    match probe(&root.join("dev").join(&name)) {
                        Some(fs) => {
                            format!("{name} ({} LABEL={} UUID={})", fs.fstype, fs.label, fs.uuid)
                        }
                        None => name,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    seen.sort();
    if seen.is_empty() {
        "no block devices at all".to_string()
    } else {
        seen.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A real ext4 image made by mkfs.ext4, listed as a block device of a fake sysfs.
    #[test]
    fn finds_an_ext4_filesystem_by_label_uuid_and_device() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        std::fs::create_dir_all(root.join("sys/class/block/vda")).unwrap();
        std::fs::create_dir_all(root.join("sys/class/block/vdb")).unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev/vda"), vec![0u8; 4096]).unwrap();
        let uuid = "5f1b2c3d-0000-4111-8222-123456789abc";
        let status = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "target", "-U", uuid])
            .arg(root.join("dev/vdb"))
            .arg("4M")
            .status()
            .expect("mkfs.ext4 runs (e2fsprogs)");
        assert!(status.success());

        let found = find(root, &RootSpec::Label("target".into())).unwrap();
        assert_eq!((found.device, found.fstype), (root.join("dev/vdb"), "ext4"));
        assert_eq!(
            find(root, &RootSpec::Uuid(uuid.into())).unwrap().label,
            "target"
        );
        assert!(find(root, &RootSpec::Device("/dev/vdb".into())).is_some());
        assert!(find(root, &RootSpec::Device("/dev/vda".into())).is_none());
        assert!(find(root, &RootSpec::Label("other".into())).is_none());
        let seen = describe(root);
        assert!(
            seen.contains("vda, vdb (ext4 LABEL=target UUID=5f1b2c3d"),
            "{seen}"
        );
    }
}
