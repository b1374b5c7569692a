//! A store on an HTTP(S) server: GET (resumed with Range), PUT (streamed), DELETE. Listing comes from the
//! `index.json` files alone, so a server that only serves files (a PXE host) works for restores.
//!
//! Uploads are complete-or-absent only if the server makes them so: nginx's WebDAV PUT writes to a
//! temporary file and renames it when the body is complete, and an upload cut off is discarded.

use std::io::Read;
use std::sync::Arc;

use url::Url;

use super::net::{redact, Dialect, Download, Net, StreamingUpload};
use super::{check_name, index, Error, ObjectInfo, Store, StoreOptions, Upload};
use crate::rt;

pub(crate) struct HttpStore {
    base: Url,
    net: Arc<Net>,
}

impl HttpStore {
    pub fn new(base: Url, opts: &StoreOptions) -> Result<HttpStore, Error> {
        if base.host_str().is_none_or(str::is_empty) {
            return Err(Error::Url {
                url: redact(&base),
                reason: "no host".into(),
            });
        }
        Ok(HttpStore {
            base,
            net: Arc::new(Net::new(opts)?),
        })
    }

    /// The URL of an object, each name component percent-encoded as a path segment.
    fn url(&self, name: &str) -> Result<Url, Error> {
        check_name(name)?;
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Error::Url {
                url: redact(&self.base),
                reason: "cannot hold object paths".into(),
            })?
            .pop_if_empty()
            .extend(name.split('/'));
        Ok(url)
    }
}

impl Store for HttpStore {
    fn location(&self) -> String {
        redact(&self.base)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, Error> {
        let dir = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let index = index::read_dir(self, dir)?;
        Ok(index
            .bundles
            .into_iter()
            .filter(|entry| entry.name.starts_with(prefix))
            .map(|entry| ObjectInfo {
                name: entry.name,
                size: entry.size,
                modified: Some(entry.created.into()),
            })
            .collect())
    }

    fn open_limited(
        &self,
        name: &str,
        max_size: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, Error> {
        let url = self.url(name)?;
        let shown = redact(&url);
        let client = self.net.client().clone();
        let request = Box::new(move || client.get(url.clone()));
        let download = Download::start(self.net.clone(), Dialect::Http, shown, request, max_size)?;
        Ok(Box::new(download))
    }

    fn create(&self, name: &str) -> Result<Box<dyn Upload>, Error> {
        let url = self.url(name)?;
        let request = self.net.client().put(url.clone());
        Ok(Box::new(StreamingUpload::start(
            self.net.clone(),
            Dialect::Http,
            name,
            redact(&url),
            request,
        )))
    }

    fn delete(&self, name: &str) -> Result<(), Error> {
        let url = self.url(name)?;
        let shown = redact(&url);
        let sent = rt::block_on(self.net.retry(|| {
            let request = self.net.client().delete(url.clone());
            self.net.send(Dialect::Http, "deleting", &shown, request)
        }));
        match sent {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
