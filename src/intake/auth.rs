//! Who is calling the API and what they may do.
//!
//! Two kinds of credential, both `Authorization: Bearer …`:
//! - **service tokens** (`api.tokens`): random strings whose SHA-256 the config
//!   holds, each with scopes (`publish`, `subscriptions`, `read`, `admin`);
//! - **subscriber tokens** (`api.subscriber_tokens`): HS256 JWTs the app's
//!   backend signs for one user (`sub`), with which a browser manages that
//!   user's subscriptions and nothing else.
//!
//! HS256 rather than Ed25519: every backend language signs it with what it
//! already has (Node's `crypto`, Python's `hmac`, any JWT library), the secret
//! never leaves the two services that share it, and verifying is one HMAC.
//!
//! With neither configured the API is open, which [`crate::intake::api`] allows on
//! loopback only (the quickstart).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use sha2::{Digest, Sha256};

use crate::shared::config::{Scope, Secret, Settings};

/// Who made a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No credentials are configured (loopback quickstart): everything is allowed.
    Open,
    /// A service token.
    Service { name: Arc<str>, scopes: Vec<Scope> },
    /// A browser holding a subscriber token for `user`; `topics` are the
    /// patterns the token lets it subscribe to.
    Subscriber { user: String, topics: Vec<String> },
}

impl Caller {
    /// Whether the caller holds `scope` (`admin` includes `read`).
    pub fn may(&self, scope: Scope) -> bool {
        match self {
            Caller::Open => true,
            Caller::Service { scopes, .. } => {
                scopes.contains(&scope) || (scope == Scope::Read && scopes.contains(&Scope::Admin))
            }
            Caller::Subscriber { .. } => false,
        }
    }

    /// The name logs and metrics use: the token's name, `subscriber`, or `open`.
    pub fn label(&self) -> &str {
        match self {
            Caller::Open => "open",
            Caller::Service { name, .. } => name,
            Caller::Subscriber { .. } => "subscriber",
        }
    }
}

/// Why a bearer token was not accepted (answered `401`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unauthenticated {
    #[error("send a token as `Authorization: Bearer <token>` (a service token from api.tokens, or a subscriber token)")]
    Missing,
    #[error("the token is not one of api.tokens (is the config holding its SHA-256?)")]
    UnknownToken,
    #[error("subscriber tokens are not enabled here (api.subscriber_tokens.secret)")]
    SubscribersOff,
    #[error("the subscriber token is refused: {0}")]
    BadSubscriberToken(String),
}

/// The configured credentials, ready to check requests against.
pub struct Credentials {
    /// By the SHA-256 of the token.
    services: HashMap<[u8; 32], (Arc<str>, Vec<Scope>)>,
    subscribers: Option<SubscriberKey>,
}

struct SubscriberKey {
    /// The secret, then the previous one while a rotation is under way.
    keys: Vec<hmac::Key>,
    audience: String,
    max_lifetime_secs: u64,
}

/// A subscriber token may be this late by the wall clock.
const LEEWAY_SECS: u64 = 30;
/// The longest subscriber token read (a header line would be longer than any honest one).
const MAX_JWT_BYTES: usize = 4096;

