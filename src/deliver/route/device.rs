//! A subscription as pushing needs it, compactly: the routing index holds one
//! per subscription with interests, so 100,000 of them must stay small. The
//! keys are decoded once, here, not on every push.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::shared::subscriptions::{Format, HeaderFilter, Subscription};

/// One device to push to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The id, then the endpoint, in one allocation.
    text: Box<str>,
    id_len: u32,
    keys: Keys,
    /// Only topic routing needs it: `None` for most.
    headers: Option<Box<HeaderFilter>>,
    /// The payload it asked for.
    format: Format,
}

/// The user agent's keys (RFC 8291), or why the stored ones cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Keys {
    Decoded {
        p256dh: [u8; 65],
        auth: [u8; 16],
    },
    /// Stored keys are not checked again when read back (edited by hand,
    /// written by another version): a push to this device is refused as the
    /// subscription's fault, before anything is sent.
    Unusable(Box<str>),
}

impl Device {
    pub fn new(sub: &Subscription) -> Device {
        let keys = match (
            decode::<65>("p256dh", &sub.p256dh),
            decode::<16>("auth", &sub.auth),
        ) {
            (Ok(p256dh), Ok(auth)) => Keys::Decoded { p256dh, auth },
            (Err(problem), _) | (_, Err(problem)) => Keys::Unusable(problem.into()),
        };
        Device {
            text: format!("{}{}", sub.id, sub.endpoint).into_boxed_str(),
            id_len: sub.id.len() as u32,
            keys,
            headers: sub.headers.clone().map(Box::new),
            format: sub.format,
        }
    }

    /// The subscription id.
    pub fn id(&self) -> &str {
        &self.text[..self.id_len as usize]
    }

    /// The push service URL, as stored (checked again before each push).
    pub fn endpoint(&self) -> &str {
        &self.text[self.id_len as usize..]
    }

    /// The user agent's public key and authentication secret, or what is wrong with them.
    pub fn keys(&self) -> Result<(&[u8; 65], &[u8; 16]), &str> {
        match &self.keys {
            Keys::Decoded { p256dh, auth } => Ok((p256dh, auth)),
            Keys::Unusable(problem) => Err(problem),
        }
    }

    pub fn headers(&self) -> Option<&HeaderFilter> {
        self.headers.as_deref()
    }

    pub fn format(&self) -> Format {
        self.format
    }
}

/// A base64url key of exactly `N` bytes.
fn decode<const N: usize>(name: &str, text: &str) -> Result<[u8; N], String> {
    // Decoding a megabyte of text to find it is too long is wasted work.
    if text.len() > N * 2 + 4 {
        return Err(format!(
            "{name} is {} characters, far more than {N} bytes need",
            text.len()
        ));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| format!("{name} is not base64url: {e}"))?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{name} is {} bytes, not {N}", bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_keeps_what_pushing_needs_in_little_memory() {
        let sub = Subscription {
            id: "abc".into(),
            user: None,
            endpoint: "https://push.example.net/x".into(),
            p256dh: URL_SAFE_NO_PAD.encode([4u8; 65]),
            auth: URL_SAFE_NO_PAD.encode([9u8; 16]),
            topics: vec!["a.#".into()],
            headers: None,
            format: Format::Herald,
            created_at: String::new(),
        };
        let device = Device::new(&sub);
        assert_eq!(device.id(), "abc");
        assert_eq!(device.endpoint(), "https://push.example.net/x");
        assert_eq!(device.keys(), Ok((&[4u8; 65], &[9u8; 16])));
        assert!(
            std::mem::size_of::<Device>() <= 128,
            "{}",
            std::mem::size_of::<Device>()
        );

        let short = Device::new(&Subscription {
            auth: URL_SAFE_NO_PAD.encode([9u8; 8]),
            ..sub.clone()
        });
        assert_eq!(short.keys(), Err("auth is 8 bytes, not 16"));
        let huge = Device::new(&Subscription {
            p256dh: "A".repeat(1 << 20),
            ..sub
        });
        assert!(huge.keys().is_err_and(|e| e.len() < 100));
    }
}
