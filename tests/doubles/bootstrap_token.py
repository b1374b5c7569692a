"""Bootstrap tokens as kubeadm and kube-controller-manager handle them, shared by the kubeadm and API server
doubles: the token's form (k8s.io/cluster-bootstrap/token/api/types.go BootstrapTokenPattern) and the detached
JWS the bootstrap signer puts into kube-public/cluster-info (k8s.io/cluster-bootstrap/token/jws/jws.go
ComputeDetachedSignature: a compact HS256 JWS with header {"alg","kid"} keyed by the token secret, its payload
cut out, "header..signature"), which `kubeadm join` checks (cmd/kubeadm/app/discovery/token/token.go).
"""
import base64
import hashlib
import hmac
import json
import re

PATTERN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def detached_signature(content, token_id, token_secret):
    header = _b64url(json.dumps({"alg": "HS256", "kid": token_id}, separators=(",", ":")).encode())
    signing_input = f"{header}.{_b64url(content.encode())}".encode()
    signature = hmac.new(token_secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}..{_b64url(signature)}"


def signature_is_valid(signature, content, token_id, token_secret):
    """jws.go DetachedTokenIsValid: the signature recomputed for this content and token, compared in constant
    time."""
    return hmac.compare_digest(signature, detached_signature(content, token_id, token_secret))
