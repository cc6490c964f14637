//! VAPID (RFC 8292): herald's key pair, and the signed JWT per push-service
//! origin, cached until shortly before its `exp` by the wall clock (signing
//! costs more than encrypting a message). A push service that refuses a token
//! (`401`/`403`) makes herald drop its cached token for that origin.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use web_push::{
    PartialVapidSignatureBuilder, SubscriptionInfo, VapidSignature, VapidSignatureBuilder,
};

/// How long a signed token is valid (RFC 8292 allows at most 24 h).
const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// A cached token is replaced this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(3600);
/// Origins whose token is cached before the cache is emptied.
const MAX_CACHED: usize = 10_000;

/// herald's VAPID key pair.
#[derive(Clone)]
pub struct VapidKey {
    builder: PartialVapidSignatureBuilder,
    /// The uncompressed public key, base64url: what browsers pass as `applicationServerKey`.
    pub public_key: String,
}

impl VapidKey {
    /// From the base64url encoding of the 32-byte private scalar.
    pub fn from_base64(private_key: &str) -> anyhow::Result<VapidKey> {
        let builder = VapidSignatureBuilder::from_base64_no_sub(private_key.trim())
            .map_err(|e| anyhow::anyhow!("not a base64url P-256 private key: {e}"))?;
        let public_key = URL_SAFE_NO_PAD.encode(builder.get_public_key());
        Ok(VapidKey {
            builder,
            public_key,
        })
    }

    /// A new random key pair, returned with its private key's base64url text.
    pub fn generate() -> (VapidKey, String) {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let text = URL_SAFE_NO_PAD.encode(secret.to_bytes());
        let key = VapidKey::from_base64(&text).expect("a fresh P-256 scalar is a valid key");
        (key, text)
    }

    /// The key `push.vapid_private_key` holds, or else the key file's (created
    /// when missing and `create` is set).
    pub fn from_settings(
        settings: &crate::shared::config::Settings,
        create: bool,
    ) -> anyhow::Result<VapidKey> {
        let inline = &settings.push.vapid_private_key;
        if inline.is_empty() {
            return VapidKey::load_or_create(&settings.vapid_key_path(), create);
        }
        // The parser's message could quote the key: say only which setting is wrong.
        VapidKey::from_base64(inline.expose()).map_err(|_| {
            anyhow::anyhow!(
                "push.vapid_private_key is not a base64url P-256 private key (make one with `herald vapid generate`)"
            )
        })
    }

