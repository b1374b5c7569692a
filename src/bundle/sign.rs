//! minisign-compatible signatures of stored bundles.
//!
//! cpr signs the bytes exactly as stored (after encryption) with minisign's pre-hashed algorithm
//! ("ED": Ed25519 over BLAKE2b-512 of the file), so the signature is computed while the bundle streams
//! to the store and `minisign -V -p KEY -m BUNDLE` verifies it with no cpr at hand. Formats
//! (<https://jedisct1.github.io/minisign/>), all base64 under an `untrusted comment:` line:
//!
//! - public key: `"Ed" | key id (8) | Ed25519 public key (32)`
//! - secret key: `"Ed" | kdf | "B2" | salt (32) | opslimit (8) | memlimit (8) | key id (8) | secret
//!   key (64) | BLAKE2b-256 checksum (32)`. cpr writes and reads the *unencrypted* variant (kdf
//!   `\0\0`, what `minisign -G -W` writes): the key protects unattended nightly backups, where no one
//!   is there to type a password; its protection is the file's 0600 mode.
//! - signature: `"ED" | key id | signature (64)`, then `trusted comment: …` and the global signature
//!   over signature + trusted comment. cpr's trusted comment names the object
//!   (`timestamp:T\tfile:<cluster>/<node>/<stamp>.tar.zst[.age]\thashed`), so a valid signature of an
//!   older bundle cannot vouch for a bundle stored under another name.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use blake2::digest::consts::U32;
use blake2::{Blake2b, Blake2b512, Digest};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;

use super::keyfile::{self, KeyError};
use crate::hashing::{sha256, Background, Hasher, ReadAhead};

const SIG_ALG: &[u8; 2] = b"Ed";
const SIG_ALG_HASHED: &[u8; 2] = b"ED";
const KDF_NONE: &[u8; 2] = b"\0\0";
const KDF_SCRYPT: &[u8; 2] = b"Sc";
const CHK_ALG: &[u8; 2] = b"B2";
const UNTRUSTED: &str = "untrusted comment: ";
const TRUSTED: &str = "trusted comment: ";
const PUBLIC_LEN: usize = 2 + 8 + 32;
const SECRET_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;
const SIGNATURE_LEN: usize = 2 + 8 + 64;
/// minisign's own limit on trusted comments, plus the lines around them.
pub const MAX_SIGNATURE_FILE: u64 = 16 << 10;

/// An 8-byte key id, shown as minisign shows it (the little-endian u64 in upper-case hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId([u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

pub struct SecretKey {
    id: KeyId,
    key: SigningKey,
}

#[derive(Debug, Clone)]
pub struct PublicKey {
    id: KeyId,
    key: VerifyingKey,
}

/// A parsed `.minisig` file.
#[derive(Debug, Clone)]
pub struct Signature {
    id: KeyId,
    signature: ed25519_dalek::Signature,
    trusted_comment: String,
    global: ed25519_dalek::Signature,
}

/// Why a signature does not vouch for a bundle; the caller adds which bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the signature file is malformed: {0}")]
    Malformed(String),
    #[error("it is a legacy (not pre-hashed) minisign signature; cpr writes and accepts only pre-hashed ones")]
    Legacy,
    #[error("it was made by key {found}, not by the verify key {expected}: pass --verify-key (restore.verifyKey, cpr.verify_key=) the minisign.pub with key id {found}, written by cpr keygen beside the minisign.key that signed it")]
    OtherKey { found: KeyId, expected: KeyId },
    #[error(
        "the signature does not match the bundle's bytes (the bundle was changed after signing)"
    )]
    Mismatch,
    #[error("the trusted comment's signature is invalid (the signature file was edited)")]
    Comment,
    #[error("it signs {signed:?}, not this bundle; an older bundle's signature was put beside it")]
    OtherObject { signed: String },
}

