//! Bundles as stored: encrypted (age) and signed (minisign) around the bundle format, and checked
//! against the store's index on the way back.
//!
//! Writing streams: bundle → age → hashing → store upload, and the signature of the stored bytes is
//! uploaded beside the bundle once the bundle is committed, then the index records both.
//!
//! Reading with a verify key checks the signature file first: a wrong key or an old signature is
//! refused before the download, and the signed size bounds it. What happens to the stored object
//! then is the caller's choice (`SignatureCheck`):
//!
//! - Before reading (restore, drill: what writes what it reads): no unverified byte reaches the bundle
//!   reader. The stored object is spooled to an unnamed 0600 file in the caller's private scratch dir
//!   while it is hashed, the signature is checked, and only then is the file read from its start.
//!   (Verifying while extracting would need every extracted byte to be undone on a bad signature;
//!   downloading twice would trust the store to send the same bytes twice.) The spool holds the
//!   stored bytes — ciphertext when encrypted — and costs one bundle's size of scratch space, beside
//!   a staging dir that holds the plaintext anyway.
//! - At the end of the stream (inspect --objects, get, diff, verify of a store's bundle): the object
//!   streams through the hash, and the signature is checked where the index's digest is, when the
//!   stream ends (a local bundle file is verified in place first, needing no spool). Unverified
//!   bytes reach the bundle reader and `etcd::stream`, but these commands show and write nothing
//!   derived from them until `Opened::finish` has checked the signature, exactly as they already
//!   trust nothing before the bundle's own digests are checked (see `etcd::stream`'s design comment:
//!   what is decoded before the check is memory-safe, bounded and fuzzed). No spool: a signed
//!   bundle needs no more scratch than an unsigned one.
//!
//! Without a verify key the bundle streams; the index's digest of the stored object (BLAKE3, or sha256
//! in an index an earlier cpr wrote), when recorded, is checked at the end of the stream, before any
//! caller moves staged data into place. That catches what the bundle's own checks cannot: a flipped
//! zstd frame-header bit that leaves the content unchanged still changes the stored object.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::Error;
use crate::bundle::crypt::{self, Identities, Recipient, Sealing};
use crate::bundle::manifest::{MAX_MANIFEST_BYTES, MAX_SNAPSHOT_BYTES, MAX_TOTAL_FILE_BYTES};
use crate::bundle::name::{BundleName, SIGNATURE_SUFFIX};
use crate::bundle::sign::{
    self, Digesting, DigestingReader, IndexDigest, ObjectDigest, PublicKey, SecretKey, Signature,
};
use crate::bundle::{read_bundle, Error as BundleError, FrameChecksum, Manifest, Sink};
use crate::store::{index, ObjectInfo, Store};

/// The largest stored bundle the format admits: its contents' limits plus tar, zstd and age framing
/// (well under 1% of the contents).
const MAX_STORED_BYTES: u64 =
    (MAX_SNAPSHOT_BYTES + MAX_TOTAL_FILE_BYTES + MAX_MANIFEST_BYTES) / 100 * 101;

/// How backups are sealed: no recipients and no key store a plain, unsigned bundle.
#[derive(Default)]
pub struct SealOptions {
    pub recipients: Vec<Recipient>,
    pub sign_key: Option<SecretKey>,
}

impl SealOptions {
    pub fn load(recipients: &[String], sign_key: Option<&Path>) -> Result<Self, BundleError> {
        Ok(SealOptions {
            recipients: recipients
                .iter()
                .map(|r| crypt::parse_recipient(r))
                .collect::<Result<_, _>>()?,
            sign_key: sign_key.map(SecretKey::load).transpose()?,
        })
    }

    pub fn encrypts(&self) -> bool {
        !self.recipients.is_empty()
    }
}

/// What was stored.
pub struct Sealed {
    pub object: ObjectInfo,
    /// The stored object's BLAKE3 digest, hex, for the index.
    pub blake3: String,
    pub signed: bool,
}

