//! What a browser and a push service check, written independently of the
//! sender's implementation (web-push encrypts with OpenSSL through `ece`; this
//! decrypts with RustCrypto): aes128gcm decryption (RFC 8291, RFC 8188) and
//! VAPID token verification (RFC 8292).

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

const TAG_LEN: usize = 16;
const HEADER_MIN: usize = 16 + 4 + 1;

/// A user agent's subscription keys: what a browser keeps to read its pushes.
#[derive(Clone)]
pub struct UserAgentKeys {
    pub secret: SecretKey,
    pub auth: [u8; 16],
}

impl UserAgentKeys {
    /// A fresh P-256 key pair and 16 random bytes of auth secret, as a browser makes them.
    pub fn generate() -> UserAgentKeys {
        use rand::RngCore;
        let mut auth = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut auth);
        UserAgentKeys {
            secret: SecretKey::random(&mut rand::rngs::OsRng),
            auth,
        }
    }

    /// The uncompressed public key (65 bytes).
    pub fn public_bytes(&self) -> Vec<u8> {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        self.secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    pub fn p256dh_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public_bytes())
    }

    pub fn auth_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.auth)
    }

    /// Decrypts an `aes128gcm` push body (RFC 8291 §3.4, RFC 8188 §2).
    pub fn decrypt(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        if body.len() < HEADER_MIN {
            return Err(format!(
                "body of {} bytes is shorter than the aes128gcm header",
                body.len()
            ));
        }
        let salt = &body[..16];
        let rs = u32::from_be_bytes(body[16..20].try_into().expect("4 bytes")) as usize;
        let id_len = body[20] as usize;
        if rs < TAG_LEN + 2 {
            return Err(format!("record size {rs} is too small"));
        }
        if body.len() < HEADER_MIN + id_len {
            return Err("body ends inside the key id".into());
        }
        let sender_public = &body[HEADER_MIN..HEADER_MIN + id_len];
        let ciphertext = &body[HEADER_MIN + id_len..];
        let sender = PublicKey::from_sec1_bytes(sender_public)
            .map_err(|_| "the key id is not the sender's P-256 public key".to_string())?;
        let shared =
            p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), sender.as_affine());

        // IKM = HKDF(auth, ecdh_secret, "WebPush: info\0" || ua_public || as_public)
        let mut info = b"WebPush: info\0".to_vec();
        info.extend_from_slice(&self.public_bytes());
        info.extend_from_slice(sender_public);
        let mut ikm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&self.auth), &shared.raw_secret_bytes()[..])
            .expand(&info, &mut ikm)
            .map_err(|_| "hkdf expand failed".to_string())?;
        let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let mut cek = [0u8; 16];
        let mut base_nonce = [0u8; 12];
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
            .map_err(|_| "hkdf expand failed".to_string())?;
        prk.expand(b"Content-Encoding: nonce\0", &mut base_nonce)
            .map_err(|_| "hkdf expand failed".to_string())?;
        let cipher = Aes128Gcm::new_from_slice(&cek).expect("16-byte key");

        let records: Vec<&[u8]> = ciphertext.chunks(rs).collect();
        if records.is_empty() {
            return Err("no ciphertext".into());
        }
        let mut plaintext = Vec::with_capacity(ciphertext.len());
        for (seq, record) in records.iter().enumerate() {
            let mut nonce = base_nonce;
            for (i, b) in (seq as u128).to_be_bytes()[4..].iter().enumerate() {
                nonce[i] ^= b;
            }
            let mut clear = cipher.decrypt(&Nonce::from(nonce), *record).map_err(|_| {
                format!("record {seq} does not decrypt: wrong keys or tampered body")
            })?;
            let last = seq + 1 == records.len();
            // Strip the padding: zeros, then the delimiter (2 on the last record, 1 before).
            let end = clear
                .iter()
                .rposition(|&b| b != 0)
                .ok_or("a record holds only padding")?;
            let expected = if last { 2 } else { 1 };
            if clear[end] != expected {
                return Err(format!(
                    "record {seq} ends with delimiter {} instead of {expected}",
                    clear[end]
                ));
            }
            clear.truncate(end);
            plaintext.extend_from_slice(&clear);
        }
        Ok(plaintext)
    }
}