impl SecretKey {
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        let mut id = [0u8; 8];
        getrandom::getrandom(&mut seed)
            .and_then(|()| getrandom::getrandom(&mut id))
            .map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey {
            id: KeyId(id),
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// The secret key file (unencrypted minisign format).
    pub fn to_file(&self) -> String {
        let keypair = self.key.to_keypair_bytes();
        let mut raw = Vec::with_capacity(SECRET_LEN);
        raw.extend_from_slice(SIG_ALG);
        raw.extend_from_slice(KDF_NONE);
        raw.extend_from_slice(CHK_ALG);
        raw.extend_from_slice(&[0u8; 32 + 8 + 8]);
        raw.extend_from_slice(&self.id.0);
        raw.extend_from_slice(&keypair);
        raw.extend_from_slice(&checksum(&self.id, &keypair));
        format!(
            "{UNTRUSTED}minisign secret key {} (unencrypted; keep it 0600)\n{}\n",
            self.id,
            BASE64.encode(raw)
        )
    }

    pub fn load(path: &Path) -> Result<SecretKey, KeyError> {
        let text = keyfile::read_secret(path)?;
        let bad = |why: &str| KeyError::Format {
            path: path.to_path_buf(),
            what: "minisign secret key",
            why: why.to_string(),
        };
        let raw = decode_key_line(&text, SECRET_LEN).map_err(|why| bad(&why))?;
        if &raw[..2] != SIG_ALG || &raw[4..6] != CHK_ALG {
            return Err(bad("unknown algorithm"));
        }
        match <&[u8; 2]>::try_from(&raw[2..4]).expect("2 bytes") {
            KDF_NONE => {}
            KDF_SCRYPT => return Err(bad("it is password-protected; cpr signs unattended and needs an unencrypted key: create one with `cpr keygen` (or `minisign -G -W`)")),
            _ => return Err(bad("unknown key derivation")),
        }
        let id = KeyId(raw[54..62].try_into().expect("8 bytes"));
        let keypair: [u8; 64] = raw[62..126].try_into().expect("64 bytes");
        if checksum(&id, &keypair)[..] != raw[126..] {
            return Err(bad("its checksum does not match; the file is damaged"));
        }
        let key = SigningKey::from_keypair_bytes(&keypair)
            .map_err(|_| bad("its public half does not belong to its secret half"))?;
        Ok(SecretKey { id, key })
    }

    /// Signs the BLAKE2b-512 `prehash` of a stored object named `object` of `size` bytes.
    pub fn sign(&self, prehash: &[u8; 64], object: &str, size: u64, timestamp: i64) -> String {
        let signature = self.key.sign(prehash);
        let trusted = format!("timestamp:{timestamp}\tfile:{object}\tsize:{size}\thashed");
        let mut global_message = signature.to_bytes().to_vec();
        global_message.extend_from_slice(trusted.as_bytes());
        let global = self.key.sign(&global_message);
        let mut raw = Vec::with_capacity(SIGNATURE_LEN);
        raw.extend_from_slice(SIG_ALG_HASHED);
        raw.extend_from_slice(&self.id.0);
        raw.extend_from_slice(&signature.to_bytes());
        format!(
            "{UNTRUSTED}signature from cpr, key {}\n{}\n{TRUSTED}{trusted}\n{}\n",
            self.id,
            BASE64.encode(raw),
            BASE64.encode(global.to_bytes())
        )
    }
}

/// minisign's checksum: BLAKE2b-256 over the algorithm, the key id and the secret key.
fn checksum(id: &KeyId, keypair: &[u8; 64]) -> [u8; 32] {
    let mut hasher = Blake2b::<U32>::new();
    hasher.update(SIG_ALG);
    hasher.update(id.0);
    hasher.update(keypair);
    hasher.finalize().into()
}

impl PublicKey {
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The public key file, as `minisign -G` writes it.
    pub fn to_file(&self) -> String {
        format!(
            "{UNTRUSTED}minisign public key {}\n{}\n",
            self.id,
            self.base64()
        )
    }