/// Stores the bundle that `write` produces under `name`, encrypted and signed as `options` say.
/// `write` gets the plaintext side; its errors are the caller's to explain.
pub fn store_sealed(
    store: &dyn Store,
    name: &str,
    options: &SealOptions,
    write: impl FnOnce(&mut dyn Write) -> Result<(), Error>,
) -> Result<Sealed, Error> {
    let upload = store.create_new(name)?;
    let upload = match options.sign_key {
        Some(_) => Digesting::signable(upload),
        None => Digesting::new(upload),
    };
    let mut sealing = Sealing::new(upload, &options.recipients, name)?;
    write(&mut sealing)?;
    let (upload, digest) = sealing
        .finish()
        .map_err(|e| crate::store::Error::from_io("writing", name, e))?
        .finish();
    let object = upload.commit()?;
    let signed = match &options.sign_key {
        Some(key) => {
            let signature = key.sign(
                &digest
                    .blake2b
                    .expect("hashed as signable when a sign key is set"),
                name,
                digest.size,
                time::OffsetDateTime::now_utc().unix_timestamp(),
            );
            let sig_name = format!("{name}{SIGNATURE_SUFFIX}");
            let mut upload = store.create_new(&sig_name)?;
            upload
                .write_all(signature.as_bytes())
                .map_err(|e| crate::store::Error::from_io("writing", &sig_name, e))?;
            upload.commit()?;
            true
        }
        None => false,
    };
    Ok(Sealed {
        object,
        blake3: digest.index.expect("hashed for the index"),
        signed,
    })
}

/// The keys a reader checks and decrypts with, and when it checks the signature.
#[derive(Default)]
pub struct OpenKeys {
    pub identities: Option<Identities>,
    pub verify_key: Option<PublicKey>,
    pub signature: SignatureCheck,
}

/// When the signature over a stored object is checked, with a verify key (see the module comment).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// The whole object is fetched and verified before any byte reaches the bundle reader: for a
    /// caller that writes or acts on what it reads before the end.
    #[default]
    BeforeReading,
    /// A store's object streams and the signature is checked when it ends (a read that hits the
    /// end fails, and `Opened::finish` returns the refusal): only for a caller that shows and
    /// writes nothing of the bundle before `finish` succeeded. A local file is still verified in
    /// place before reading, which needs no spool.
    AtEnd,
}

impl OpenKeys {
    pub fn load(identity: Option<&Path>, verify_key: Option<&Path>) -> Result<Self, BundleError> {
        Ok(OpenKeys {
            identities: identity.map(Identities::load).transpose()?,
            verify_key: verify_key.map(PublicKey::load).transpose()?,
            signature: SignatureCheck::default(),
        })
    }
}

/// Where a bundle comes from: an object in a store, or a local file (a `.minisig` beside it).
pub enum Source<'a> {
    Store(&'a dyn Store, &'a str),
    File(&'a Path),
}

impl Source<'_> {
    fn name(&self) -> String {
        match self {
            Source::Store(_, name) => name.to_string(),
            Source::File(path) => path.display().to_string(),
        }
    }
}

/// A bundle opened for the bundle reader: plaintext, and either already verified or checked against
/// the index as it ends. Call `finish` after the reader returns: it reads what is left of the stored
/// object and fails if its digest does not match.
pub struct Opened {
    pub name: String,
    reader: Box<dyn Read + Send>,
    ended: Arc<Mutex<Option<Result<(), BundleError>>>>,
    /// Whether zstd must check its own checksum, or a digest of the stored object (the index's, a
    /// signature's) covers every byte already.
    frame_checksum: FrameChecksum,
}

impl Read for Opened {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Opened {
    /// `bundle::read_bundle` of this object, zstd's checksum checked unless a digest of the stored
    /// object covers it. Call `finish` once it returns.
    pub fn read_bundle(&mut self, sink: &mut dyn Sink) -> Result<Manifest, BundleError> {
        read_bundle(&mut self.reader, &self.name, self.frame_checksum, sink)
    }