impl Credentials {
    /// From `api.tokens` and `api.subscriber_tokens` (reading the secret's file).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Credentials> {
        let mut services = HashMap::new();
        for token in &settings.api.tokens {
            let mut digest = [0u8; 32];
            for (i, byte) in digest.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&token.sha256[2 * i..2 * i + 2], 16)
                    .context("api.tokens: sha256 is validated hex")?;
            }
            services.insert(
                digest,
                (Arc::from(token.name.as_str()), token.scopes.clone()),
            );
        }
        let config = &settings.api.subscriber_tokens;
        let secret = if !config.secret_file.as_os_str().is_empty() {
            Some(read_secret_file(
                &config.secret_file,
                "api.subscriber_tokens.secret_file",
            )?)
        } else if !config.secret.is_empty() {
            Some(config.secret.clone())
        } else {
            None
        };
        let previous = if !config.previous_secret_file.as_os_str().is_empty() {
            Some(read_secret_file(
                &config.previous_secret_file,
                "api.subscriber_tokens.previous_secret_file",
            )?)
        } else if !config.previous_secret.is_empty() {
            Some(config.previous_secret.clone())
        } else {
            None
        };
        let subscribers = secret.map(|secret| SubscriberKey {
            keys: std::iter::once(secret)
                .chain(previous)
                .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.expose().as_bytes()))
                .collect(),
            audience: config.audience.clone(),
            max_lifetime_secs: config.max_lifetime.as_secs(),
        });
        Ok(Credentials {
            services,
            subscribers,
        })
    }

    /// Open mode: nothing configured, nothing checked.
    pub fn is_open(&self) -> bool {
        self.services.is_empty() && self.subscribers.is_none()
    }

    /// Who sent `authorization` (the header's value), at `now` (Unix seconds).
    pub fn identify(
        &self,
        authorization: Option<&str>,
        now: u64,
    ) -> Result<Caller, Unauthenticated> {
        if self.is_open() {
            return Ok(Caller::Open);
        }
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let token = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or(Unauthenticated::Missing)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((name, scopes)) = self.services.get(&digest) {
            return Ok(Caller::Service {
                name: name.clone(),
                scopes: scopes.clone(),
            });
        }
        // Not a service token: a JWT has two dots.
        if token.contains('.') {
            let key = self
                .subscribers
                .as_ref()
                .ok_or(Unauthenticated::SubscribersOff)?;
            return key
                .verify(token, now)
                .map_err(Unauthenticated::BadSubscriberToken);
        }
        Err(Unauthenticated::UnknownToken)
    }
}

impl SubscriberKey {
    /// Checks a compact HS256 JWT: header, signature, `aud`, `exp` (and `nbf`), `sub`.
    fn verify(&self, token: &str, now: u64) -> Result<Caller, String> {
        if token.len() > MAX_JWT_BYTES {
            return Err(format!("longer than {MAX_JWT_BYTES} bytes"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWT (header.payload.signature)".into());
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| format!("its {what} is not base64url"))
        };
        let header: serde_json::Value = serde_json::from_slice(&decode(header, "header")?)
            .map_err(|_| "its header is not JSON".to_string())?;
        // Only HS256: `none` and the other algorithms are what token confusion is made of.
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err("alg must be HS256".into());
        }
        let signed_len = token.len() - signature.len() - 1;
        let signature = decode(signature, "signature")?;
        let signed = &token.as_bytes()[..signed_len];
        if !self
            .keys
            .iter()
            .any(|key| hmac::verify(key, signed, &signature).is_ok())
        {
            return Err(
                "the signature does not verify with api.subscriber_tokens' secret".to_string(),
            );
        }
        let claims: serde_json::Value = serde_json::from_slice(&decode(payload, "payload")?)
            .map_err(|_| "its payload is not JSON".to_string())?;
        let audience_ok = match claims.get("aud") {
            Some(serde_json::Value::String(aud)) => *aud == self.audience,
            Some(serde_json::Value::Array(auds)) => {
                auds.iter().any(|a| a.as_str() == Some(&self.audience))
            }
            _ => false,
        };
        if !audience_ok {
            return Err(format!(
                "aud must be {:?} (api.subscriber_tokens.audience)",
                self.audience
            ));
        }
        let exp = numeric_date(&claims, "exp")?.ok_or("exp (Unix seconds) is required")?;
        let iat = numeric_date(&claims, "iat")?
            .ok_or("iat (Unix seconds, when it was minted) is required")?;
        if exp.saturating_add(LEEWAY_SECS) < now {
            return Err("it has expired (exp); ask the app's backend for a new one".into());
        }
        if iat > now + LEEWAY_SECS {
            return Err("iat is in the future".into());
        }
        // Its whole life, not what is left of it: a year-long token is refused
        // on its last day too.
        if exp.saturating_sub(iat) > self.max_lifetime_secs {
            return Err(format!(
                "it lives longer than {} s from iat to exp (api.subscriber_tokens.max_lifetime); mint short-lived tokens",
                self.max_lifetime_secs
            ));
        }
        if let Some(nbf) = numeric_date(&claims, "nbf")? {
            if nbf > now + LEEWAY_SECS {
                return Err("it is not valid yet (nbf)".into());
            }
        }
        let user = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .ok_or("sub (the user) is required")?;
        crate::shared::event::check_identifier("sub", user, 128)
            .map_err(|e| format!("sub {}", e.message))?;
        let topics = match claims.get("topics") {
            None => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|t| t.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("topics must be an array of patterns")?,
            Some(_) => return Err("topics must be an array of patterns".into()),
        };
        Ok(Caller::Subscriber {
            user: user.to_string(),
            topics,
        })
    }
}