    /// The one-line form `minisign -P` takes.
    pub fn base64(&self) -> String {
        let mut raw = Vec::with_capacity(PUBLIC_LEN);
        raw.extend_from_slice(SIG_ALG);
        raw.extend_from_slice(&self.id.0);
        raw.extend_from_slice(self.key.as_bytes());
        BASE64.encode(raw)
    }

    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let text = keyfile::read_public(path)?;
        let bad = |why: String| KeyError::Format {
            path: path.to_path_buf(),
            what: "minisign public key",
            why,
        };
        let raw = decode_key_line(&text, PUBLIC_LEN).map_err(bad)?;
        if &raw[..2] != SIG_ALG {
            return Err(bad("unknown algorithm".to_string()));
        }
        let key = VerifyingKey::from_bytes(&raw[10..].try_into().expect("32 bytes"))
            .map_err(|_| bad("not a valid Ed25519 public key".to_string()))?;
        Ok(PublicKey {
            id: KeyId(raw[2..10].try_into().expect("8 bytes")),
            key,
        })
    }

    /// Checks what a signature says before the object is fetched: made by this key, trusted comment
    /// intact and naming `object` (by its last path component when `basename_only`, for a local copy
    /// of a stored bundle). Returns the signed size, which bounds the download.
    pub fn check_comment(
        &self,
        signature: &Signature,
        object: &str,
        basename_only: bool,
    ) -> Result<Option<u64>, Rejection> {
        if signature.id != self.id {
            return Err(Rejection::OtherKey {
                found: signature.id,
                expected: self.id,
            });
        }
        let mut global_message = signature.signature.to_bytes().to_vec();
        global_message.extend_from_slice(signature.trusted_comment.as_bytes());
        self.key
            .verify_strict(&global_message, &signature.global)
            .map_err(|_| Rejection::Comment)?;
        let field = |name: &str| {
            signature
                .trusted_comment
                .split('\t')
                .find_map(|field| field.strip_prefix(name))
        };
        let signed = field("file:").unwrap_or_default();
        let last = |name: &str| name.rsplit('/').next().unwrap_or_default().to_string();
        let same = if basename_only {
            last(signed) == last(object)
        } else {
            signed == object
        };
        if !same {
            return Err(Rejection::OtherObject {
                signed: signed.to_string(),
            });
        }
        Ok(field("size:").and_then(|size| size.parse().ok()))
    }

    /// Checks that `signature` signs an object whose BLAKE2b-512 is `prehash`.
    pub fn check_digest(&self, signature: &Signature, prehash: &[u8; 64]) -> Result<(), Rejection> {
        self.key
            .verify_strict(prehash, &signature.signature)
            .map_err(|_| Rejection::Mismatch)
    }
}

impl Signature {
    /// Parses a `.minisig` file.
    pub fn parse(text: &[u8]) -> Result<Signature, Rejection> {
        let malformed = |why: &str| Rejection::Malformed(why.to_string());
        let text = std::str::from_utf8(text).map_err(|_| malformed("not UTF-8 text"))?;
        let mut lines = text.lines();
        let (Some(untrusted), Some(sig), Some(trusted), Some(global)) =
            (lines.next(), lines.next(), lines.next(), lines.next())
        else {
            return Err(malformed("fewer than four lines"));
        };
        if !untrusted.starts_with(UNTRUSTED) {
            return Err(malformed("the first line is not an untrusted comment"));
        }
        let raw = BASE64
            .decode(sig.trim())
            .map_err(|_| malformed("the signature line is not base64"))?;
        if raw.len() != SIGNATURE_LEN {
            return Err(malformed("the signature line has the wrong length"));
        }
        match <&[u8; 2]>::try_from(&raw[..2]).expect("2 bytes") {
            SIG_ALG_HASHED => {}
            SIG_ALG => return Err(Rejection::Legacy),
            _ => return Err(malformed("unknown signature algorithm")),
        }
        let trusted_comment = trusted
            .strip_prefix(TRUSTED)
            .ok_or_else(|| malformed("the third line is not a trusted comment"))?
            .to_string();
        let global = BASE64
            .decode(global.trim())
            .ok()
            .and_then(|g| <[u8; 64]>::try_from(g).ok())
            .ok_or_else(|| malformed("the global signature line is not 64 bytes of base64"))?;
        Ok(Signature {
            id: KeyId(raw[2..10].try_into().expect("8 bytes")),
            signature: ed25519_dalek::Signature::from_bytes(
                &raw[10..].try_into().expect("64 bytes"),
            ),
            trusted_comment,
            global: ed25519_dalek::Signature::from_bytes(&global),
        })
    }
}