/// The claims a push service checks in a VAPID token.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct VapidClaims {
    pub aud: String,
    pub exp: i64,
    pub sub: Option<String>,
}

/// Why a VAPID check failed, and the status a push service would answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VapidRejection {
    pub status: u16,
    pub reason: String,
}

fn reject(status: u16, reason: impl Into<String>) -> VapidRejection {
    VapidRejection {
        status,
        reason: reason.into(),
    }
}

/// Verifies `Authorization: vapid t=<jwt>, k=<key>` for a push to `origin` at unix time `now`.
pub fn verify_vapid(
    authorization: Option<&str>,
    origin: &str,
    now: i64,
) -> Result<VapidClaims, VapidRejection> {
    let header = authorization.ok_or_else(|| reject(401, "no Authorization header"))?;
    let params = header
        .strip_prefix("vapid ")
        .ok_or_else(|| reject(401, "Authorization is not the vapid scheme"))?;
    let mut token = None;
    let mut key = None;
    for part in params.split(',') {
        let part = part.trim();
        if let Some(t) = part.strip_prefix("t=") {
            token = Some(t);
        } else if let Some(k) = part.strip_prefix("k=") {
            key = Some(k);
        }
    }
    let (token, key) = match (token, key) {
        (Some(t), Some(k)) => (t, k),
        _ => return Err(reject(401, "vapid needs both t= and k=")),
    };
    let key_bytes = URL_SAFE_NO_PAD
        .decode(key.trim_end_matches('='))
        .map_err(|_| reject(401, "k= is not base64url"))?;
    let verifying = VerifyingKey::from_sec1_bytes(&key_bytes)
        .map_err(|_| reject(401, "k= is not a P-256 public key"))?;
    let mut parts = token.split('.');
    let (Some(head), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(reject(401, "t= is not a JWT"));
    };
    let decode = |s: &str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| reject(401, "a JWT part is not base64url"))
    };
    let head_json: serde_json::Value = serde_json::from_slice(&decode(head)?)
        .map_err(|_| reject(401, "the JWT header is not JSON"))?;
    if head_json.get("alg").and_then(|a| a.as_str()) != Some("ES256") {
        return Err(reject(401, "the JWT is not signed with ES256"));
    }
    let signature = Signature::from_slice(&decode(sig)?)
        .map_err(|_| reject(401, "the JWT signature is malformed"))?;
    verifying
        .verify(format!("{head}.{body}").as_bytes(), &signature)
        .map_err(|_| reject(401, "the JWT signature does not verify with k="))?;
    let claims: VapidClaims = serde_json::from_slice(&decode(body)?)
        .map_err(|_| reject(401, "the JWT claims lack aud or exp"))?;
    if claims.aud != origin {
        return Err(reject(
            401,
            format!(
                "aud {:?} is not this service's origin {origin:?}",
                claims.aud
            ),
        ));
    }
    if claims.exp <= now {
        return Err(reject(401, "the JWT has expired"));
    }
    if claims.exp > now + 24 * 3600 {
        return Err(reject(401, "exp is more than 24 hours ahead"));
    }
    match claims.sub.as_deref() {
        Some(s) if s.starts_with("mailto:") || s.starts_with("https:") => {}
        _ => return Err(reject(401, "sub must be a mailto: or https: contact")),
    }
    Ok(claims)
}