    /// Reads the key file, refusing one that group or others may read; when
    /// it is missing and `create` is set, writes a new one (mode 0600).
    pub fn load_or_create(path: &Path, create: bool) -> anyhow::Result<VapidKey> {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            anyhow::ensure!(
                mode & 0o077 == 0,
                "VAPID key file {} may be read by group or others (mode {mode:o}): `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        match std::fs::read_to_string(path) {
            Ok(text) => VapidKey::from_base64(&text).map_err(|_| {
                anyhow::anyhow!(
                    "VAPID key file {} does not hold a base64url P-256 private key",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let (key, text) = VapidKey::generate();
                write_private(path, &text)?;
                tracing::info!(path = %path.display(), "created a new VAPID key pair");
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
                "VAPID key file {} does not exist; create one with `herald vapid generate --out {}`",
                path.display(),
                path.display()
            ),
            Err(e) => Err(e).with_context(|| format!("cannot read VAPID key file {}", path.display())),
        }
    }
}

/// Writes a secret file readable by its owner only.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(())
}

/// A signed token, and the `Authorization` header that carries it.
#[derive(Clone)]
struct Token {
    signature: VapidSignature,
    header: Arc<str>,
    /// Unix seconds.
    exp: u64,
}

/// Signed tokens by origin.
pub struct Signer {
    key: VapidKey,
    subject: String,
    cache: Mutex<HashMap<String, Token>>,
}

/// Seconds since 1970 by the wall clock (0 for a clock set before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Signer {
    pub fn new(key: VapidKey, subject: String) -> Signer {
        Signer {
            key,
            subject,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn public_key(&self) -> &str {
        &self.key.public_key
    }

    /// The token for `origin` (`aud`), from the cache while its `exp` is more than
    /// an hour ahead of the wall clock (a suspended machine or a clock step does not
    /// leave an expired token in use).
    pub fn signature(&self, origin: &str) -> anyhow::Result<VapidSignature> {
        Ok(self.token_at(origin, unix_now())?.signature)
    }

    /// The `Authorization` header for a push to `origin`: `vapid t=<token>, k=<key>`.
    pub fn authorization(&self, origin: &str) -> anyhow::Result<Arc<str>> {
        Ok(self.token_at(origin, unix_now())?.header)
    }

    fn token_at(&self, origin: &str, now: u64) -> anyhow::Result<Token> {
        if let Some(token) = self.cache.lock().get(origin) {
            if now.saturating_add(REFRESH_MARGIN.as_secs()) < token.exp {
                return Ok(token.clone());
            }
        }
        let exp = now.saturating_add(TOKEN_LIFETIME.as_secs());
        let audience = SubscriptionInfo::new(origin, "", "");
        let mut builder = self.key.builder.clone().add_sub_info(&audience);
        // Set aud ourselves: web-push's default drops a non-default port.
        builder.add_claim("aud", origin);
        builder.add_claim("sub", self.subject.as_str());
        builder.add_claim("exp", exp);
        let signature = builder
            .build()
            .map_err(|e| anyhow::anyhow!("cannot sign a VAPID token: {e}"))?;
        let header = format!(
            "vapid t={}, k={}",
            signature.auth_t,
            URL_SAFE_NO_PAD.encode(&signature.auth_k)
        );
        let token = Token {
            signature,
            header: header.into(),
            exp,
        };
        let mut cache = self.cache.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(origin.to_string(), token.clone());
        Ok(token)
    }

    /// Drops the cached token of `origin`: the push service refused it.
    pub fn forget(&self, origin: &str) {
        self.cache.lock().remove(origin);
    }
}

/// `herald vapid …`.
#[derive(clap::Subcommand)]
pub enum VapidCommand {
    /// Create a new VAPID key pair and print the public key.
    Generate {
        /// Where to write the private key (default: push.vapid_private_key_file or <data_dir>/vapid_private_key).
        #[arg(long, value_name = "PATH")]
        out: Option<std::path::PathBuf>,
    },
}

/// `herald vapid generate`.
pub fn run_cli(
    settings: &crate::shared::config::Settings,
    command: VapidCommand,
) -> anyhow::Result<()> {
    let VapidCommand::Generate { out } = command;
    let path = out.unwrap_or_else(|| settings.vapid_key_path());
    let (key, private) = VapidKey::generate();
    write_private(&path, &private)?;
    println!("wrote the private key to {} (mode 0600)", path.display());
    println!("public key (applicationServerKey): {}", key.public_key);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_round_trips_through_its_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keys/vapid_private_key");
        let first = VapidKey::load_or_create(&path, true).expect("created");
        let again = VapidKey::load_or_create(&path, false).expect("read back");
        assert_eq!(first.public_key, again.public_key);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_missing_key_without_create_says_how_to_make_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = VapidKey::load_or_create(&dir.path().join("nope"), false)
            .err()
            .expect("must fail")
            .to_string();
        assert!(err.contains("herald vapid generate"), "{err}");
    }

    #[test]
    fn a_key_file_others_may_read_is_refused_and_a_bad_key_is_not_quoted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vapid_private_key");
        let (_, text) = VapidKey::generate();
        std::fs::write(&path, &text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = VapidKey::load_or_create(&path, false)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(VapidKey::load_or_create(&path, false).is_ok());

        let mut settings = crate::shared::config::Settings::default();
        settings.push.vapid_private_key = crate::shared::config::Secret::new(&text);
        let from_env = VapidKey::from_settings(&settings, false).expect("inline key");
        assert_eq!(
            from_env.public_key,
            VapidKey::load_or_create(&path, false)
                .expect("file")
                .public_key
        );
        let wrong = "not-a-key-but-secret-looking-AAAAAAAAAAAA";
        settings.push.vapid_private_key = crate::shared::config::Secret::new(wrong);
        let err = VapidKey::from_settings(&settings, false)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("push.vapid_private_key") && !err.contains(wrong),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert!(VapidKey::from_base64("not-a-key").is_err());
    }

    #[test]
    fn signatures_are_cached_per_origin() {
        let (key, _) = VapidKey::generate();
        let signer = Signer::new(key, "mailto:ops@example.org".into());
        let a = signer.signature("http://127.0.0.1:1").expect("signs");
        let b = signer.signature("http://127.0.0.1:1").expect("signs");
        let c = signer.signature("http://127.0.0.1:2").expect("signs");
        assert_eq!(a, b);
        assert_ne!(a.auth_t, c.auth_t);
    }

    #[test]
    fn a_token_near_its_exp_by_the_wall_clock_is_signed_again() {
        let (key, _) = VapidKey::generate();
        let signer = Signer::new(key, "mailto:ops@example.org".into());
        let origin = "http://127.0.0.1:1";
        let t0 = unix_now();
        let first = signer.token_at(origin, t0).expect("signs").signature;
        let cached = signer
            .token_at(origin, t0 + 10 * 3600)
            .expect("signs")
            .signature;
        assert_eq!(first, cached, "ten hours on, still more than an hour left");
        let renewed = signer
            .token_at(origin, t0 + 11 * 3600 + 1)
            .expect("signs")
            .signature;
        assert_ne!(first, renewed, "less than an hour left: a new token");
        signer.forget(origin);
        assert!(
            signer.cache.lock().get(origin).is_none(),
            "a refused token is not used again"
        );
        let _ = signer.token_at(origin, u64::MAX).expect("no overflow");
    }
}