/// The key line of a key file: the first line that is neither empty nor a comment, base64 of `len`.
fn decode_key_line(text: &str, len: usize) -> Result<Vec<u8>, String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with(UNTRUSTED))
        .ok_or("no key line")?;
    let raw = BASE64
        .decode(line)
        .map_err(|_| "the key line is not base64".to_string())?;
    if raw.len() != len {
        return Err(format!(
            "the key is {} bytes, expected {len}; is this the right kind of key file?",
            raw.len()
        ));
    }
    Ok(raw)
}

/// The digest a store's index records of a stored object. cpr writes BLAKE3: it runs at the same
/// speed on every CPU, where SHA-256 without SHA extensions took a third of a restore's CPU time.
/// Indexes written by cpr before it record sha256, which is still checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexDigest {
    Blake3,
    Sha256,
}

impl fmt::Display for IndexDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IndexDigest::Blake3 => "BLAKE3 digest",
            IndexDigest::Sha256 => "sha256",
        })
    }
}

/// What a stored object's bytes hash to: the index's digest when one is made or checked,
/// BLAKE2b-512 for a signature when one is made or checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDigest {
    pub blake2b: Option<[u8; 64]>,
    /// Hex, of the kind the `Digesting` was made for.
    pub index: Option<String>,
    pub size: u64,
}

/// The object's hashes, fed on a background thread.
struct ObjectHasher {
    index: Option<IndexHasher>,
    blake2b: Option<Blake2b512>,
}

enum IndexHasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(Box<ring::digest::Context>),
}

impl ObjectHasher {
    fn new(index: Option<IndexDigest>, blake2b: bool) -> Self {
        ObjectHasher {
            index: index.map(|kind| match kind {
                IndexDigest::Blake3 => IndexHasher::Blake3(Box::default()),
                IndexDigest::Sha256 => IndexHasher::Sha256(Box::new(sha256())),
            }),
            blake2b: blake2b.then(Blake2b512::new),
        }
    }

    fn digest(self, size: u64) -> ObjectDigest {
        ObjectDigest {
            blake2b: self.blake2b.map(|b| b.finalize().into()),
            index: self.index.map(|hasher| match hasher {
                IndexHasher::Blake3(hasher) => hasher.finalize().to_hex().to_string(),
                IndexHasher::Sha256(context) => hex::encode((*context).finish()),
            }),
            size,
        }
    }
}

impl Hasher for ObjectHasher {
    fn update(&mut self, data: &[u8]) {
        match &mut self.index {
            Some(IndexHasher::Blake3(hasher)) => {
                hasher.update(data);
            }
            Some(IndexHasher::Sha256(context)) => context.update(data),
            None => {}
        }
        if let Some(blake2b) = &mut self.blake2b {
            Digest::update(blake2b, data);
        }
    }
}

/// Hashes everything written through it (what is read is hashed by [`DigestingReader`]).
pub struct Digesting<T> {
    inner: T,
    hasher: Background<ObjectHasher>,
    size: u64,
}

impl<T> Digesting<T> {
    /// The index's digest (BLAKE3, as cpr records it) only: for an object that is not signed.
    pub fn new(inner: T) -> Self {
        Self::hashing(inner, false)
    }

    /// The index's digest and the BLAKE2b-512 a minisign signature covers.
    pub fn signable(inner: T) -> Self {
        Self::hashing(inner, true)
    }

