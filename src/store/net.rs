//! What the HTTP and S3 stores share: the client (rustls with the ring provider and explicit roots),
//! retries with backoff, the resuming download reader and the streaming upload body.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use reqwest::header::{HeaderValue, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use url::Url;

use super::progress::Progress;
use super::{Error, ObjectInfo, StoreOptions, Upload};
use crate::batch::{self, StreamReader, StreamSender};
use crate::rt;

const MAX_REDIRECTS: usize = 5;
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Error bodies are read for their explanation only; a server cannot make us read more.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// Writes are gathered into chunks this large before they go to the request body.
const BODY_CHUNK: usize = 256 * 1024;
/// Chunks queued between the writer and the request; bounds an upload's memory to a few MiB.
const BODY_QUEUE: usize = 4;

/// How the server explains an error status: S3 puts an XML `<Code>` and `<Message>` in the body.
#[derive(Clone, Copy)]
pub(crate) enum Dialect {
    Http,
    S3,
}

pub(crate) struct Net {
    client: reqwest::Client,
    retries: u32,
    retry_delay: Duration,
    pub progress_interval: Duration,
}

impl Net {
    pub fn new(opts: &StoreOptions) -> Result<Net, Error> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(opts.ca_file.as_deref())?)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.io_timeout)
            .build()
            .map_err(|e| Error::Tls {
                what: "building the HTTP client".into(),
                reason: describe(&e.without_url()),
            })?;
        Ok(Net {
            client,
            retries: opts.retries,
            retry_delay: opts.retry_delay,
            progress_interval: opts.progress_interval,
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends a request and turns an error status into an `Error` (404 into `NotFound`).
    pub async fn send(
        &self,
        dialect: Dialect,
        op: &'static str,
        url: &str,
        request: RequestBuilder,
    ) -> Result<Response, Error> {
        let response = request
            .send()
            .await
            .map_err(|e| request_error(op, url, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = read_capped(response, MAX_ERROR_BODY).await;
        let detail = match dialect {
            Dialect::Http => status.canonical_reason().unwrap_or_default().to_string(),
            Dialect::S3 => s3_error_detail(&body),
        };
        let missing_bucket = detail.starts_with("NoSuchBucket");
        if status == StatusCode::NOT_FOUND && !missing_bucket {
            return Err(Error::NotFound { url: url.into() });
        }
        Err(Error::status(op, url.into(), status.as_u16(), detail))
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries are used up.
    pub async fn retry<T, F, Fut>(&self, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut failures = 0;
        let start = Instant::now();
        loop {
            match attempt().await {
                Err(e) if e.is_transient() && failures < self.retries => {
                    failures += 1;
                    self.pause(&e, failures).await;
                }
                Err(e) if e.is_transient() => {
                    return Err(e.retries_ran_out(failures + 1, start.elapsed()))
                }
                result => return result,
            }
        }
    }

    async fn pause(&self, error: &Error, failures: u32) {
        let delay = self
            .retry_delay
            .saturating_mul(1 << (failures - 1).min(16))
            .min(MAX_BACKOFF);
        log::warn!(
            "{error}; retry {failures} of {} in {:.1}s",
            self.retries,
            delay.as_secs_f64()
        );
        tokio::time::sleep(delay).await;
    }
}

fn request_error(op: &'static str, url: &str, e: reqwest::Error) -> Error {
    let redirect = e.is_redirect();
    let body = e.is_body() || e.is_decode();
    let (url, reason) = (url.to_string(), describe(&e.without_url()));
    if redirect {
        Error::Redirects {
            op,
            url,
            limit: MAX_REDIRECTS,
        }
    } else if body {
        Error::Interrupted { op, url, reason }
    } else {
        Error::Unreachable { op, url, reason }
    }
}

/// An error with its causes, each said once: reqwest and hyper repeat their inner errors.
fn describe(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

async fn read_capped(mut response: Response, cap: usize) -> String {
    let mut body = Vec::new();
    while body.len() < cap {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(cap - body.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// `Code: Message` from an S3 XML error body, if it has them.
fn s3_error_detail(body: &str) -> String {
    let field = |tag: &str| {
        let start = body.find(&format!("<{tag}>"))? + tag.len() + 2;
        let end = body[start..].find(&format!("</{tag}>"))?;
        Some(body[start..start + end].trim().to_string())
    };
    match (field("Code"), field("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => String::new(),
    }
}

/// rustls with the ring provider. Roots: the CA file, else `SSL_CERT_FILE`, else the system bundle if it
/// exists, else none, so plain http works in an initramfs without any CA store.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    let explicit = ca_file
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("SSL_CERT_FILE").map(PathBuf::from));
    match explicit {
        Some(path) => {
            let (added, _) = roots.add_parsable_certificates(read_pem(&path)?);
            if added == 0 {
                return Err(Error::Tls {
                    what: path.display().to_string(),
                    reason: "no usable CA certificate in it".into(),
                });
            }
        }
        None if Path::new(SYSTEM_CA_BUNDLE).exists() => {
            // A broken system bundle must not stop plain http: use what parses.
            if let Ok(certs) = read_pem(Path::new(SYSTEM_CA_BUNDLE)) {
                roots.add_parsable_certificates(certs);
            }
        }
        None => log::debug!("no CA certificates configured: https stores will be refused"),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls {
            what: "TLS protocol versions".into(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn read_pem(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, Error> {
    use rustls::pki_types::pem::{self, PemObject};
    let tls_error = |e: pem::Error| Error::Tls {
        what: path.display().to_string(),
        reason: e.to_string(),
    };
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(tls_error)?
        .collect::<Result<_, _>>()
        .map_err(tls_error)
}

/// The URL as messages show it: no user, password, query (presigned signatures) or fragment.
pub(crate) fn redact(url: &Url) -> String {
    let mut url = url.clone();
    // Fails only for URLs that cannot have credentials in the first place.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// `redact` for text that may not even parse as a URL.
pub(crate) fn redact_str(text: &str) -> String {
    if let Ok(url) = Url::parse(text) {
        return redact(&url);
    }
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://…@{}", &text[..scheme_end], &text[at + 1..])
        }
        _ => text.to_string(),
    }
}

/// A streaming GET that resumes with `Range` after a broken connection, checks that the object did not
/// change in between (`If-Range`, size), and refuses bodies beyond `max_size`. A task on the runtime
/// receives the body and hands it to the reader in batches (`batch::stream`).
pub(crate) struct Download {
    net: Arc<Net>,
    dialect: Dialect,
    url: String,
    request: Box<dyn Fn() -> RequestBuilder + Send + Sync>,
    max_size: Option<u64>,
    response: Option<Response>,
    chunk: Bytes,
    /// Bytes of the object received so far (handed out or waiting in `chunk`).
    received: u64,
    /// Bytes still to drop from a server that ignored `Range` and sent the object from the start.
    skip: u64,
    total: Option<u64>,
    validator: Option<HeaderValue>,
    failures: u32,
    /// When the current run of failures began (reset by progress), for the give-up message.
    failing_since: Option<Instant>,
    done: bool,
    progress: Progress,
}

impl Download {
    /// Sends the first request, so a missing object or a refusal is reported here, not on first read.
    pub fn start(
        net: Arc<Net>,
        dialect: Dialect,
        url: String,
        request: Box<dyn Fn() -> RequestBuilder + Send + Sync>,
        max_size: Option<u64>,
    ) -> Result<StreamReader, Error> {
        let progress = Progress::new("downloading", url.clone(), net.progress_interval);
        let mut download = Download {
            net,
            dialect,
            url,
            request,
            max_size,
            response: None,
            chunk: Bytes::new(),
            received: 0,
            skip: 0,
            total: None,
            validator: None,
            failures: 0,
            failing_since: None,
            done: false,
            progress,
        };
        rt::block_on(download.fill())?;
        let (sender, reader) = batch::stream();
        rt::runtime().spawn(download.forward(sender));
        Ok(reader)
    }

    /// Sends the body on until it ends, fails for good, or the reader is dropped (which drops the
    /// response here and so closes the connection).
    async fn forward(mut self, mut sender: StreamSender) {
        loop {
            if !sender.send(&self.chunk).await {
                return;
            }
            self.chunk.clear();
            if self.done {
                return sender.end(Ok(())).await;
            }
            match sender.unless_abandoned(self.fill()).await {
                Some(Ok(())) => {}
                Some(Err(error)) => return sender.end(Err(error.into_io())).await,
                None => return,
            }
        }
    }

    /// Gets the next chunk into `self.chunk` (or sets `done`), reconnecting as often as allowed.
    async fn fill(&mut self) -> Result<(), Error> {
        loop {
            match self.step().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.response = None;
                    if !e.is_transient() {
                        return Err(e);
                    }
                    let since = *self.failing_since.get_or_insert_with(Instant::now);
                    if self.failures >= self.net.retries {
                        return Err(e.retries_ran_out(self.failures + 1, since.elapsed()));
                    }
                    self.failures += 1;
                    self.net.pause(&e, self.failures).await;
                }
            }
        }
    }

    async fn step(&mut self) -> Result<(), Error> {
        if self.total == Some(self.received) && self.received > 0 {
            self.done = true;
            return Ok(());
        }
        let response = match self.response.as_mut() {
            Some(response) => response,
            None => {
                let response = self.connect().await?;
                self.response.insert(response)
            }
        };
        let chunk = response.chunk().await.map_err(|e| Error::Interrupted {
            op: "reading",
            url: self.url.clone(),
            reason: describe(&e.without_url()),
        })?;
        let Some(mut chunk) = chunk else {
            return self.end_of_body();
        };
        let dropped = self.skip.min(chunk.len() as u64);
        chunk.advance(dropped as usize);
        self.skip -= dropped;
        if chunk.is_empty() {
            return Ok(());
        }
        self.received += chunk.len() as u64;
        if let Some(limit) = self.max_size.filter(|&limit| self.received > limit) {
            return Err(Error::TooLarge {
                url: self.url.clone(),
                limit,
            });
        }
        // Progress resets the count: a long download over a flaky link may break many times.
        self.failures = 0;
        self.failing_since = None;
        self.progress.add(chunk.len() as u64);
        self.chunk = chunk;
        Ok(())
    }

    fn end_of_body(&mut self) -> Result<(), Error> {
        self.response = None;
        match self.total {
            _ if self.skip > 0 => Err(Error::Changed {
                url: self.url.clone(),
            }),
            Some(total) if self.received < total => Err(Error::Interrupted {
                op: "reading",
                url: self.url.clone(),
                reason: format!("connection closed after {} of {total} bytes", self.received),
            }),
            _ => {
                self.done = true;
                Ok(())
            }
        }
    }

    async fn connect(&mut self) -> Result<Response, Error> {
        let mut request = (self.request)();
        let resuming = self.received > 0;
        if resuming {
            request = request.header(RANGE, format!("bytes={}-", self.received));
            if let Some(validator) = &self.validator {
                request = request.header(IF_RANGE, validator.clone());
            }
            log::info!("resuming {} at byte {}", self.url, self.received);
        }
        let response = self
            .net
            .send(self.dialect, "reading", &self.url, request)
            .await?;
        let changed = || Error::Changed {
            url: self.url.clone(),
        };
        let total = match response.status() {
            StatusCode::PARTIAL_CONTENT if resuming => {
                let (start, total) =
                    content_range(&response).ok_or_else(|| Error::Interrupted {
                        op: "reading",
                        url: self.url.clone(),
                        reason: "the server sent a partial answer without a usable Content-Range"
                            .into(),
                    })?;
                if start != self.received || self.total.is_some_and(|t| Some(t) != total) {
                    return Err(changed());
                }
                total
            }
            StatusCode::OK => {
                let validator = validator_of(&response);
                if resuming {
                    if self.validator.is_some() && validator != self.validator {
                        return Err(changed());
                    }
                    log::info!(
                        "{}: the server ignores Range; skipping what was already read",
                        self.url
                    );
                    self.skip = self.received;
                }
                self.validator = validator;
                response.content_length()
            }
            status => {
                return Err(Error::status(
                    "reading",
                    self.url.clone(),
                    status.as_u16(),
                    "unexpected success status".into(),
                ))
            }
        };
        if resuming && total.is_some() && self.total.is_some() && total != self.total {
            return Err(changed());
        }
        if let Some(total) = total {
            if let Some(limit) = self.max_size.filter(|&limit| total > limit) {
                return Err(Error::TooLarge {
                    url: self.url.clone(),
                    limit,
                });
            }
            self.total = Some(total);
            self.progress.set_total(total);
        }
        Ok(response)
    }
}

/// `(first byte, total size if the server knows it)` from `Content-Range: bytes a-b/total`.
fn content_range(response: &Response) -> Option<(u64, Option<u64>)> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

/// A strong ETag, else Last-Modified: what `If-Range` accepts to tell whether the object changed.
fn validator_of(response: &Response) -> Option<HeaderValue> {
    let headers = response.headers();
    headers
        .get(ETAG)
        .filter(|etag| !etag.as_bytes().starts_with(b"W/"))
        .or_else(|| headers.get(LAST_MODIFIED))
        .cloned()
}

/// A request whose body is whatever the synchronous writer writes, sent by a runtime worker while the
/// writer goes on; memory stays at `BODY_QUEUE` chunks. The body ends only at the end marker `commit`
/// sends (`None`): a channel closed without it — the upload dropped — fails the body, so the server
/// never completes a truncated object, however far the connection got meanwhile.
pub(crate) struct StreamingUpload {
    name: String,
    url: String,
    tx: Option<mpsc::Sender<Option<Bytes>>>,
    task: Option<JoinHandle<Result<(), Error>>>,
    buf: BytesMut,
    written: u64,
    progress: Progress,
}

impl StreamingUpload {
    pub fn start(
        net: Arc<Net>,
        dialect: Dialect,
        name: &str,
        url: String,
        request: RequestBuilder,
    ) -> StreamingUpload {
        let (tx, rx) = mpsc::channel(BODY_QUEUE);
        let body = futures_util::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(Some(chunk)) => Some((Ok(chunk), Some(rx))),
                Some(None) => None,
                None => Some((
                    Err(io::Error::other("the upload was dropped before its end")),
                    None,
                )),
            }
        });
        let progress = Progress::new("uploading", url.clone(), net.progress_interval);
        let request = request.body(reqwest::Body::wrap_stream(body));
        let task_url = url.clone();
        let task = rt::runtime().spawn(async move {
            net.send(dialect, "writing", &task_url, request).await?;
            Ok(())
        });
        StreamingUpload {
            name: name.to_string(),
            url,
            tx: Some(tx),
            task: Some(task),
            buf: BytesMut::with_capacity(BODY_CHUNK),
            written: 0,
            progress,
        }
    }

    fn send_buffered(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.blocking_send(Some(chunk)).is_ok());
        if sent {
            Ok(())
        } else {
            // The request ended before its body did; its result says why.
            self.tx = None;
            self.finish().and(Err(Error::Interrupted {
                op: "writing",
                url: self.url.clone(),
                reason: "the server closed the upload early".into(),
            }))
        }
    }

    fn finish(&mut self) -> Result<(), Error> {
        let Some(task) = self.task.take() else {
            return Err(Error::Interrupted {
                op: "writing",
                url: self.url.clone(),
                reason: "the upload already failed".into(),
            });
        };
        rt::block_on(task).unwrap_or_else(|e| {
            Err(Error::Interrupted {
                op: "writing",
                url: self.url.clone(),
                reason: e.to_string(),
            })
        })
    }
}

impl Write for StreamingUpload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.written += data.len() as u64;
        self.progress.add(data.len() as u64);
        if self.buf.len() >= BODY_CHUNK {
            self.send_buffered().map_err(Error::into_io)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered().map_err(Error::into_io)
    }
}

impl Upload for StreamingUpload {
    fn commit(mut self: Box<Self>) -> Result<ObjectInfo, Error> {
        self.send_buffered()?;
        // The end marker ends the body; only now may the server complete the object. Should the
        // request have ended already, its result says why.
        if let Some(tx) = self.tx.take() {
            let _ = tx.blocking_send(None);
        }
        self.finish()?;
        Ok(uploaded(std::mem::take(&mut self.name), self.written))
    }
}

impl Drop for StreamingUpload {
    fn drop(&mut self) {
        // Without the end marker the body fails rather than ends; cancelling first also frees the
        // connection at once.
        cancel(self.task.take());
    }
}

/// What `Upload::commit` reports for an object a server just stored.
pub(crate) fn uploaded(name: String, size: u64) -> ObjectInfo {
    ObjectInfo {
        name,
        size,
        modified: Some(SystemTime::now()),
    }
}

/// Cancels a request running on the runtime and waits until it is dropped, connection included.
pub(crate) fn cancel<T>(task: Option<JoinHandle<T>>) {
    if let Some(task) = task {
        task.abort();
        let _ = rt::block_on(task);
    }
}
