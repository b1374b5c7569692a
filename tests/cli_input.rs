//! What the cpr binary does with input an operator can get wrong: arguments that are not UTF-8, a
//! store path with a typo, a config file or key directory that cannot be used. Each is refused with
//! an exit code from the README's table and a message that names the object and says what to do.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Output};

fn cpr(args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cpr"))
        .args(args)
        .env("CPR_LOG", "info")
        .env_remove("CPR_STORE")
        .output()
        .expect("cpr runs")
}

fn cpr_str(args: &[&str]) -> Output {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    cpr(&args)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn an_argument_that_is_not_utf8_is_a_usage_error_not_a_panic() {
    let store = OsStr::from_bytes(b"--store=/srv/b\xffckups");
    let output = cpr(&[OsStr::new("list"), store]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(
        message.contains("argument 2 (--store=/srv/b\u{FFFD}ckups) is not valid UTF-8"),
        "{message}"
    );
    assert!(
        message
            .contains("rename the file or directory, or pass a symlink to it whose name is UTF-8"),
        "{message}"
    );
    assert!(!message.contains("panicked"), "{message}");
}

#[test]
fn listing_a_store_directory_that_does_not_exist_says_so_with_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("bakcups");
    for args in [
        vec!["list", "--store", missing.to_str().unwrap()],
        vec![
            "list",
            "--store",
            missing.to_str().unwrap(),
            "--cluster",
            "prod",
        ],
    ] {
        let output = cpr_str(&args);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(3), "{args:?}: {message}");
        assert!(
            message.contains(&format!(
                "store directory {} does not exist. Check the store path for a typo",
                missing.display()
            )),
            "{message}"
        );
    }
    // An existing, empty store is still an empty list.
    let output = cpr_str(&["list", "--store", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn a_config_file_that_cannot_be_read_says_what_to_do() {
    let output = cpr_str(&[
        "list",
        "--store",
        "/tmp",
        "--config",
        "/nonexistent/cpr.yaml",
    ]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(
        message.contains("reading config file /nonexistent/cpr.yaml: ")
            && message.contains(
                "Check that it exists and is readable (run as root), or name another with --config"
            ),
        "{message}"
    );
}

#[test]
fn keygen_into_a_directory_it_cannot_write_says_what_to_do() {
    // /proc/self exists, so no directory is created, and no key file can be made in it, even by root.
    let output = cpr_str(&["keygen", "--out", "/proc/self"]);
    let message = stderr(&output);
    assert_ne!(output.status.code(), Some(0), "{message}");
    assert!(
        message.contains("writing key file /proc/self/")
            && message.contains("Check that the --out directory is writable and has free space, then run cpr keygen again"),
        "{message}"
    );
}
