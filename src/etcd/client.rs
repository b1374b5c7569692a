//! Talking to a live etcd over mTLS: status, member list, key reads and the streamed snapshot.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, Identity, SnapshotResponse, SnapshotStreaming, TlsOptions,
};

use crate::batch::{self, StreamReader, StreamSender};
use crate::rt;

/// The snapshot stream ends with sha256(db) as a message of its own.
const TRAILER_BYTES: u64 = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading the etcd client credential {path}: {source}. Point --cacert/--cert/--key at kubeadm's etcd client pair (pki/etcd/healthcheck-client.* or pki/apiserver-etcd-client.*)")]
    Credential {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("etcd at {endpoint}: {step} failed: {message}. Check that etcd is running, that the endpoint is right, and that the client certificate was signed by etcd's CA")]
    Request {
        endpoint: String,
        step: &'static str,
        message: String,
    },
    #[error("etcd at {endpoint}: {step} got no answer within {seconds} s. Check that etcd is running and reachable")]
    Timeout {
        endpoint: String,
        step: &'static str,
        seconds: u64,
    },
    #[error("etcd at {endpoint}: the snapshot stream carried no data. Check that {endpoint} is this node's etcd client URL and etcd's log for a failed snapshot, then run again")]
    EmptySnapshot { endpoint: String },
}

/// The files of an etcd client certificate pair and the CA that signed etcd's serving certificate.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStatus {
    pub version: String,
    pub db_size: u64,
    pub revision: i64,
    pub member_id: u64,
    pub cluster_id: u64,
    /// The member ID of the leader this member follows; 0 while it has none (no quorum, or an
    /// election under way).
    pub leader: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

pub struct EtcdClient {
    client: Client,
    endpoint: String,
    timeout: Duration,
}

impl EtcdClient {
    pub fn connect(endpoint: &str, tls: Option<&TlsFiles>) -> Result<Self, ClientError> {
        Self::connect_within(endpoint, tls, CONNECT_TIMEOUT, REQUEST_TIMEOUT)
    }

