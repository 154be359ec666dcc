//! The state directory (`proxy_service.acme.state_dir`): the account key
//! (`account.key`), the certificate chain (`cert.pem`) and its key (`key.pem`). The
//! directory is created 0700 and every file is written 0600 through a temporary file and a
//! rename, so a crash never leaves half a key and a reader never sees one.

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const ACCOUNT_KEY: &str = "account.key";
const CERT: &str = "cert.pem";
const KEY: &str = "key.pem";

/// One state directory.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
}

/// A certificate chain and its key as stored (PEM).
pub(crate) struct Stored {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key_pem: String,
}

impl Store {
    /// Creates the directory (0700) when missing.
    pub(crate) fn open(dir: &Path) -> io::Result<Store> {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        // Proves the directory is writable now rather than at the first issuance.
        let store = Store {
            dir: dir.to_owned(),
        };
        store.write_private(".probe", b"")?;
        fs::remove_file(dir.join(".probe"))?;
        Ok(store)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The account key (PKCS#8), generated and saved on first use.
    pub(crate) fn account_key(&self) -> io::Result<PrivatePkcs8KeyDer<'static>> {
        let path = self.dir.join(ACCOUNT_KEY);
        if !path.exists() {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(io::Error::other)?;
            self.write_private(ACCOUNT_KEY, key.serialize_pem().as_bytes())?;
        }
        PrivatePkcs8KeyDer::from_pem_file(&path)
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
    }

    /// The stored certificate, if both files are there; an unreadable one is an error.
    pub(crate) fn load(&self) -> io::Result<Option<Stored>> {
        let (cert, key) = (self.dir.join(CERT), self.dir.join(KEY));
        if !cert.exists() || !key.exists() {
            return Ok(None);
        }
        let chain = CertificateDer::pem_file_iter(&cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| io::Error::other(format!("{}: {e}", cert.display())))?;
        let key_pem = fs::read_to_string(&key)?;
        Ok(Some(Stored { chain, key_pem }))
    }

    /// Saves a new chain and key: the key first, so the pair on disk is never a new
    /// certificate with an old key for longer than one rename.
    pub(crate) fn save(&self, chain_pem: &str, key_pem: &str) -> io::Result<()> {
        self.write_private(KEY, key_pem.as_bytes())?;
        self.write_private(CERT, chain_pem.as_bytes())
    }

    fn write_private(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        // The mode at creation is masked by the umask; 0600 is what is meant.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
        fs::rename(&tmp, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_the_account_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("acme")).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.dir()), 0o700);
        let first = store.account_key().unwrap();
        assert_eq!(store.account_key().unwrap(), first);
        assert_eq!(mode(&store.dir().join(ACCOUNT_KEY)), 0o600);
        assert!(store.load().unwrap().is_none());
        let key = KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        store.save(&cert.pem(), &key.serialize_pem()).unwrap();
        assert_eq!(mode(&store.dir().join(CERT)), 0o600);
        assert_eq!(mode(&store.dir().join(KEY)), 0o600);
        let stored = store.load().unwrap().unwrap();
        assert_eq!(stored.chain, vec![cert.der().clone()]);
    }
}
