//! Talking to a live etcd over mTLS: status, member list, key reads and the streamed snapshot.

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to etcd at {endpoint}: {message}. Check that etcd is running and that the client certificate is the one kubeadm made for it")]
    Connect { endpoint: String, message: String },
}