    pub fn finish(mut self) -> Result<(), Error> {
        // The bundle reader stops at the end of the archive; age's final chunk and any trailing bytes
        // must still pass through the digest.
        let drained = io::copy(&mut self.reader, &mut io::sink());
        let ended = self.ended.lock().expect("digest state").take();
        match (drained, ended) {
            (_, Some(Err(refused))) => Err(refused.into()),
            (Err(source), _) => Err(BundleError::Read {
                bundle: self.name.clone(),
                at: "end of the stored object".to_string(),
                source,
            }
            .into()),
            (Ok(_), Some(Ok(()))) => Ok(()),
            (Ok(_), None) => Err(BundleError::Read {
                bundle: self.name.clone(),
                at: "end of the stored object".to_string(),
                source: io::Error::other("bytes follow the end of the encrypted stream"),
            }
            .into()),
        }
    }

    /// What the check at the end of the stored object refused, if the stream got there: a read
    /// that failed there is better told as the signature or digest that did not match.
    pub fn refused_at_end(&self) -> Option<BundleError> {
        let mut ended = self.ended.lock().expect("digest state");
        match ended.take() {
            Some(Err(refused)) => Some(refused),
            other => {
                *ended = other;
                None
            }
        }
    }
}

/// Opens a bundle: its signature checked when `keys.verify_key` is set, before reading (spooling
/// into `scratch`, a private directory) or at the end, as `keys.signature` says; then decryption
/// when it is an age file.
pub fn open(source: Source<'_>, keys: &OpenKeys, scratch: &Path) -> Result<Opened, Error> {
    let name = source.name();
    let ended = Arc::new(Mutex::new(None));
    let entry = match source {
        Source::Store(store, object) => index_entry(store, object),
        Source::File(_) => None,
    };
    let indexed_size = entry.as_ref().map(|e| e.size);
    let expected = entry.and_then(IndexedDigest::of);
    let mut size = indexed_size;
    let mut signed = None;
    // With a digest of the stored object to check, every stored byte is checked against it before
    // reading (a spooled object) or by `finish`, before any caller keeps what it read; zstd's own
    // checksum would add nothing.
    let frame_checksum = if expected.is_some() || keys.verify_key.is_some() {
        FrameChecksum::CoveredByObjectDigest
    } else {
        FrameChecksum::Check
    };
    if let Some(key) = &keys.verify_key {
        // The signature file first: a wrong key or an old signature is refused before the
        // download, and the signed size bounds the download (an endless body stops there).
        let signature = signature_of(&source, &name)?;
        let basename_only = matches!(source, Source::File(_));
        let signed_size = key
            .check_comment(&signature, &name, basename_only)
            .map_err(|rejection| BundleError::Signature {
                bundle: name.clone(),
                rejection,
            })?;
        size = signed_size.or(indexed_size);
        signed = Some(Signed {
            key: key.clone(),
            signature,
        });
    }
    let raw: Box<dyn Read + Send> = match signed {
        // A local file is verified in place before reading either way: that costs no scratch.
        Some(signed)
            if keys.signature == SignatureCheck::BeforeReading
                || matches!(source, Source::File(_)) =>
        {
            let kind = expected.as_ref().map(|e| e.kind);
            let (file, digest) = fetch_whole(&source, size, scratch, kind)?;
            signed.check(&name, &digest)?;
            check_digest(&name, expected.as_ref(), &digest)?;
            *ended.lock().expect("digest state") = Some(Ok(()));
            Box::new(file)
        }
        signed => {
            let input = match source {
                Source::Store(store, object) => open_object(store, object, size)?,
                Source::File(path) => open_file(path)?,
            };
            let streamed = match (signed, expected) {
                (Some(signed), expected) => Streamed::Hashed {
                    reader: Box::new(DigestingReader::new(
                        input,
                        expected.as_ref().map(|e| e.kind),
                        true,
                    )),
                    signed: Some(Box::new(signed)),
                    expected,
                },
                (None, Some(expected)) => Streamed::Hashed {
                    reader: Box::new(DigestingReader::new(input, Some(expected.kind), false)),
                    signed: None,
                    expected: Some(expected),
                },
                (None, None) => Streamed::Plain(input),
            };
            Box::new(CheckAtEnd {
                inner: Some(streamed),
                name: name.clone(),
                ended: ended.clone(),
            })
        }
    };
    let reader = crypt::unseal(raw, keys.identities.as_ref(), &name)?;
    Ok(Opened {
        name,
        reader,
        ended,
        frame_checksum,
    })
}

/// A signature whose comment the verify key accepted; its digest is checked against the object's.
struct Signed {
    key: PublicKey,
    signature: Signature,
}

impl Signed {
    fn check(&self, name: &str, digest: &ObjectDigest) -> Result<(), BundleError> {
        let blake2b = digest
            .blake2b
            .expect("a signed object is hashed as signable");
        self.key
            .check_digest(&self.signature, &blake2b)
            .map_err(|rejection| BundleError::Signature {
                bundle: name.to_string(),
                rejection,
            })?;
        log::info!("{name}: signature by key {} verified", self.key.id());
        Ok(())
    }
}

fn open_file(path: &Path) -> Result<Box<dyn Read + Send>, Error> {
    let file = File::open(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Box::new(file))
}

/// The object, refused beyond the size its signature or index recorded, or beyond the largest bundle
/// the format admits when neither is known (an endless body stops there). An object
/// larger than its index says is not the bundle that was indexed: a bundle fault, so a restore
/// moves on to an older bundle, where a store fault would stop it.
fn open_object(
    store: &dyn Store,
    object: &str,
    size: Option<u64>,
) -> Result<Box<dyn Read + Send>, Error> {
    store
        .open_limited(object, Some(size.unwrap_or(MAX_STORED_BYTES)))
        .map_err(|e| match e {
            crate::store::Error::TooLarge { .. } => BundleError::Read {
                bundle: object.to_string(),
                at: "download".to_string(),
                source: io::Error::other(e.to_string()),
            }
            .into(),
            other => other.into(),
        })
}

/// The whole stored object, hashed: a local file is read in place, a store object is spooled
/// (refused beyond `size`, when known).
fn fetch_whole(
    source: &Source<'_>,
    size: Option<u64>,
    scratch: &Path,
    index: Option<IndexDigest>,
) -> Result<(File, ObjectDigest), Error> {
    let (mut file, digest) = match source {
        Source::File(path) => {
            let file = File::open(path).map_err(|source| Error::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let read_err = |source| Error::Read {
                path: path.to_path_buf(),
                source,
            };
            let mut hashing =
                DigestingReader::new(file.try_clone().map_err(read_err)?, index, true);
            io::copy(&mut hashing, &mut io::sink()).map_err(read_err)?;
            (file, hashing.finish())
        }
        Source::Store(store, object) => {
            let spool_err = |source| Error::Write {
                path: scratch.to_path_buf(),
                source,
            };
            // Unnamed (O_TMPFILE) and 0600: nothing else can open it, and it vanishes with us.
            let mut spool = tempfile::tempfile_in(scratch).map_err(spool_err)?;
            let mut input = DigestingReader::new(open_object(*store, object, size)?, index, true);
            io::copy(&mut input, &mut spool)
                .map_err(|e| crate::store::Error::from_io("reading", object, e))?;
            spool.flush().map_err(spool_err)?;
            (spool, input.finish())
        }
    };
    file.rewind().map_err(|e| Error::Read {
        path: PathBuf::from(source.name()),
        source: e,
    })?;
    Ok((file, digest))
}

/// The `.minisig` beside the bundle; a missing one means the bundle is unsigned.
fn signature_of(source: &Source<'_>, name: &str) -> Result<Signature, Error> {
    let unsigned = || BundleError::Unsigned {
        bundle: name.to_string(),
    };
    let mut text = Vec::new();
    match source {
        Source::Store(store, object) => {
            let sig_name = format!("{object}{SIGNATURE_SUFFIX}");
            // An oversized signature is a bad signature (a restore tries an older bundle); a store
            // that fails is a store fault.
            let oversized = |e: crate::store::Error| match e {
                crate::store::Error::TooLarge { .. } => BundleError::Signature {
                    bundle: name.to_string(),
                    rejection: sign::Rejection::Malformed(format!(
                        "larger than {} bytes",
                        sign::MAX_SIGNATURE_FILE
                    )),
                }
                .into(),
                other => Error::from(other),
            };
            let mut reader = match store.open_limited(&sig_name, Some(sign::MAX_SIGNATURE_FILE)) {
                Ok(reader) => reader,
                Err(crate::store::Error::NotFound { .. }) => return Err(unsigned().into()),
                Err(e) => return Err(oversized(e)),
            };
            reader
                .read_to_end(&mut text)
                .map_err(|e| oversized(crate::store::Error::from_io("reading", &sig_name, e)))?;
        }
        Source::File(path) => {
            let sig_path = crate::fsutil::sibling(path, SIGNATURE_SUFFIX);
            match File::open(&sig_path) {
                Ok(file) => file
                    .take(sign::MAX_SIGNATURE_FILE)
                    .read_to_end(&mut text)
                    .map_err(|source| Error::Read {
                        path: sig_path.clone(),
                        source,
                    })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(unsigned().into()),
                Err(source) => {
                    return Err(Error::Read {
                        path: sig_path,
                        source,
                    })
                }
            };
        }
    }
    Signature::parse(&text).map_err(|rejection| {
        BundleError::Signature {
            bundle: name.to_string(),
            rejection,
        }
        .into()
    })
}

/// The index's entry for a stored bundle, if its index has one. A damaged or missing index only
/// loses this extra check (the bundle's own digests still apply), so it is a warning.
fn index_entry(store: &dyn Store, object: &str) -> Option<index::IndexEntry> {
    let name = BundleName::parse(object).ok()?;
    match index::read(store, &name.cluster, &name.node) {
        Ok(index) => index.bundles.into_iter().find(|e| e.name == object),
        Err(e) => {
            log::warn!("{object}: cannot read its index ({e}); its stored digest is not checked");
            None
        }
    }
}

/// The digest the store's index recorded of an object.
struct IndexedDigest {
    kind: IndexDigest,
    hex: String,
}

impl IndexedDigest {
    /// cpr records one or the other; an entry with both (written by hand) is held to its BLAKE3.
    fn of(entry: index::IndexEntry) -> Option<IndexedDigest> {
        match (entry.blake3, entry.sha256) {
            (Some(hex), _) => Some(IndexedDigest {
                kind: IndexDigest::Blake3,
                hex,
            }),
            (None, Some(hex)) => Some(IndexedDigest {
                kind: IndexDigest::Sha256,
                hex,
            }),
            (None, None) => None,
        }
    }
}

fn check_digest(
    name: &str,
    expected: Option<&IndexedDigest>,
    digest: &ObjectDigest,
) -> Result<(), BundleError> {
    match expected {
        Some(expected) if digest.index.as_ref() != Some(&expected.hex) => {
            Err(BundleError::ObjectDigest {
                bundle: name.to_string(),
                kind: expected.kind,
                expected: expected.hex.clone(),
                actual: digest.index.clone().unwrap_or_default(),
            })
        }
        _ => Ok(()),
    }
}

/// Records the end of a streamed object and, when there is a signature or an index digest to check,
/// checks what streamed past; a mismatch fails the read that hit the end, so the bundle reader
/// reports it.
struct CheckAtEnd {
    inner: Option<Streamed>,
    name: String,
    ended: Arc<Mutex<Option<Result<(), BundleError>>>>,
}

/// A stored object as it streams: hashed only when there is a signature or a digest to check.
enum Streamed {
    Hashed {
        reader: Box<DigestingReader<Box<dyn Read + Send>>>,
        signed: Option<Box<Signed>>,
        expected: Option<IndexedDigest>,
    },
    Plain(Box<dyn Read + Send>),
}

impl Read for CheckAtEnd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.as_mut() {
            None => return Ok(0),
            Some(Streamed::Hashed { reader, .. }) => reader.read(buf)?,
            Some(Streamed::Plain(reader)) => reader.read(buf)?,
        };
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        let result = match self.inner.take().expect("checked above") {
            Streamed::Hashed {
                reader,
                signed,
                expected,
            } => {
                let digest = reader.finish();
                signed
                    .map_or(Ok(()), |signed| signed.check(&self.name, &digest))
                    .and_then(|()| check_digest(&self.name, expected.as_ref(), &digest))
            }
            Streamed::Plain(_) => Ok(()),
        };
        let failed = result.as_ref().err().map(ToString::to_string);
        *self.ended.lock().expect("digest state") = Some(result);
        match failed {
            Some(message) => Err(io::Error::new(io::ErrorKind::InvalidData, message)),
            None => Ok(0),
        }
    }
}
