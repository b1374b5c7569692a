//! A store in an S3 bucket (AWS or compatible): requests presigned with SigV4 by rusty-s3, sent by
//! reqwest. Objects up to one part go up in a single PUT; larger ones as a multipart upload of 8 MiB
//! parts, one in flight while the next fills, so memory stays at two parts whatever the size.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::header::ETAG;
use rusty_s3::actions::{
    AbortMultipartUpload, CompleteMultipartUpload, CreateMultipartUpload, DeleteObject, GetObject,
    ListObjectsV2, PutObject, UploadPart,
};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use tokio::task::JoinHandle;
use url::Url;

use super::net::{cancel, redact, redact_str, uploaded, Dialect, Download, Net};
use super::progress::Progress;
use super::{check_name, Error, ObjectInfo, Store, StoreOptions, Upload};
use crate::rt;

/// How long a presigned request stays valid; each request (and each retry) is signed anew.
const SIGN_FOR: Duration = Duration::from_secs(3600);
const PART_SIZE: usize = 8 << 20;
/// S3 allows 10,000 parts: about 78 GiB at 8 MiB a part, far above any etcd database.
const MAX_PARTS: usize = 10_000;
const DEFAULT_REGION: &str = "us-east-1";

pub(crate) struct S3Store(Arc<S3>);

struct S3 {
    bucket: Bucket,
    credentials: Credentials,
    /// Empty, or ends with `/`.
    prefix: String,
    net: Arc<Net>,
}

impl S3Store {
    pub fn new(url: &Url, opts: &StoreOptions) -> Result<S3Store, Error> {
        let shown = redact(url);
        let bad = |reason: String| Error::Url {
            url: shown.clone(),
            reason,
        };
        let name = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no bucket name".into()))?;
        let prefix = url.path().trim_matches('/');
        if !prefix.is_empty() {
            check_name(prefix)?;
        }
        let credentials = opts
            .s3_credentials
            .as_ref()
            .ok_or_else(|| Error::Credentials { url: shown.clone() })?;
        let region = opts.s3_region.as_deref().unwrap_or(DEFAULT_REGION);
        let endpoint = match &opts.s3_endpoint {
            Some(endpoint) => Url::parse(endpoint)
                .map_err(|e| bad(format!("S3 endpoint {}: {e}", redact_str(endpoint))))?,
            None => Url::parse(&format!("https://s3.{region}.amazonaws.com"))
                .map_err(|e| bad(format!("region {region:?}: {e}")))?,
        };
        let style = if opts.s3_path_style.unwrap_or(opts.s3_endpoint.is_some()) {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(endpoint, style, name.to_string(), region.to_string())
            .map_err(|e| bad(format!("bucket {name:?} at this endpoint: {e}")))?;
        Ok(S3Store(Arc::new(S3 {
            bucket,
            credentials: match &credentials.session_token {
                Some(token) => Credentials::new_with_token(
                    &credentials.access_key_id,
                    &credentials.secret_access_key,
                    token,
                ),
                None => {
                    Credentials::new(&credentials.access_key_id, &credentials.secret_access_key)
                }
            },
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            net: Arc::new(Net::new(opts)?),
        })))
    }
}

impl S3 {
    fn key(&self, name: &str) -> Result<String, Error> {
        check_name(name)?;
        Ok(format!("{}{name}", self.prefix))
    }

    /// `s3://bucket/key`: what messages show, with no signature or key id in it.
    fn shown(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket.name())
    }

    fn credentials(&self) -> Option<&Credentials> {
        Some(&self.credentials)
    }

    async fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
    ) -> Result<rusty_s3::actions::ListObjectsV2Response, Error> {
        let mut action = self.bucket.list_objects_v2(self.credentials());
        action.with_prefix(prefix);
        if let Some(token) = token {
            action.with_continuation_token(token);
        }
        let shown = self.shown(prefix);
        let request = self.net.client().get(action.sign(SIGN_FOR));
        let response = self
            .net
            .send(Dialect::S3, "listing", &shown, request)
            .await?;
        let body = response.text().await.map_err(|e| Error::Interrupted {
            op: "listing",
            url: shown.clone(),
            reason: e.without_url().to_string(),
        })?;
        ListObjectsV2::parse_response(&body).map_err(|e| Error::Interrupted {
            op: "listing",
            url: shown,
            reason: format!("unreadable answer: {e}"),
        })
    }

    /// Sends a request with a fixed body, retrying transient failures.
    async fn send_bytes(
        &self,
        op: &'static str,
        shown: &str,
        request: impl Fn() -> reqwest::RequestBuilder,
        body: &Bytes,
    ) -> Result<reqwest::Response, Error> {
        self.net
            .retry(|| {
                self.net
                    .send(Dialect::S3, op, shown, request().body(body.clone()))
            })
            .await
    }
}