    /// `connect` with its own bounds: a quorum probe asks many times, each briefly.
    pub fn connect_within(
        endpoint: &str,
        tls: Option<&TlsFiles>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, ClientError> {
        let mut options = ConnectOptions::new().with_connect_timeout(connect_timeout);
        if let Some(files) = tls {
            let read = |path: &Path| {
                std::fs::read(path).map_err(|source| ClientError::Credential {
                    path: path.to_path_buf(),
                    source,
                })
            };
            let config = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read(&files.ca)?))
                .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
            options = options.with_tls(config);
        }
        let endpoint = endpoint.to_string();
        let client = rt::block_on(async {
            tokio::time::timeout(
                connect_timeout,
                Client::connect([endpoint.as_str()], Some(options)),
            )
            .await
        })
        .map_err(|_| ClientError::Timeout {
            endpoint: endpoint.clone(),
            step: "connect",
            seconds: connect_timeout.as_secs(),
        })?
        .map_err(|e| request_error(&endpoint, "connect", e))?;
        Ok(EtcdClient {
            client,
            endpoint,
            timeout: request_timeout,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn status(&mut self) -> Result<ServerStatus, ClientError> {
        let endpoint = self.endpoint.clone();
        let status = self.bounded("status", |c| Box::pin(async move { c.status().await }))?;
        let header = status
            .header()
            .cloned()
            .ok_or_else(|| ClientError::Request {
                endpoint,
                step: "status",
                message: "the response has no header".to_string(),
            })?;
        Ok(ServerStatus {
            version: status.version().to_string(),
            db_size: status.db_size().max(0) as u64,
            revision: header.revision(),
            member_id: header.member_id(),
            cluster_id: header.cluster_id(),
            leader: status.leader(),
        })
    }

    pub fn members(&mut self) -> Result<Vec<MemberInfo>, ClientError> {
        let list = self.bounded("member list", |c| {
            Box::pin(async move { c.member_list().await })
        })?;
        Ok(list
            .members()
            .iter()
            .map(|m| MemberInfo {
                id: m.id(),
                name: m.name().to_string(),
                peer_urls: m.peer_urls().to_vec(),
                client_urls: m.client_urls().to_vec(),
                is_learner: m.is_learner(),
            })
            .collect())
    }

    /// Removes the member `id` from the cluster (`etcdctl member remove`). `Ok(false)`: the cluster
    /// has no such member, so an earlier removal whose answer was lost went through. etcd answers
    /// that with `ErrGRPCMemberNotFound` (`api/v3rpc/rpctypes/error.go`), which etcd's Go client
    /// also recognises by its message.
    pub fn member_remove(&mut self, id: u64) -> Result<bool, ClientError> {
        self.bounded("member remove", |c| {
            Box::pin(async move {
                match c.member_remove(id).await {
                    Ok(_) => Ok(true),
                    Err(etcd_client::Error::GRpcStatus(status))
                        if status.message() == "etcdserver: member not found" =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            })
        })
    }

    /// A linearizable read: etcd answers it only through a leader that a quorum follows. Returns the
    /// revision and the cluster ID of the answer.
    pub fn quorum_read(&mut self) -> Result<(i64, u64), ClientError> {
        let response = self.bounded("linearizable read", |c| {
            Box::pin(async move {
                c.get(
                    "cpr-quorum-probe",
                    Some(etcd_client::GetOptions::new().with_count_only()),
                )
                .await
            })
        })?;
        Ok(response
            .header()
            .map_or((0, 0), |h| (h.revision(), h.cluster_id())))
    }

    /// `HashKV` at `revision` (0: the current one): (hash, the revision it covers, compact revision).
    pub fn hash_kv(&mut self, revision: i64) -> Result<(u32, i64, i64), ClientError> {
        let response = self.bounded("hash kv", |c| {
            Box::pin(async move { c.hash_kv(revision).await })
        })?;
        Ok((
            response.hash(),
            response.header().map_or(0, |h| h.revision()),
            response.compact_version(),
        ))
    }

    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        let key = key.to_vec();
        let response = self.bounded("get", |c| Box::pin(async move { c.get(key, None).await }))?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Every current key from `prefix` on that starts with it, with its mod revision, read in
    /// pages of keys only (no values), so a large keyspace costs its keys alone.
    pub fn keys_with_prefix(&mut self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, i64)>, ClientError> {
        const PAGE: i64 = 10_000;
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut out = Vec::new();
        loop {
            let (start, end) = (from.clone(), end.clone());
            let response = self.bounded("range (keys only)", |c| {
                Box::pin(async move {
                    let options = etcd_client::GetOptions::new()
                        .with_range(end)
                        .with_keys_only()
                        .with_limit(PAGE);
                    c.get(start, Some(options)).await
                })
            })?;
            for kv in response.kvs() {
                out.push((kv.key().to_vec(), kv.mod_revision()));
            }
            match (response.more(), out.last()) {
                (true, Some((last, _))) => {
                    from = last.clone();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// Starts a snapshot and waits for its first chunk, which tells the total size.
    pub fn snapshot(&mut self) -> Result<SnapshotReader, ClientError> {
        let endpoint = self.endpoint.clone();
        let mut stream =
            self.bounded("snapshot", |c| Box::pin(async move { c.snapshot().await }))?;
        loop {
            let first = rt::block_on(stream.message())
                .map_err(|e| request_error(&endpoint, "snapshot", e))?
                .ok_or_else(|| ClientError::EmptySnapshot {
                    endpoint: endpoint.clone(),
                })?;
            // etcd 3.6 may lead with a message that carries only its version.
            if first.blob().is_empty() {
                continue;
            }
            let size = first.blob().len() as u64 + first.remaining_bytes() + TRAILER_BYTES;
            return Ok(SnapshotReader::start(stream, first, size, endpoint));
        }
    }

    fn bounded<T>(
        &mut self,
        step: &'static str,
        call: impl FnOnce(
            &mut Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, etcd_client::Error>> + Send + '_>,
        >,
    ) -> Result<T, ClientError> {
        let endpoint = self.endpoint.clone();
        let timeout = self.timeout;
        let future = call(&mut self.client);
        rt::block_on(async { tokio::time::timeout(timeout, future).await })
            .map_err(|_| ClientError::Timeout {
                endpoint: endpoint.clone(),
                step,
                seconds: timeout.as_secs(),
            })?
            .map_err(|e| request_error(&endpoint, step, e))
    }
}

/// The end of the range of keys starting with `prefix` (etcd's `GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn request_error(endpoint: &str, step: &'static str, error: etcd_client::Error) -> ClientError {
    // tonic's Display stops at "transport error"; the cause chain says what actually failed.
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ClientError::Request {
        endpoint: endpoint.to_string(),
        step,
        message,
    }
}

/// The snapshot as a byte stream: the db, then its sha256 trailer, exactly as etcd sends it. A
/// task on the runtime receives etcd's messages (`batch::stream`), so the reading thread (the
/// backup's tar and zstd) waits on the network once per batch, not once per message.
pub struct SnapshotReader {
    batches: StreamReader,
    size: u64,
}

impl SnapshotReader {
    fn start(
        stream: SnapshotStreaming,
        first: SnapshotResponse,
        size: u64,
        endpoint: String,
    ) -> Self {
        let (sender, batches) = batch::stream();
        let receiving = ReceivedSnapshot {
            stream,
            received: 0,
            size,
            endpoint,
        };
        rt::runtime().spawn(receiving.forward(first, sender));
        SnapshotReader { batches, size }
    }

    /// Total bytes the stream will yield, trailer included.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// The receiving task's side of a snapshot.
struct ReceivedSnapshot {
    stream: SnapshotStreaming,
    received: u64,
    size: u64,
    endpoint: String,
}

impl ReceivedSnapshot {
    /// Sends the stream on until it ends, fails, or the reader is dropped (which drops the stream
    /// here and so cancels the request).
    async fn forward(mut self, first: SnapshotResponse, mut sender: StreamSender) {
        let mut message = Ok(Some(first));
        loop {
            match self.counted(message) {
                Ok(Some(received)) => {
                    if !sender.send(received.blob()).await {
                        return;
                    }
                }
                Ok(None) => return sender.end(Ok(())).await,
                Err(error) => return sender.end(Err(error)).await,
            }
            match sender.unless_abandoned(self.next_message()).await {
                Some(next) => message = next,
                None => return,
            }
        }
    }

    async fn next_message(&mut self) -> io::Result<Option<SnapshotResponse>> {
        self.stream.message().await.map_err(|e| {
            // The ClientError travels inside the io::Error so the caller can tell etcd's failure
            // from the destination's.
            io::Error::other(request_error(&self.endpoint, "snapshot stream", e))
        })
    }

    /// `message`, or the error of a stream that outgrew the size etcd announced.
    fn counted(
        &mut self,
        message: io::Result<Option<SnapshotResponse>>,
    ) -> io::Result<Option<SnapshotResponse>> {
        if let Ok(Some(received)) = &message {
            self.received += received.blob().len() as u64;
            if self.received > self.size {
                return Err(io::Error::other(format!(
                    "etcd at {} sent {} snapshot bytes, more than the {} it announced",
                    self.endpoint, self.received, self.size
                )));
            }
        }
        message
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.batches.read(buf)
    }
}