/// A NumericDate claim (RFC 7519 §2: seconds, maybe fractional), in whole
/// seconds; `None` when absent.
fn numeric_date(claims: &serde_json::Value, name: &str) -> Result<Option<u64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => match value.as_f64() {
            Some(seconds) if seconds.is_finite() && (0.0..1e15).contains(&seconds) => {
                Ok(Some(seconds.floor() as u64))
            }
            _ => Err(format!("{name} must be Unix seconds")),
        },
    }
}

/// Reads a secret from a file only its owner may read (a trailing newline is not part of it).
pub fn read_secret_file(path: &Path, key: &str) -> anyhow::Result<Secret> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{key}: cannot read {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{key}: {} may be read by group or others (mode {mode:o}); `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{key}: cannot read {}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.len() < 32 {
        anyhow::bail!("{key}: {} must hold at least 32 bytes", path.display());
    }
    Ok(Secret::new(secret))
}

/// A new service token: `hrld_` and 32 random bytes, base64url.
pub fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("hrld_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The lowercase hex SHA-256 of a token, as `api.tokens` holds it.
pub fn digest_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `herald token …`.
#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Make a new service token: prints it once, and the entry for api.tokens.
    Create {
        /// Who will hold it (logs and metrics show this name).
        #[arg(long)]
        name: String,
        /// What it may do; repeat for several: publish, subscriptions, read, admin.
        #[arg(long = "scope", required = true, value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<Scope>()))]
        scopes: Vec<Scope>,
    },
}

/// `herald token create`: nothing is stored; the operator pastes the entry.
pub fn run_cli(command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create { name, scopes } = command;
    let mut probe = Settings::default();
    probe.api.tokens = vec![crate::shared::config::ApiToken {
        name: name.clone(),
        sha256: "0".repeat(64),
        scopes: scopes.clone(),
    }];
    probe
        .validate()
        .map_err(|e| anyhow::anyhow!("--name: {}", e.message))?;
    let token = new_token();
    let digest = digest_hex(&token);
    let scopes: Vec<String> = scopes.iter().map(|s| format!("{:?}", s.as_str())).collect();
    println!("token (shown once; give it to {name}, herald keeps only its digest):");
    println!("  {token}");
    println!();
    println!("add to config.toml:");
    println!("[[api.tokens]]");
    println!("name = {name:?}");
    println!("sha256 = \"{digest}\"");
    println!("scopes = [{}]", scopes.join(", "));
    println!();
    println!("or in the environment (one variable lists every token):");
    println!(
        "HERALD_API__TOKENS='[{{name={name:?},sha256=\"{digest}\",scopes=[{}]}}]'",
        scopes.join(",")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::config::ApiToken;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn credentials() -> Credentials {
        let mut s = Settings::default();
        s.api.tokens = vec![ApiToken {
            name: "backend".into(),
            sha256: digest_hex("tok-1"),
            scopes: vec![Scope::Publish, Scope::Admin],
        }];
        s.api.subscriber_tokens.secret = Secret::new(SECRET);
        Credentials::from_settings(&s).expect("credentials")
    }

    /// Signs `claims`, with `iat` = [`NOW`] unless they set it (or null it).
    fn jwt(header: &str, mut claims: serde_json::Value, secret: &str) -> String {
        match claims.get("iat") {
            None => claims["iat"] = serde_json::json!(NOW),
            Some(serde_json::Value::Null) => {
                claims.as_object_mut().expect("object").remove("iat");
            }
            Some(_) => {}
        }
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(hmac::sign(&key, signed.as_bytes()));
        format!("{signed}.{signature}")
    }

    fn refusal(token: &str) -> String {
        match credentials().identify(Some(&format!("Bearer {token}")), NOW) {
            Err(Unauthenticated::BadSubscriberToken(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    #[test]
    fn a_service_token_is_known_by_its_digest_and_admin_includes_read() {
        let caller = credentials()
            .identify(Some("Bearer tok-1"), NOW)
            .expect("known");
        assert!(caller.may(Scope::Publish) && caller.may(Scope::Read) && caller.may(Scope::Admin));
        assert!(!caller.may(Scope::Subscriptions));
        assert_eq!(caller.label(), "backend");
        assert_eq!(
            credentials().identify(Some("Bearer tok-2"), NOW).err(),
            Some(Unauthenticated::UnknownToken)
        );
        assert_eq!(
            credentials().identify(None, NOW).err(),
            Some(Unauthenticated::Missing)
        );
        assert_eq!(
            credentials().identify(Some("Basic tok-1"), NOW).err(),
            Some(Unauthenticated::Missing)
        );
        assert!(credentials().identify(Some("bearer tok-1"), NOW).is_ok());
        assert!(credentials().identify(Some("BEARER  tok-1 "), NOW).is_ok());
        assert_eq!(
            credentials().identify(Some("Bearer "), NOW).err(),
            Some(Unauthenticated::Missing)
        );
    }

    #[test]
    fn a_subscriber_token_names_its_user_and_nothing_else() {
        let token = jwt(
            HS256,
            serde_json::json!({"sub": "u-42", "aud": "herald", "exp": NOW + 600, "topics": ["lot.7"]}),
            SECRET,
        );
        match credentials().identify(Some(&format!("Bearer {token}")), NOW) {
            Ok(Caller::Subscriber { user, topics }) => {
                assert_eq!(user, "u-42");
                assert_eq!(topics, vec!["lot.7".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        let caller = credentials()
            .identify(Some(&format!("Bearer {token}")), NOW)
            .expect("valid");
        assert!(Scope::ALL.iter().all(|s| !caller.may(*s)));
    }

    #[test]
    fn forged_expired_confused_and_long_lived_subscriber_tokens_are_refused() {
        let claims = serde_json::json!({"sub": "u-42", "aud": "herald", "exp": NOW + 600});
        assert!(refusal(&jwt(
            HS256,
            claims.clone(),
            "another-secret-another-secret-00"
        ))
        .contains("signature"));
        assert!(refusal(&jwt(r#"{"alg":"none"}"#, claims.clone(), SECRET)).contains("HS256"));
        assert!(refusal(&jwt(r#"{"alg":"HS512"}"#, claims.clone(), SECRET)).contains("HS256"));
        let with = |change: serde_json::Value| {
            let mut c = claims.clone();
            for (k, v) in change.as_object().expect("object") {
                // A null iat reaches `jwt`, which then leaves iat out.
                if v.is_null() && k != "iat" {
                    c.as_object_mut().expect("object").remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            refusal(&jwt(HS256, c, SECRET))
        };
        assert!(with(serde_json::json!({"exp": NOW - 31})).contains("expired"));
        assert!(with(serde_json::json!({"exp": null})).contains("exp"));
        assert!(with(serde_json::json!({"exp": -5})).contains("exp"));
        assert!(with(serde_json::json!({"exp": NOW + 2 * 24 * 3600})).contains("max_lifetime"));
        // Minted for a year, shown on its last day: still refused.
        assert!(
            with(serde_json::json!({"iat": NOW - 364 * 24 * 3600, "exp": NOW + 3600}))
                .contains("max_lifetime")
        );
        assert!(with(serde_json::json!({"iat": null})).contains("iat"));
        assert!(with(serde_json::json!({"iat": NOW + 600})).contains("iat"));
        assert!(with(serde_json::json!({"exp": "soon"})).contains("exp"));
        assert!(with(serde_json::json!({"aud": "other"})).contains("aud"));
        assert!(with(serde_json::json!({"aud": null})).contains("aud"));
        assert!(with(serde_json::json!({"sub": null})).contains("sub"));
        assert!(with(serde_json::json!({"sub": "u 42"})).contains("sub"));
        assert!(with(serde_json::json!({"nbf": NOW + 600})).contains("nbf"));
        assert!(with(serde_json::json!({"topics": "#"})).contains("topics"));
        assert!(refusal("a.b").contains("JWT"));
        assert!(refusal("a.b.c.d").contains("JWT"));
        assert!(refusal(&format!("{}.x.y", "a".repeat(5000))).contains("longer"));
        // A valid token with its payload swapped for another user's fails the signature.
        let good = jwt(HS256, claims.clone(), SECRET);
        let other = jwt(
            HS256,
            serde_json::json!({"sub": "u-1", "aud": "herald", "exp": NOW + 600}),
            SECRET,
        );
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[1] = other.split('.').nth(1).expect("payload");
        assert!(refusal(&parts.join(".")).contains("signature"));
    }

    #[test]
    fn while_a_secret_rotates_tokens_signed_with_either_are_accepted() {
        let old = "old-secret-old-secret-old-secret-0";
        let mut s = Settings::default();
        s.api.subscriber_tokens.secret = Secret::new(SECRET);
        s.api.subscriber_tokens.previous_secret = Secret::new(old);
        let rotating = Credentials::from_settings(&s).expect("credentials");
        let claims = serde_json::json!({"sub": "u-42", "aud": "herald", "exp": NOW + 600});
        for secret in [SECRET, old] {
            let token = jwt(HS256, claims.clone(), secret);
            assert!(rotating
                .identify(Some(&format!("Bearer {token}")), NOW)
                .is_ok());
        }
        let other = jwt(HS256, claims, "third-secret-third-secret-third-0");
        assert!(rotating
            .identify(Some(&format!("Bearer {other}")), NOW)
            .is_err());
    }

    #[test]
    fn open_mode_needs_no_token_and_subscriber_tokens_need_a_secret() {
        let open = Credentials::from_settings(&Settings::default()).expect("open");
        assert!(matches!(open.identify(None, NOW), Ok(Caller::Open)));
        let mut s = Settings::default();
        s.api.tokens = vec![ApiToken {
            name: "backend".into(),
            sha256: digest_hex("tok-1"),
            scopes: vec![Scope::Publish],
        }];
        let only_services = Credentials::from_settings(&s).expect("credentials");
        assert_eq!(
            only_services.identify(Some("Bearer a.b.c"), NOW).err(),
            Some(Unauthenticated::SubscribersOff)
        );
    }

    #[test]
    fn a_secret_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("{SECRET}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read_secret_file(&path, "api.subscriber_tokens.secret_file")
            .expect_err("refused")
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let secret = read_secret_file(&path, "api.subscriber_tokens.secret_file").expect("read");
        assert_eq!(secret.expose(), SECRET);
    }

    #[test]
    fn created_tokens_are_long_random_and_dotless() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("hrld_") && a.len() == 5 + 43 && !a.contains('.'));
        assert_eq!(
            digest_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