impl Store for S3Store {
    fn location(&self) -> String {
        let s3 = &self.0;
        format!("s3://{}/{}", s3.bucket.name(), s3.prefix)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, Error> {
        let s3 = &self.0;
        let full_prefix = format!("{}{prefix}", s3.prefix);
        rt::block_on(async {
            let mut found = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page = s3
                    .net
                    .retry(|| s3.list_page(&full_prefix, token.as_deref()))
                    .await?;
                for object in page.contents {
                    let Some(name) = object.key.strip_prefix(&s3.prefix) else {
                        continue;
                    };
                    found.push(ObjectInfo {
                        name: name.to_string(),
                        size: object.size.unwrap_or(0),
                        modified: object.last_modified.as_deref().and_then(parse_time),
                    });
                }
                match page.next_continuation_token {
                    Some(next) => token = Some(next),
                    None => return Ok(found),
                }
            }
        })
    }

    fn open_limited(
        &self,
        name: &str,
        max_size: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, Error> {
        let key = self.0.key(name)?;
        let shown = self.0.shown(&key);
        let s3 = self.0.clone();
        let request = Box::new(move || {
            let url = GetObject::new(&s3.bucket, s3.credentials(), &key).sign(SIGN_FOR);
            s3.net.client().get(url)
        });
        Ok(Box::new(Download::start(
            self.0.net.clone(),
            Dialect::S3,
            shown,
            request,
            max_size,
        )?))
    }

    fn create(&self, name: &str) -> Result<Box<dyn Upload>, Error> {
        let key = self.0.key(name)?;
        let shown = self.0.shown(&key);
        Ok(Box::new(S3Upload {
            s3: self.0.clone(),
            name: name.to_string(),
            progress: Progress::new("uploading", shown.clone(), self.0.net.progress_interval),
            shown,
            key,
            buf: BytesMut::with_capacity(PART_SIZE),
            upload_id: None,
            etags: Vec::new(),
            in_flight: None,
            written: 0,
            completed: false,
        }))
    }

    fn delete(&self, name: &str) -> Result<(), Error> {
        let s3 = &self.0;
        let key = s3.key(name)?;
        let shown = s3.shown(&key);
        let sent = rt::block_on(s3.net.retry(|| {
            let url = DeleteObject::new(&s3.bucket, s3.credentials(), &key).sign(SIGN_FOR);
            s3.net
                .send(Dialect::S3, "deleting", &shown, s3.net.client().delete(url))
        }));
        match sent {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A conditional PUT (`If-None-Match: *`): S3 answers 412 when the key exists, and 409 when another
    /// conditional write to it is in flight; either way another writer won. A retried PUT whose first
    /// answer was lost also gets 412: the caller reads the object back and finds its own content.
    fn create_if_absent(&self, name: &str, data: &[u8]) -> Result<bool, Error> {
        let s3 = &self.0;
        let key = s3.key(name)?;
        let shown = s3.shown(&key);
        let body = Bytes::copy_from_slice(data);
        let request = || {
            let url = PutObject::new(&s3.bucket, s3.credentials(), &key).sign(SIGN_FOR);
            s3.net.client().put(url).header("If-None-Match", "*")
        };
        match rt::block_on(s3.send_bytes("writing", &shown, request, &body)) {
            Ok(_) => Ok(true),
            Err(Error::Status {
                status: 409 | 412, ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn parse_time(text: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

struct S3Upload {
    s3: Arc<S3>,
    name: String,
    key: String,
    shown: String,
    buf: BytesMut,
    upload_id: Option<String>,
    etags: Vec<String>,
    in_flight: Option<JoinHandle<Result<String, Error>>>,
    written: u64,
    completed: bool,
    progress: Progress,
}

impl S3Upload {
    /// Starts the multipart upload on the first full part, then sends each part while the next fills.
    fn ship_part(&mut self) -> Result<(), Error> {
        let data = std::mem::replace(&mut self.buf, BytesMut::with_capacity(PART_SIZE)).freeze();
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => self.start_multipart()?,
        };
        self.wait_in_flight()?;
        if self.etags.len() >= MAX_PARTS {
            return Err(Error::Interrupted {
                op: "writing",
                url: self.shown.clone(),
                reason: format!("more than {MAX_PARTS} parts of {PART_SIZE} bytes: the object is too large for S3"),
            });
        }
        // Part numbers count from 1; etags holds every part sent so far.
        let number = (self.etags.len() + 1) as u16;
        let (s3, key, shown) = (self.s3.clone(), self.key.clone(), self.shown.clone());
        self.in_flight = Some(rt::runtime().spawn(async move {
            let request = || {
                let action =
                    UploadPart::new(&s3.bucket, s3.credentials(), &key, number, &upload_id);
                s3.net.client().put(action.sign(SIGN_FOR))
            };
            let response = s3.send_bytes("writing", &shown, request, &data).await?;
            let etag = response.headers().get(ETAG).and_then(|v| v.to_str().ok());
            etag.map(str::to_string).ok_or_else(|| Error::Interrupted {
                op: "writing",
                url: shown.clone(),
                reason: format!("the server sent no ETag for part {number}"),
            })
        }));
        Ok(())
    }

    fn start_multipart(&mut self) -> Result<String, Error> {
        let s3 = &self.s3;
        let body = rt::block_on(s3.net.retry(|| async {
            let url =
                CreateMultipartUpload::new(&s3.bucket, s3.credentials(), &self.key).sign(SIGN_FOR);
            let request = s3.net.client().post(url);
            let response = s3
                .net
                .send(Dialect::S3, "writing", &self.shown, request)
                .await?;
            response.text().await.map_err(|e| Error::Interrupted {
                op: "writing",
                url: self.shown.clone(),
                reason: e.without_url().to_string(),
            })
        }))?;
        let created =
            CreateMultipartUpload::parse_response(&body).map_err(|e| Error::Interrupted {
                op: "writing",
                url: self.shown.clone(),
                reason: format!("unreadable answer to starting a multipart upload: {e}"),
            })?;
        let id = created.upload_id().to_string();
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    fn wait_in_flight(&mut self) -> Result<(), Error> {
        if let Some(task) = self.in_flight.take() {
            let etag = rt::block_on(task).unwrap_or_else(|e| {
                Err(Error::Interrupted {
                    op: "writing",
                    url: self.shown.clone(),
                    reason: e.to_string(),
                })
            })?;
            self.etags.push(etag);
        }
        Ok(())
    }

    fn put_whole(&mut self) -> Result<(), Error> {
        let s3 = &self.s3;
        let body = std::mem::take(&mut self.buf).freeze();
        let request = || {
            let url = PutObject::new(&s3.bucket, s3.credentials(), &self.key).sign(SIGN_FOR);
            s3.net.client().put(url)
        };
        rt::block_on(s3.send_bytes("writing", &self.shown, request, &body))?;
        Ok(())
    }

    fn complete(&mut self, upload_id: &str) -> Result<(), Error> {
        if !self.buf.is_empty() {
            self.ship_part()?;
        }
        self.wait_in_flight()?;
        let s3 = &self.s3;
        let action = CompleteMultipartUpload::new(
            &s3.bucket,
            s3.credentials(),
            &self.key,
            upload_id,
            self.etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGN_FOR);
        let body = Bytes::from(action.body());
        let request = || s3.net.client().post(url.clone());
        let response = rt::block_on(s3.send_bytes("writing", &self.shown, request, &body))?;
        // S3 may answer 200 and still report a failure in the body.
        let answer = rt::block_on(response.text()).unwrap_or_default();
        if answer.contains("<Error>") {
            return Err(Error::status("writing", self.shown.clone(), 500, answer));
        }
        Ok(())
    }
}

impl Write for S3Upload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = data.len().min(PART_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() == PART_SIZE {
            self.ship_part().map_err(Error::into_io)?;
        }
        self.written += take as u64;
        self.progress.add(take as u64);
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Upload for S3Upload {
    fn commit(mut self: Box<Self>) -> Result<ObjectInfo, Error> {
        match self.upload_id.clone() {
            None => self.put_whole()?,
            Some(id) => self.complete(&id)?,
        }
        self.completed = true;
        Ok(uploaded(std::mem::take(&mut self.name), self.written))
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        cancel(self.in_flight.take());
        let Some(upload_id) = self.upload_id.as_deref().filter(|_| !self.completed) else {
            return;
        };
        // Parts of an unfinished multipart upload are stored (and billed) until aborted.
        let s3 = &self.s3;
        let url = AbortMultipartUpload::new(&s3.bucket, s3.credentials(), &self.key, upload_id)
            .sign(SIGN_FOR);
        let request = s3.net.client().delete(url);
        if let Err(e) =
            rt::block_on(
                s3.net
                    .send(Dialect::S3, "aborting upload", &self.shown, request),
            )
        {
            log::warn!("{e}; its parts stay in the bucket until a lifecycle rule removes them");
        }
    }
}