/// RFC 8291 Appendix A, the worked example (hex): the user agent's private
/// key, its auth secret, the sender's private key (base64url, as the RFC gives
/// it) and the message body. Both sides of herald's crypto are checked on it.
#[cfg(test)]
pub(crate) mod rfc8291 {
    pub const UA_PRIVATE: &str = "ab5757a70dd4a53e553a6bbf71ffefea2874ec07a6b379e3c48f895a02dc33de";
    pub const AUTH: &str = "05305932a1c7eabe13b6cec9fda48882";
    pub const AS_PRIVATE_B64: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
    pub const BODY: &str = concat!(
        "0c6bfaadad67958803092d454676f397000010004104fe33f4ab0dea71914db558",
        "23f73b54948f41306d920732dbb9a59a53286482200e597a7b7bc260ba1c227998",
        "580992e93973002f3012a28ae8f06bbb78e5ec0ff297de5b429bba7153d3a4ae0c",
        "aa091fd425f3b4b5414add8ab37a19c1bbb05cf5cb5b2a2e0562d558635641ec52",
        "812c6c8ff42e95ccb86be7cd"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8291 Appendix A: the worked example, decrypted with the user agent's keys.
    #[test]
    fn the_rfc_8291_example_decrypts() {
        let ua_private = hex::decode(rfc8291::UA_PRIVATE).expect("hex");
        let auth = hex::decode(rfc8291::AUTH).expect("hex");
        let body = hex::decode(rfc8291::BODY).expect("hex");
        let keys = UserAgentKeys {
            secret: SecretKey::from_slice(&ua_private).expect("scalar"),
            auth: auth.try_into().expect("16 bytes"),
        };
        assert_eq!(
            hex::encode(keys.public_bytes()),
            "042571b2becdfde360551aaf1ed0f4cd366c11cebe555f89bcb7b186a53339173168ece2ebe018597bd30479b86e3c8f8eced577ca59187e9246990db682008b0e"
        );
        let plaintext = keys.decrypt(&body).expect("decrypts");
        assert_eq!(plaintext, b"When I grow up, I want to be a watermelon");
    }

    #[test]
    fn a_tampered_body_does_not_decrypt() {
        let keys = UserAgentKeys::generate();
        let info = web_push::SubscriptionInfo::new(
            "https://x.example/1",
            &keys.p256dh_b64(),
            &keys.auth_b64(),
        );
        let mut builder = web_push::WebPushMessageBuilder::new(&info);
        builder.set_payload(web_push::ContentEncoding::Aes128Gcm, b"hello");
        let message = builder.build().expect("builds");
        let mut body = message.payload.expect("payload").content;
        assert_eq!(keys.decrypt(&body).expect("decrypts"), b"hello");
        let last = body.len() - 1;
        body[last] ^= 1;
        assert!(keys.decrypt(&body).is_err());
        assert!(UserAgentKeys::generate().decrypt(&body).is_err());
    }

    #[test]
    fn vapid_tokens_are_checked() {
        use crate::deliver::push::vapid::{Signer, VapidKey};
        let (key, _) = VapidKey::generate();
        let signer = Signer::new(key, "mailto:ops@example.org".into());
        let sig = signer.signature("http://127.0.0.1:9").expect("signs");
        let header = format!(
            "vapid t={}, k={}",
            sig.auth_t,
            URL_SAFE_NO_PAD.encode(&sig.auth_k)
        );
        let now = chrono::Utc::now().timestamp();
        let claims = verify_vapid(Some(&header), "http://127.0.0.1:9", now).expect("valid");
        assert_eq!(claims.sub.as_deref(), Some("mailto:ops@example.org"));
        assert_eq!(
            verify_vapid(Some(&header), "http://127.0.0.1:10", now)
                .expect_err("aud")
                .status,
            401
        );
        assert!(verify_vapid(None, "http://127.0.0.1:9", now).is_err());
        assert!(verify_vapid(Some(&header), "http://127.0.0.1:9", now + 13 * 3600).is_err());
        let (other, _) = VapidKey::generate();
        let forged = format!("vapid t={}, k={}", sig.auth_t, other.public_key);
        assert!(verify_vapid(Some(&forged), "http://127.0.0.1:9", now).is_err());
    }
}