    fn hashing(inner: T, blake2b: bool) -> Self {
        Digesting {
            inner,
            hasher: Background::new(move || ObjectHasher::new(Some(IndexDigest::Blake3), blake2b)),
            size: 0,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
    }

    pub fn finish(self) -> (T, ObjectDigest) {
        let digest = self.hasher.finish().digest(self.size);
        (self.inner, digest)
    }
}

/// A stored object read ahead of its reader and hashed as [`Digesting`] hashes it, both on a
/// thread of their own (`ReadAhead`): what a streaming restore reads, so that its decompressing
/// thread does neither.
pub struct DigestingReader<R> {
    ahead: ReadAhead<R, ObjectHasher>,
    size: u64,
}

impl<R: Read + Send + 'static> DigestingReader<R> {
    /// The index's digest when there is one to check, and the BLAKE2b-512 a signature covers
    /// when `signed`.
    pub fn new(inner: R, index: Option<IndexDigest>, signed: bool) -> Self {
        DigestingReader {
            ahead: ReadAhead::new(inner, ObjectHasher::new(index, signed)),
            size: 0,
        }
    }

    /// What the object hashed to; call after reading it to the end.
    pub fn finish(self) -> ObjectDigest {
        self.ahead.finish().digest(self.size)
    }
}

impl<R: Read> Read for DigestingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.ahead.read(buf)?;
        self.size += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(bytes: &[u8]) -> [u8; 64] {
        let mut d = Digesting::signable(io::sink());
        d.write_all(bytes).unwrap();
        d.finish().1.blake2b.unwrap()
    }

    #[test]
    fn keys_round_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = SecretKey::generate().unwrap();
        keyfile::write_new(&dir.path().join("k"), &secret.to_file(), 0o600).unwrap();
        keyfile::write_new(&dir.path().join("p"), &secret.public().to_file(), 0o644).unwrap();
        let loaded = SecretKey::load(&dir.path().join("k")).unwrap();
        let public = PublicKey::load(&dir.path().join("p")).unwrap();
        assert_eq!(loaded.public().base64(), secret.public().base64());
        let sig = loaded.sign(&digest(b"bundle"), "c/n/x.tar.zst", 6, 1);
        let sig = Signature::parse(sig.as_bytes()).unwrap();
        assert_eq!(
            public.check_comment(&sig, "c/n/x.tar.zst", false),
            Ok(Some(6))
        );
        assert_eq!(public.check_digest(&sig, &digest(b"bundle")), Ok(()));
    }

    #[test]
    fn refuses_other_bytes_keys_names_and_edited_comments() {
        let secret = SecretKey::generate().unwrap();
        let public = secret.public();
        let text = secret.sign(&digest(b"bundle"), "c/n/new.tar.zst", 6, 1);
        let sig = Signature::parse(text.as_bytes()).unwrap();
        assert_eq!(
            public.check_digest(&sig, &digest(b"bundlE")),
            Err(Rejection::Mismatch)
        );
        let other = SecretKey::generate().unwrap().public();
        let rejection = other
            .check_comment(&sig, "c/n/new.tar.zst", false)
            .unwrap_err();
        assert!(matches!(rejection, Rejection::OtherKey { .. }));
        assert_eq!(
            rejection.to_string(),
            format!(
                "it was made by key {}, not by the verify key {}: pass --verify-key (restore.verifyKey, cpr.verify_key=) the minisign.pub with key id {}, written by cpr keygen beside the minisign.key that signed it",
                public.id, other.id, public.id
            )
        );
        assert!(matches!(
            public.check_comment(&sig, "c/n/old.tar.zst", false),
            Err(Rejection::OtherObject { .. })
        ));
        assert_eq!(
            public.check_comment(&sig, "/tmp/new.tar.zst", true),
            Ok(Some(6))
        );
        let edited = text.replace("size:6", "size:7");
        let sig = Signature::parse(edited.as_bytes()).unwrap();
        assert_eq!(
            public.check_comment(&sig, "c/n/new.tar.zst", false),
            Err(Rejection::Comment)
        );
        assert!(Signature::parse(b"untrusted comment: x\nAAAA\n").is_err());
    }
}
