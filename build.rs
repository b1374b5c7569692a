//! Stamps the build for `cpr version`: the git commit and the build date, which the release binary,
//! the .deb and the OCI image all report. The date is SOURCE_DATE_EPOCH or the commit's time, never
//! the wall clock, so two builds of one commit are byte-identical (packaging/build-oci relies on it).

use std::path::Path;
use std::process::Command;

/// git's answer, or why there is none (no git, not a checkout, an unreadable .git).
fn git(args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !text.is_empty() {
        Ok(text)
    } else {
        Err(String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', " "))
    }
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's civil_from_days, which a build
/// script needs because it cannot use the crate's own `time` dependency.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn rfc3339(epoch: i64) -> String {
    let (year, month, day) = civil_from_days(epoch.div_euclid(86_400));
    let secs = epoch.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Every .proto file below `dir`, relative to it, sorted (the descriptor set is then reproducible).
fn protos(dir: &Path, below: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir.join(below))
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.join(below).display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let relative = below.join(path.file_name().expect("a file name"));
        if path.is_dir() {
            protos(dir, &relative, out);
        } else if relative.extension().is_some_and(|e| e == "proto") {
            out.push(relative.to_string_lossy().into_owned());
        }
    }
}

/// Compiles Kubernetes' published .proto files (src/k8s/proto, see its SOURCE) into a descriptor
/// set that `cpr get` decodes stored objects with; protoc is already a build dependency (etcd-client).
fn k8s_descriptors() {
    let dir = Path::new("src/k8s/proto");
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut files = Vec::new();
    protos(dir, Path::new(""), &mut files);
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("k8s.pb");
    let protoc = std::env::var("PROTOC").unwrap_or_else(|_| "protoc".to_string());
    let status = Command::new(&protoc)
        .arg("-I")
        .arg(dir)
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .args(&files)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {protoc} (Debian: protobuf-compiler): {e}"));
    assert!(
        status.success(),
        "{protoc} failed on src/k8s/proto ({status}); run it by hand for the message"
    );
}

fn main() {
    k8s_descriptors();
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // A new commit (HEAD moving, or the branch it names moving, loose or packed) re-stamps the build.
    for path in ["HEAD", "packed-refs"]
        .into_iter()
        .map(String::from)
        .chain(git(&["symbolic-ref", "-q", "HEAD"]).ok())
    {
        if let Ok(file) = git(&["rev-parse", "--git-path", &path]) {
            if Path::new(&file).exists() {
                println!("cargo:rerun-if-changed={file}");
            }
        }
    }
    // Outside a git checkout (a source tarball) the commit is unknown and the date comes from
    // SOURCE_DATE_EPOCH alone, as Debian's and most distributions' builders set it.
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|why| {
        println!("cargo:warning=no git commit for cpr version ({why}): it will say unknown");
        "unknown".to_string()
    });
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| git(&["log", "-1", "--format=%ct", "HEAD"]).ok())
        .map(|value| {
            value
                .trim()
                .parse::<i64>()
                .unwrap_or_else(|_| panic!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds since 1970; unset it or give one"))
        });
    println!("cargo:rustc-env=CPR_GIT_COMMIT={commit}");
    println!(
        "cargo:rustc-env=CPR_BUILD_DATE={}",
        epoch.map_or_else(|| "unknown".to_string(), rfc3339)
    );
    println!(
        "cargo:rustc-env=CPR_TARGET={}",
        std::env::var("TARGET").expect("cargo sets TARGET for build scripts")
    );
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(key, _)| {
            key.strip_prefix("CARGO_FEATURE_")
                .map(|name| name.to_lowercase().replace('_', "-"))
        })
        .collect();
    features.sort();
    println!("cargo:rustc-env=CPR_FEATURES={}", features.join(","));
}
