//! Message encryption (RFC 8291: aes128gcm of RFC 8188, one record): a new
//! ephemeral P-256 key pair and a new random salt for every message, the
//! plaintext padded to a multiple of 128 bytes so that its exact length does
//! not show. Built on ring (P-256 in constant-time assembly, AES-GCM with the
//! CPU's AES instructions), which builds a message in a fraction of the time
//! web-push's own encryption (the `ece` crate over OpenSSL 3) takes: see
//! BENCHMARKS.md. web-push still signs the VAPID tokens.

use ring::rand::{SecureRandom, SystemRandom};
use ring::{aead, agreement, hkdf};

/// The record size written in the header: the whole body is one record.
const RECORD_SIZE: u32 = 4096;
/// Padded plaintext (with its delimiter) is a multiple of this many bytes.
const PAD_BLOCK: usize = 128;
/// salt (16) | record size (4) | key id length (1) | sender public key (65).
const HEADER_LEN: usize = 16 + 4 + 1 + 65;
const TAG_LEN: usize = 16;

/// Why a message cannot be encrypted for a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncryptError {
    /// `p256dh` is not an uncompressed P-256 point (65 bytes, on the curve).
    BadPublicKey,
    /// `auth` is not 16 bytes.
    BadAuthSecret(usize),
    /// The padded payload does not fit in one record.
    TooLarge(usize),
    /// The system's random source failed.
    Random,
}

impl std::fmt::Display for EncryptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncryptError::BadPublicKey => {
                write!(
                    f,
                    "the subscription's p256dh is not a valid P-256 public key"
                )
            }
            EncryptError::BadAuthSecret(n) => write!(
                f,
                "the subscription's auth secret is {n} bytes; it must be 16"
            ),
            EncryptError::TooLarge(n) => write!(
                f,
                "a payload of {n} bytes does not fit in one aes128gcm record"
            ),
            EncryptError::Random => write!(f, "the system's random source failed"),
        }
    }
}

/// The aes128gcm body of a message with `plaintext` for the user agent whose
/// public key is `ua_public` (65 bytes) and whose auth secret is `auth` (16).
pub fn encrypt(ua_public: &[u8], auth: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EncryptError> {
    if auth.len() != 16 {
        return Err(EncryptError::BadAuthSecret(auth.len()));
    }
    if ua_public.len() != 65 || ua_public[0] != 4 {
        return Err(EncryptError::BadPublicKey);
    }
    let rng = SystemRandom::new();
    let private = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
        .map_err(|_| EncryptError::Random)?;
    let as_public = private
        .compute_public_key()
        .map_err(|_| EncryptError::Random)?;
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| EncryptError::Random)?;
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, ua_public);
    agreement::agree_ephemeral(private, &peer, |ecdh_secret| {
        seal(
            ecdh_secret,
            ua_public,
            as_public.as_ref(),
            auth,
            &salt,
            plaintext,
            PAD_BLOCK,
        )
    })
    .map_err(|_| EncryptError::BadPublicKey)?
}

/// The body, given the shared secret and the sender's key and salt (split out
/// so that RFC 8291's worked example, which is not padded, can check it byte
/// for byte).
fn seal(
    ecdh_secret: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
    auth: &[u8],
    salt: &[u8; 16],
    plaintext: &[u8],
    pad_block: usize,
) -> Result<Vec<u8>, EncryptError> {
    // Plaintext, the last-record delimiter, zeros up to a multiple of pad_block.
    let padded = (plaintext.len() + 1).div_ceil(pad_block) * pad_block;
    if padded + TAG_LEN > RECORD_SIZE as usize {
        return Err(EncryptError::TooLarge(plaintext.len()));
    }
    // PRK_key = HMAC(auth, ecdh_secret); IKM = HKDF-Expand(PRK_key, key_info, 32).
    let prk_key = hkdf::Salt::new(hkdf::HKDF_SHA256, auth).extract(ecdh_secret);
    let mut ikm = [0u8; 32];
    expand(
        &prk_key,
        &[b"WebPush: info\0", ua_public, as_public],
        &mut ikm,
    );
    // PRK = HMAC(salt, IKM); the content key and the nonce from it.
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&ikm);
    let mut cek = [0u8; 16];
    expand(&prk, &[b"Content-Encoding: aes128gcm\0"], &mut cek);
    let mut nonce = [0u8; 12];
    expand(&prk, &[b"Content-Encoding: nonce\0"], &mut nonce);

    let mut body = Vec::with_capacity(HEADER_LEN + padded + TAG_LEN);
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_public.len() as u8);
    body.extend_from_slice(as_public);
    body.extend_from_slice(plaintext);
    body.push(2);
    body.resize(HEADER_LEN + padded, 0);
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_128_GCM, &cek).expect("16 bytes is an AES-128 key"),
    );
    let mut record = body.split_off(HEADER_LEN);
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::empty(),
        &mut record,
    )
    .expect("one record is far below AES-GCM's limit");
    body.extend_from_slice(&record);
    Ok(body)
}

