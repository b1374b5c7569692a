//! Helpers shared by the store tests: loopback servers started as child processes, tool checks, data.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::io::{Read, Write};

use cpr::store::index::IndexEntry;
use cpr::store::{self, Error, S3Credentials, Store, StoreOptions};
use std::fs;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Fails (never skips) when a tool the test needs is missing, naming the package that provides it.
pub fn require(tool: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|dir| dir.join(tool))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| panic!("`{tool}` is missing: install {package} (scripts/test does)"))
}

/// Fails when a Python module is missing, naming the pip package.
pub fn require_python_module(module: &str, package: &str) {
    require("python3", "the apt package python3");
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "Python module `{module}` is missing: pip install {package} (scripts/test does)"
    );
}

/// A loopback port nobody listens on at the moment of the call.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a loopback port")
}

/// A child process killed (by its own id) and reaped when the test ends, pass or fail.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    /// Starts `command` (which must listen on 127.0.0.1:`port`) and waits until the port accepts.
    pub fn start(mut command: Command, port: u16) -> Server {
        let what = format!("{command:?}");
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let mut server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("{what} exited with {status} before listening on {addr}");
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not listen on {addr} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Options for tests: short timeouts and retry pauses, so failure paths stay fast.
pub fn fast_options() -> StoreOptions {
    StoreOptions {
        connect_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(20),
        retries: 3,
        retry_delay: Duration::from_millis(50),
        progress_interval: Duration::from_millis(20),
        ..StoreOptions::default()
    }
}

/// Deterministic, incompressible-looking bytes (xorshift), different for each seed.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Logs from the library (progress lines, retries) go to the test's output.
pub fn init_logging() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            if record.target().starts_with("cpr") {
                eprintln!("[{}] {}", record.level(), record.args());
            }
        }
        fn flush(&self) {}
    }
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Writes `body` in pieces, as a streaming producer would, and commits.
pub fn put(store: &dyn Store, name: &str, body: &[u8]) {
    let mut upload = store.create(name).unwrap();
    for piece in body.chunks(70_000) {
        upload.write_all(piece).unwrap();
    }
    assert_eq!(upload.commit().unwrap().size, body.len() as u64);
}

/// The whole object, or the store error that stopped the read.
pub fn get(store: &dyn Store, name: &str) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    store
        .open(name)?
        .read_to_end(&mut out)
        .map_err(|e| Error::from_io("reading", name, e))?;
    Ok(out)
}

pub fn entry(name: &str, size: u64, revision: u64) -> IndexEntry {
    IndexEntry {
        name: name.into(),
        size,
        created: time::OffsetDateTime::UNIX_EPOCH,
        node: "n".into(),
        revision: Some(revision),
        encrypted: false,
        signed: false,
        sha256: None,
        blake3: None,
        renamed_from: None,
        etcd_members: Vec::new(),
        extra: Default::default(),
    }
}

/// The names `list(prefix)` returns, sorted.
pub fn names(store: &dyn Store, prefix: &str) -> Vec<String> {
    let mut names: Vec<_> = store
        .list(prefix)
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    names.sort();
    names
}

pub const BUCKET: &str = "cpr-test";
pub const SECRET: &str = "s3cr3t-that-must-never-be-printed";

/// `tests/fixtures/store-flaky-server.py` in `mode`, serving `body`; returns the server and its request log.
pub fn flaky(dir: &Path, mode: &str, body: &[u8]) -> (Server, PathBuf) {
    require("python3", "the apt package python3");
    let (file, log) = (
        dir.join(format!("{mode}.bin")),
        dir.join(format!("{mode}.log")),
    );
    fs::write(&file, body).unwrap();
    let port = free_port();
    let mut command = Command::new("python3");
    command
        .arg(fixture("store-flaky-server.py"))
        .arg(port.to_string())
        .args([&file, Path::new(mode), &log]);
    (Server::start(command, port), log)
}

pub struct Nginx {
    pub _server: Server,
    pub www: PathBuf,
    pub port: u16,
    /// The TLS listener's port, with `ca.pem` beside the config.
    pub tls_port: u16,
}

/// nginx in single-process mode (so it never switches user) serving `<dir>/www` with PUT and DELETE,
/// plus a redirect loop at `/loop/`, on plain and TLS loopback ports.
pub fn nginx(dir: &Path) -> Nginx {
    let nginx = require("nginx", "the apt package nginx-light (or nginx)");
    let www = dir.join("www");
    fs::create_dir_all(&www).unwrap();
    let (port, tls_port) = (free_port(), free_port());
    let (cert, key) = tls_files(dir);
    let d = dir.display();
    let config = format!(
        "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {cert}; ssl_certificate_key {key};
        root {www};
        location / {{ dav_methods PUT DELETE; create_full_put_path on; dav_access user:rw; }}
        location /loop/ {{ return 302 /loop/; }}
    }}
}}
",
        cert = cert.display(),
        key = key.display(),
        www = www.display(),
    );
    fs::write(dir.join("nginx.conf"), config).unwrap();
    let mut command = Command::new(nginx);
    command
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(dir);
    let server = Server::start(command, port);
    Nginx {
        _server: server,
        www,
        port,
        tls_port,
    }
}

/// A CA (`<dir>/ca.pem`) and a server certificate for 127.0.0.1 signed by it.
pub fn tls_files(dir: &Path) -> (PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    (dir.join("server.pem"), dir.join("server.key"))
}

pub struct Moto {
    pub _server: Server,
    pub endpoint: String,
}

pub fn moto() -> Moto {
    let moto = require("moto_server", "the pip package moto[server]");
    require_python_module("boto3", "boto3");
    let port = free_port();
    let mut command = Command::new(moto);
    command
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let moto = Moto {
        _server: Server::start(command, port),
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    moto.check(&["mkbucket"]);
    moto
}

impl Moto {
    /// Runs the boto3 helper; its output, trimmed.
    pub fn check(&self, args: &[&str]) -> String {
        let out = Command::new("python3")
            .arg(fixture("store-s3-check.py"))
            .args([&self.endpoint, BUCKET])
            .args(args)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_S3")
            .env("AWS_ACCESS_KEY_ID", "test-key")
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .output()
            .expect("running python3");
        assert!(
            out.status.success(),
            "store-s3-check.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            s3_endpoint: Some(self.endpoint.clone()),
            s3_region: Some("us-east-1".into()),
            s3_credentials: Some(S3Credentials {
                access_key_id: "test-key".into(),
                secret_access_key: SECRET.into(),
                session_token: None,
            }),
            ..fast_options()
        }
    }

    pub fn store(&self, prefix: &str) -> Box<dyn Store> {
        store::open(&format!("s3://{BUCKET}/{prefix}"), &self.options()).unwrap()
    }
}

/// A read-only loopback HTTP server for `dir` (python's http.server, HTTP/1.0): a PXE host or a web
/// server that only serves files, with no PUT and no listing cpr could use.
pub fn read_only_server(dir: &Path) -> Server {
    let port = free_port();
    let mut command = Command::new("python3");
    command
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
            "--directory",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Server::start(command, port)
}
