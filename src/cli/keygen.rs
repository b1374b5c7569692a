//! `cpr keygen`: the two key pairs that protect bundles.

use argh::FromArgs;
use std::path::{Path, PathBuf};

use crate::bundle::crypt;
use crate::bundle::keyfile::{self, KeyError};
use crate::bundle::sign::SecretKey;
use crate::Error;

const AGE_KEY: &str = "age.key";
const AGE_PUB: &str = "age.pub";
const SIGN_KEY: &str = "minisign.key";
const SIGN_PUB: &str = "minisign.pub";

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "keygen")]
/// Create an age identity (encrypts bundles) and a minisign key pair (signs them) in a new or empty-of-keys directory.
pub struct KeygenCmd {
    /// directory for age.key, age.pub, minisign.key and minisign.pub (default: the current directory; created 0700)
    #[argh(option, default = "PathBuf::from(\".\")")]
    pub out: PathBuf,
}

pub fn run(cmd: KeygenCmd) -> Result<(), Error> {
    let dir = cmd.out;
    // Every name is checked first, so a refusal leaves no half-written key set behind.
    for name in [AGE_KEY, AGE_PUB, SIGN_KEY, SIGN_PUB] {
        let path = dir.join(name);
        if path.symlink_metadata().is_ok() {
            return Err(crate::bundle::Error::from(KeyError::Exists { path }).into());
        }
    }
    keyfile::private_dir(&dir).map_err(crate::bundle::Error::from)?;
    let created = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("UTC times always format");
    let (identity, recipient) = crypt::generate_identity(&created);
    let signing = SecretKey::generate().map_err(crate::bundle::Error::from)?;
    let public = signing.public();
    // Public halves are 0644: they are meant to be copied around; secrets are 0600.
    for (name, text, mode) in [
        (AGE_KEY, identity, 0o600),
        (AGE_PUB, format!("{recipient}\n"), 0o644),
        (SIGN_KEY, signing.to_file(), 0o600),
        (SIGN_PUB, public.to_file(), 0o644),
    ] {
        keyfile::write_new(&dir.join(name), &text, mode).map_err(crate::bundle::Error::from)?;
    }
    print!(
        "{}",
        describe(&dir, &recipient.to_string(), &public.base64())
    );
    Ok(())
}

fn describe(dir: &Path, recipient: &str, verify_key: &str) -> String {
    let d = dir.display();
    format!(
        "age recipient (encrypts; public): {recipient}\n\
         minisign public key (verifies; public): {verify_key}\n\
         \n\
         On the control-plane node (backup):\n  \
           cpr backup --encrypt-to {recipient} --sign-key {d}/{SIGN_KEY}\n\
         On the recovery image or replacement node (restore):\n  \
           cpr restore --identity {d}/{AGE_KEY} --verify-key {d}/{SIGN_PUB}\n\
         Keep {d}/{AGE_KEY} off the node and the store: whoever holds it can read every bundle, CA key included.\n\
         {d}/{SIGN_KEY} is unencrypted (mode 0600) so that scheduled backups can sign unattended.\n"
    )
}
