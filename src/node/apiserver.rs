//! kube-apiserver, reached with a kubeconfig's own credentials: readiness, a few lists, and the
//! deletions a restore onto a new address makes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::kubeconfig::Kubeconfig;
use super::Error;
use crate::rt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ApiServer {
    client: reqwest::Client,
    server: String,
}

impl ApiServer {
    pub fn new(kubeconfig: &Kubeconfig) -> Result<ApiServer, Error> {
        let tls = |why: String| Error::ApiServer {
            server: kubeconfig.server.clone(),
            why,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&kubeconfig.ca_pem) {
            let cert = cert.map_err(|e| tls(format!("the kubeconfig's CA does not parse: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| tls(format!("the kubeconfig's CA is unusable: {e}")))?;
        }
        let chain = CertificateDer::pem_slice_iter(&kubeconfig.client_cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls(format!("the client certificate does not parse: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(&kubeconfig.client_key_pem)
            .map_err(|e| tls(format!("the client key does not parse: {e}")))?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| tls(format!("the client certificate and key do not match: {e}")))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| tls(e.to_string()))?;
        Ok(ApiServer {
            client,
            server: kubeconfig.server.trim_end_matches('/').to_string(),
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// `METHOD path` → the status and body; an error only when no answer came (connection, TLS: a
    /// server whose certificate the kubeconfig's CA did not sign never answers).
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<(reqwest::StatusCode, String), String> {
        let url = format!("{}{path}", self.server);
        rt::block_on(async {
            let response = self
                .client
                .request(method, &url)
                .send()
                .await
                .map_err(|e| chain(&e))?;
            let status = response.status();
            let body = response.text().await.map_err(|e| chain(&e))?;
            Ok((status, body))
        })
    }

    /// `GET path` → the body, or why not.
    pub fn get(&self, path: &str) -> Result<String, String> {
        match self.request(reqwest::Method::GET, path)? {
            (status, body) if status.is_success() => Ok(body),
            (status, body) => Err(format!("HTTP {status}: {}", body.trim())),
        }
    }

    /// `DELETE path`, as `kubectl delete` sends it: whether the object was there.
    pub fn delete(&self, path: &str) -> Result<bool, Error> {
        let failed = |why: String| Error::ApiServer {
            server: format!("{}{path}", self.server),
            why,
        };
        match self
            .request(reqwest::Method::DELETE, path)
            .map_err(failed)?
        {
            (status, _) if status.is_success() => Ok(true),
            (reqwest::StatusCode::NOT_FOUND, _) => Ok(false),
            (status, body) => Err(failed(format!("HTTP {status}: {}", body.trim()))),
        }
    }

    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, Error> {
        let failed = |why: String| Error::ApiServer {
            server: format!("{}{path}", self.server),
            why,
        };
        let body = self.get(path).map_err(failed)?;
        serde_json::from_str(&body).map_err(|e| failed(format!("not JSON: {e}")))
    }

    /// `POST path` with the JSON `body`, as `kubectl create` sends it: the object the server stored.
    pub fn create(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, Error> {
        let url = format!("{}{path}", self.server);
        let failed = |why: String| Error::ApiServer {
            server: url.clone(),
            why,
        };
        let (status, text) = rt::block_on(async {
            let response = self
                .client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| chain(&e))?;
            let status = response.status();
            let text = response.text().await.map_err(|e| chain(&e))?;
            Ok::<_, String>((status, text))
        })
        .map_err(failed)?;
        if !status.is_success() {
            return Err(failed(format!("HTTP {status}: {}", text.trim())));
        }
        serde_json::from_str(&text).map_err(|e| failed(format!("not JSON: {e}")))
    }

    /// Polls `/readyz` until it answers 200 or `timeout` passes.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            match self.get("/readyz") {
                Ok(_) => return Ok(()),
                Err(why) => {
                    if why != last {
                        log::info!("finish: waiting for {}/readyz: {why}", self.server);
                        last = why;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::ApiServer {
                    server: format!("{}/readyz", self.server),
                    why: format!(
                        "not ready after {} s (last answer: {last}). Check `crictl ps` and the kube-apiserver and etcd container logs",
                        timeout.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
