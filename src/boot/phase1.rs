//! The recovery proper, seen from the boot: phase 1 of the restore into the mounted target, then
//! phase 2 (`cpr finish`) installed into the target so its normal OS runs it once.
//!
//! Until `ops::restore` lands, `phase1` fetches the bundle over plain HTTP, checks that it belongs to
//! this machine and verifies it while extracting it to the target's staging directory. Swapping in the
//! real restore changes this function's body only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Error;
use crate::bundle::{self, Extract, Manifest};

/// Where phase 1 leaves the verified bundle contents inside the target.
pub const STAGING: &str = "var/lib/cpr/staging";
pub const FINISH_UNIT: &str = "cpr-finish.service";
/// The unit as shipped in `image/systemd`, so the image and phase 1 install the same file.
const FINISH_UNIT_TEXT: &str = include_str!("../../image/systemd/cpr-finish.service");
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Phase1<'a> {
    /// The target's root filesystem, mounted read-write.
    pub sysroot: &'a Path,
    pub store: &'a str,
    /// None: the newest bundle of this node.
    pub bundle: Option<&'a str>,
    pub hostname: String,
    pub ips: Vec<IpAddr>,
}

/// Phase 1 of the restore into `request.sysroot`; returns a one-line summary for the console.
pub fn phase1(request: &Phase1<'_>) -> Result<String, Error> {
    let name = request.bundle.ok_or_else(|| Error::Cmdline {
        key: "cpr.bundle".to_string(),
        value: String::new(),
        why: "this build restores a named bundle only; name it (see `cpr list`)".to_string(),
    })?;
    let url = format!("{}/{name}", request.store.trim_end_matches('/'));
    // The manifest alone first: nothing is written to the target before the bundle is known to be
    // this machine's.
    let manifest = bundle::read_manifest(http_get(&url)?, name)?;
    check_identity(&manifest, name, &request.hostname, &request.ips)?;
    let staging = request.sysroot.join(STAGING);
    let staging_err = |source| Error::Target {
        path: staging.clone(),
        step: "preparing the staging directory",
        source,
    };
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(staging_err)?;
    }
    // A failed recovery leaves the disk as it found it, so note which directories are new.
    let created: Vec<PathBuf> = staging
        .ancestors()
        .take_while(|dir| !dir.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(&staging).map_err(staging_err)?;
    let mut sink = Extract::new(&staging);
    let extracted = http_get(&url)
        .and_then(|input| bundle::read_bundle(input, name, &mut sink).map_err(Error::from));
    if let Err(error) = extracted {
        let _ = std::fs::remove_dir_all(&staging);
        for dir in &created {
            let _ = std::fs::remove_dir(dir);
        }
        return Err(error);
    }
    Ok(format!(
        "bundle {name} ({} files, etcd revision {}) verified into /{STAGING}",
        manifest.files.len(),
        manifest.etcd.revision
    ))
}

/// The bundle must be this machine's: one of its addresses is the node's, or the restored
/// certificates and etcd member would claim an address the machine does not have.
fn check_identity(
    manifest: &Manifest,
    bundle: &str,
    hostname: &str,
    ips: &[IpAddr],
) -> Result<(), Error> {
    let node = &manifest.node;
    let wanted: Vec<&String> = node.advertise_address.iter().chain(&node.ips).collect();
    let mine = |wanted: &&String| wanted.parse::<IpAddr>().is_ok_and(|ip| ips.contains(&ip));
    if wanted.is_empty() || wanted.iter().any(mine) {
        return Ok(());
    }
    Err(Error::Identity {
        bundle: bundle.to_string(),
        node: node.name.clone(),
        hostname: hostname.to_string(),
        wanted: wanted
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        have: ips
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// GET over HTTP/1.0, so the body is simply the rest of the connection.
fn http_get(url: &str) -> Result<Box<dyn Read + Send>, Error> {
    let fetch_err = |why: String| Error::Fetch {
        url: url.to_string(),
        why,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| fetch_err("only http:// stores are supported by this build".into()))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let with_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let address = with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| fetch_err(format!("cannot resolve {authority}")))?;
    let mut stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)
        .map_err(|e| fetch_err(format!("connecting to {address}: {e}")))?;
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .and_then(|()| {
            write!(
                stream,
                "GET /{path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: cpr\r\n\r\n"
            )
        })
        .map_err(|e| fetch_err(format!("sending the request: {e}")))?;
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .map_err(|e| fetch_err(format!("reading the response: {e}")))?;
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(fetch_err(format!(
            "the server answered {:?}",
            status.trim()
        )));
    }
    loop {
        let mut header = String::new();
        let read = reader
            .read_line(&mut header)
            .map_err(|e| fetch_err(format!("reading the response headers: {e}")))?;
        if read == 0 || header.trim().is_empty() {
            break;
        }
    }
    Ok(Box::new(reader))
}