/// HKDF-Expand into `out` (at most 32 bytes here, far below HKDF's limit).
fn expand(prk: &hkdf::Prk, info: &[&[u8]], out: &mut [u8]) {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    prk.expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("a short output is within HKDF's limit");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operate::sink::crypto::UserAgentKeys;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    fn b64(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(text).expect("base64url")
    }

    /// RFC 8291, Appendix A, byte for byte: the sender's key pair and the salt
    /// of the example, the shared secret computed with RustCrypto's p256.
    #[test]
    fn the_rfc_8291_example_is_reproduced() {
        use crate::operate::sink::crypto::rfc8291;
        let ua_private = hex::decode(rfc8291::UA_PRIVATE).expect("hex");
        let as_private = b64(rfc8291::AS_PRIVATE_B64);
        let auth = hex::decode(rfc8291::AUTH).expect("hex");
        let expected = hex::decode(rfc8291::BODY).expect("hex");
        let ua = p256::SecretKey::from_slice(&ua_private).expect("scalar");
        let ua_public = ua.public_key().to_sec1_bytes();
        let sender = p256::SecretKey::from_slice(&as_private).expect("scalar");
        let as_public = sender.public_key().to_sec1_bytes();
        assert_eq!(as_public[..], expected[21..86], "the example's sender key");
        let shared =
            p256::ecdh::diffie_hellman(sender.to_nonzero_scalar(), ua.public_key().as_affine());
        let salt: [u8; 16] = expected[..16].try_into().expect("16 bytes");
        let plaintext = b"When I grow up, I want to be a watermelon";
        let body = seal(
            shared.raw_secret_bytes(),
            &ua_public,
            &as_public,
            &auth,
            &salt,
            plaintext,
            1,
        )
        .expect("encrypts");
        assert_eq!(hex::encode(body), hex::encode(expected));
    }

    #[test]
    fn an_independent_implementation_decrypts_it() {
        let keys = UserAgentKeys::generate();
        for size in [0, 1, 126, 127, 128, 3052] {
            let plaintext: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let body = encrypt(&keys.public_bytes(), &keys.auth, &plaintext).expect("encrypts");
            assert_eq!(
                (body.len() - HEADER_LEN - TAG_LEN) % PAD_BLOCK,
                0,
                "padded to a block"
            );
            assert_eq!(
                keys.decrypt(&body).expect("decrypts"),
                plaintext,
                "{size} bytes"
            );
        }
    }

    #[test]
    fn every_message_has_its_own_key_and_salt() {
        let keys = UserAgentKeys::generate();
        let a = encrypt(&keys.public_bytes(), &keys.auth, b"x").expect("encrypts");
        let b = encrypt(&keys.public_bytes(), &keys.auth, b"x").expect("encrypts");
        assert_ne!(a[..16], b[..16], "salt");
        assert_ne!(a[21..86], b[21..86], "sender key");
    }

    #[test]
    fn bad_subscription_keys_are_refused() {
        let keys = UserAgentKeys::generate();
        let auth = keys.auth;
        let mut off_curve = keys.public_bytes();
        off_curve[64] ^= 1;
        assert_eq!(
            encrypt(&off_curve, &auth, b"x"),
            Err(EncryptError::BadPublicKey)
        );
        assert_eq!(
            encrypt(&keys.public_bytes()[..33], &auth, b"x"),
            Err(EncryptError::BadPublicKey)
        );
        assert_eq!(
            encrypt(&keys.public_bytes(), &auth[..8], b"x"),
            Err(EncryptError::BadAuthSecret(8))
        );
        assert_eq!(
            encrypt(&keys.public_bytes(), &auth, &[0; 4000]),
            Err(EncryptError::TooLarge(4000))
        );
    }
}
