//! age encryption of bundles (X25519 recipients), streaming both ways: a bundle holds the cluster's CA
//! key, so at rest in a store it should be readable only with an identity kept off the store.
//!
//! Encrypted bundles are plain age files (`age -d -i KEY b.tar.zst.age | zstd -d | tar x`). age's
//! STREAM construction authenticates every 64 KiB chunk and the end of the stream, so a flipped or
//! truncated ciphertext fails to decrypt; it does not say *who* wrote the file (anyone with the
//! recipient can), which is what signatures are for.

use age::secrecy::ExposeSecret;
use std::io::{self, Read, Write};
use std::path::Path;
use std::str::FromStr;

use super::keyfile::{self, KeyError};
use super::Error;

/// The first line of every age file.
const AGE_MAGIC: &[u8] = b"age-encryption.org/";

pub type Recipient = age::x25519::Recipient;

/// The identities from an age identity file (`AGE-SECRET-KEY-1…` lines, `#` comments).
pub struct Identities(Vec<Box<dyn age::Identity + Send + Sync>>);

pub fn parse_recipient(text: &str) -> Result<Recipient, KeyError> {
    Recipient::from_str(text.trim()).map_err(|why| KeyError::Recipient {
        recipient: text.to_string(),
        why: why.to_string(),
    })
}

impl Identities {
    pub fn load(path: &Path) -> Result<Identities, KeyError> {
        let text = keyfile::read_secret(path)?;
        // age's own parse errors name the offending line, never its content.
        let identities = age::IdentityFile::from_buffer(text.as_bytes())
            .ok()
            .and_then(|file| file.into_identities().ok())
            .filter(|ids| !ids.is_empty())
            .ok_or_else(|| KeyError::Format {
                path: path.to_path_buf(),
                what: "age identity file",
                why: "expected AGE-SECRET-KEY-1… lines (as `cpr keygen` or age-keygen write them)"
                    .to_string(),
            })?;
        Ok(Identities(identities))
    }
}

/// A new X25519 identity: the identity file's text (age-keygen's layout) and its recipient.
pub fn generate_identity(created: &str) -> (String, Recipient) {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public();
    let text = format!(
        "# created: {created}\n# public key: {recipient}\n{}\n",
        identity.to_string().expose_secret()
    );
    (text, recipient)
}

/// A bundle's output: plain, or age-encrypted to recipients. `finish` ends the age stream (its last
/// chunk is what makes truncation detectable) and hands back the writer underneath.
pub enum Sealing<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealing<W> {
    pub fn new(out: W, recipients: &[Recipient], bundle: &str) -> Result<Self, Error> {
        if recipients.is_empty() {
            return Ok(Sealing::Plain(out));
        }
        let write_err = |source| Error::Write {
            bundle: bundle.to_string(),
            path: "age header".to_string(),
            source,
        };
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| write_err(io::Error::other(e.to_string())))?;
        Ok(Sealing::Age(encryptor.wrap_output(out).map_err(write_err)?))
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Sealing::Plain(out) => Ok(out),
            Sealing::Age(stream) => stream.finish(),
        }
    }
}

impl<W: Write> Write for Sealing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealing::Plain(out) => out.write(buf),
            Sealing::Age(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealing::Plain(out) => out.flush(),
            Sealing::Age(stream) => stream.flush(),
        }
    }
}

/// The plaintext of a stored bundle: age files (recognised by their first line, whatever the name)
/// are decrypted with `identities`, anything else passes through for the bundle reader to judge.
pub fn unseal<R: Read + Send + 'static>(
    mut input: R,
    identities: Option<&Identities>,
    bundle: &str,
) -> Result<Box<dyn Read + Send>, Error> {
    let mut head = Vec::with_capacity(AGE_MAGIC.len());
    (&mut input)
        .take(AGE_MAGIC.len() as u64)
        .read_to_end(&mut head)
        .map_err(|source| Error::Read {
            bundle: bundle.to_string(),
            at: "start".to_string(),
            source,
        })?;
    let input = io::Cursor::new(head.clone()).chain(input);
    if head != AGE_MAGIC {
        if identities.is_some() {
            log::warn!("{bundle} is not encrypted; it is read as it is");
        }
        return Ok(Box::new(input));
    }
    let Some(identities) = identities else {
        return Err(Error::NeedIdentity {
            bundle: bundle.to_string(),
        });
    };
    let decryptor = age::Decryptor::new(input).map_err(|e| decrypt_err(bundle, &e))?;
    let reader = decryptor
        .decrypt(
            identities
                .0
                .iter()
                .map(|i| i.as_ref() as &dyn age::Identity),
        )
        .map_err(|e| decrypt_err(bundle, &e))?;
    Ok(Box::new(reader))
}

fn decrypt_err(bundle: &str, error: &age::DecryptError) -> Error {
    match error {
        age::DecryptError::NoMatchingKeys => Error::WrongIdentity {
            bundle: bundle.to_string(),
        },
        other => Error::Decrypt {
            bundle: bundle.to_string(),
            why: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_identity_file_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("age.key");
        let secret = "AGE-SECRET-KEY-1NOTAVALIDKEYBUTSECRETLOOKING";
        std::fs::write(&path, format!("# a key\n{secret}\n")).unwrap();
        let message = Identities::load(&path).err().unwrap().to_string();
        assert!(message.contains("age identity file"), "{message}");
        assert!(!message.contains("NOTAVALID"), "{message}");
    }

    #[test]
    fn sealed_output_decrypts_with_the_identity_only() {
        let (text, recipient) = generate_identity("now");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("age.key");
        std::fs::write(&path, text).unwrap();
        let mut sealing = Sealing::new(Vec::new(), &[recipient], "b").unwrap();
        sealing.write_all(b"bundle bytes").unwrap();
        let sealed = sealing.finish().unwrap();
        let ids = Identities::load(&path).unwrap();
        let mut plain = Vec::new();
        unseal(io::Cursor::new(sealed.clone()), Some(&ids), "b")
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, b"bundle bytes");
        assert!(matches!(
            unseal(io::Cursor::new(sealed), None, "b"),
            Err(Error::NeedIdentity { .. })
        ));
    }
}