/// Installs phase 2 into the target: this very binary as `/usr/local/sbin/cpr` and
/// `cpr-finish.service`, enabled for multi-user.target.
pub fn install_phase2(sysroot: &Path, exe: &Path) -> Result<(), Error> {
    let target = |relative: &str| sysroot.join(relative);
    let fail =
        |path: PathBuf, step: &'static str| move |source| Error::Target { path, step, source };
    let binary = target("usr/local/sbin/cpr");
    let partial = target("usr/local/sbin/.cpr.new");
    std::fs::create_dir_all(target("usr/local/sbin"))
        .and_then(|()| std::fs::copy(exe, &partial))
        .and_then(|_| {
            std::fs::set_permissions(
                &partial,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
        })
        .and_then(|()| std::fs::File::open(&partial)?.sync_all())
        .and_then(|()| std::fs::rename(&partial, &binary))
        .map_err(fail(binary.clone(), "installing cpr for phase 2"))?;
    let unit = target("etc/systemd/system").join(FINISH_UNIT);
    let wants = target("etc/systemd/system/multi-user.target.wants");
    let link = wants.join(FINISH_UNIT);
    std::fs::create_dir_all(&wants)
        .and_then(|()| std::fs::write(&unit, FINISH_UNIT_TEXT))
        .and_then(|()| match std::fs::remove_file(&link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::os::unix::fs::symlink(
                Path::new("/etc/systemd/system").join(FINISH_UNIT),
                &link,
            ),
        })
        .map_err(fail(unit.clone(), "enabling cpr-finish.service"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_the_binary_and_enables_the_finish_unit_twice_over() {
        let sysroot = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        for _ in 0..2 {
            install_phase2(sysroot.path(), &exe).unwrap();
        }
        let binary = sysroot.path().join("usr/local/sbin/cpr");
        assert_eq!(
            std::fs::read(&binary).unwrap(),
            std::fs::read(&exe).unwrap()
        );
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&binary.metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o755);
        let link = sysroot
            .path()
            .join("etc/systemd/system/multi-user.target.wants/cpr-finish.service");
        assert_eq!(
            std::fs::read_link(link).unwrap(),
            Path::new("/etc/systemd/system/cpr-finish.service")
        );
        let unit =
            std::fs::read_to_string(sysroot.path().join("etc/systemd/system/cpr-finish.service"))
                .unwrap();
        assert!(
            unit.contains("ExecStart=/usr/local/sbin/cpr finish"),
            "{unit}"
        );
    }

    #[test]
    fn refuses_a_bundle_of_another_node() {
        let manifest: Manifest = serde_json::from_value(serde_json::json!({
            "formatVersion": "1.0", "cprVersion": "0", "createdAt": "2026-01-01T00:00:00Z",
            "cluster": {"name": "prod"},
            "node": {"name": "master0", "hostname": "master0", "ips": ["10.0.2.15"], "advertiseAddress": "10.0.2.15"},
            "etcd": {"version": "3.5.1", "memberName": "master0", "memberId": "1", "clusterId": "2",
                     "peerUrls": [], "clientUrls": [], "members": [], "revision": 1, "dbSize": 0},
            "files": [], "snapshot": {"path": "etcd/snapshot.db", "size": 0}
        }))
        .unwrap();
        let here: Vec<IpAddr> = vec!["10.0.2.15".parse().unwrap()];
        check_identity(&manifest, "b", "m", &here).unwrap();
        let elsewhere: Vec<IpAddr> = vec!["10.0.2.16".parse().unwrap()];
        let message = check_identity(&manifest, "b", "m", &elsewhere)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("master0")
                && message.contains("10.0.2.15")
                && message.contains("10.0.2.16"),
            "{message}"
        );
    }
}
