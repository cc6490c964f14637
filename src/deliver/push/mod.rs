//! Sending one event to one subscription: build the encrypted Web Push message
//! with `web-push` (aes128gcm + VAPID), send it with one shared HTTP client, and
//! classify the answer.

pub mod breaker;

pub mod outcome;
pub mod vapid;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use sha2::{Digest, Sha256};
use web_push::{ContentEncoding, SubscriptionInfo, WebPushMessageBuilder};

use crate::shared::config::{BreakerSettings, PushSettings};
use crate::shared::endpoint;
use crate::shared::event::{Event, Urgency};
use crate::shared::subscriptions::Subscription;
pub use outcome::Outcome;
use vapid::{Signer, VapidKey};

/// What happened to one push: the outcome, and what the push service said.
#[derive(Debug, Clone)]
pub struct PushReport {
    pub outcome: Outcome,
    /// HTTP status, when an answer came.
    pub status: Option<u16>,
    /// What went wrong, when something did; never contains the endpoint's path.
    pub error: Option<String>,
    /// Nothing was sent: the push service's breaker is open. Such a retry does
    /// not count against the entry's attempts.
    pub held: bool,
}

impl PushReport {
    /// A failure on herald's side before or after the push (Redis, say): retry later.
    pub fn unsent(error: String) -> PushReport {
        PushReport::failed(Outcome::Retry { after: None }, error)
    }

    fn failed(outcome: Outcome, error: String) -> PushReport {
        PushReport {
            outcome,
            status: None,
            error: Some(error),
            held: false,
        }
    }
}

/// Sends pushes. One per process; cheap to share behind an `Arc`.
pub struct Pusher {
    client: reqwest::Client,
    breakers: breaker::Breakers,
    signer: Signer,
    allow_insecure: bool,
}

impl Pusher {
    pub fn new(
        settings: &PushSettings,
        breaker: BreakerSettings,
        key: VapidKey,
    ) -> anyhow::Result<Pusher> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")));
        if settings.allow_insecure_endpoints {
            tracing::warn!("push.allow_insecure_endpoints is on: plain-http and private-address endpoints are accepted; never use this in production");
        } else {
            // A public name that resolves to a private address is refused at connect time too.
            builder = builder.dns_resolver(Arc::new(PublicOnlyResolver));
        }
        let client = builder
            .build()
            .context("cannot build the HTTP client for push services")?;
        Ok(Pusher {
            client,
            breakers: breaker::Breakers::new(breaker),
            signer: Signer::new(key, settings.vapid_subject.clone()),
            allow_insecure: settings.allow_insecure_endpoints,
        })
    }

    /// The VAPID public key browsers subscribe with.
    pub fn public_key(&self) -> &str {
        self.signer.public_key()
    }

    /// Pushes `event` to `sub` and says what came of it. Never panics on bad input.
    pub async fn push(&self, sub: &Subscription, event: &Event) -> PushReport {
        let service = crate::shared::metrics::service_class_of(&sub.endpoint);
        let report = self.push_inner(sub, event, service).await;
        let outcome = match report.outcome {
            Outcome::Delivered => "delivered",
            Outcome::Gone => "gone",
            Outcome::Retry { .. } if report.held => "not_sent",
            Outcome::Retry { .. } => "retry",
            Outcome::DeadLetter { .. } => "dead_lettered",
        };
        crate::shared::metrics::push(outcome, service);
        report
    }

    async fn push_inner(
        &self,
        sub: &Subscription,
        event: &Event,
        service: &'static str,
    ) -> PushReport {
        let url = match endpoint::check(&sub.endpoint, self.allow_insecure) {
            Ok(url) => url,
            Err(e) => {
                return PushReport::failed(
                    Outcome::DeadLetter {
                        reason: "invalid_subscription",
                    },
                    format!("endpoint refused: {e}"),
                )
            }
        };
        let origin = endpoint::origin(&url);
        if let Err(wait) = self.breakers.admit(&origin, std::time::Instant::now()) {
            return PushReport {
                outcome: Outcome::Retry { after: Some(wait) },
                status: None,
                error: Some(format!("breaker open for {origin}: not sent")),
                held: true,
            };
        }
        let info = SubscriptionInfo::new(
            sub.endpoint.as_str(),
            sub.p256dh.as_str(),
            sub.auth.as_str(),
        );
        let signature = match self.signer.signature(&origin, &info) {
            Ok(sig) => sig,
            Err(e) => {
                return PushReport::failed(
                    Outcome::DeadLetter {
                        reason: "vapid_error",
                    },
                    e.to_string(),
                )
            }
        };
        let payload = event.payload();
        let ttl = event.ttl;
        let urgency = event.urgency;
        let topic = event.key.as_deref().map(topic_for_key);
        // Encryption is a few hundred microseconds of CPU: keep it off the reactor.
        let built = tokio::task::spawn_blocking(move || {
            let mut builder = WebPushMessageBuilder::new(&info);
            builder.set_ttl(ttl);
            builder.set_urgency(web_urgency(urgency));
            if let Some(topic) = topic {
                builder.set_topic(topic);
            }
            builder.set_payload(ContentEncoding::Aes128Gcm, &payload);
            builder.set_vapid_signature(signature);
            builder.build()
        })
        .await;
        let message = match built {
            Ok(Ok(message)) => message,
            Ok(Err(e)) => {
                return PushReport::failed(
                    Outcome::DeadLetter {
                        reason: "invalid_subscription",
                    },
                    format!("cannot build the message: {e}"),
                )
            }
            Err(e) => {
                return PushReport::failed(
                    Outcome::Retry { after: None },
                    format!("encryption task failed: {e}"),
                )
            }
        };
        let Some(body) = message.payload else {
            return PushReport::failed(
                Outcome::DeadLetter { reason: "internal" },
                "message has no payload".into(),
            );
        };
        let mut request = self
            .client
            .post(url.clone())
            .header("TTL", message.ttl.to_string())
            .header("Content-Encoding", body.content_encoding.to_str())
            .header("Content-Type", "application/octet-stream");
        if let Some(urgency) = message.urgency {
            request = request.header("Urgency", urgency.to_string());
        }
        if let Some(topic) = message.topic {
            request = request.header("Topic", topic);
        }
        for (name, value) in body.crypto_headers {
            request = request.header(name, value);
        }
        let sent = std::time::Instant::now();
        let response = request.body(body.content).send().await;
        crate::shared::metrics::push_duration(service, sent.elapsed());
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                self.breakers
                    .record(&origin, breaker::Signal::Failure, std::time::Instant::now());
                return PushReport::failed(
                    outcome::classify_transport_error(),
                    format!(
                        "request to {origin} failed: {}",
                        describe_transport_error(&e)
                    ),
                );
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = if response.status().is_success() {
            String::new()
        } else {
            // A little of the body explains a refusal; never read an unbounded amount.
            let bytes = response.bytes().await.unwrap_or_default();
            String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned()
        };
        let outcome = outcome::classify(
            status,
            retry_after.as_deref(),
            url.host_str().unwrap_or(""),
            &text,
            Utc::now(),
        );
        let error = (!outcome.is_terminal() || outcome == Outcome::Gone).then(|| {
            format!(
                "{origin} answered {status}{}",
                if text.is_empty() {
                    String::new()
                } else {
                    format!(": {}", text.trim())
                }
            )
        });
        self.breakers.record(
            &origin,
            breaker_signal(&outcome, status),
            std::time::Instant::now(),
        );
        PushReport {
            outcome,
            status: Some(status),
            error,
            held: false,
        }
    }
}

/// What an answer says about the push service's health.
fn breaker_signal(outcome: &Outcome, status: u16) -> breaker::Signal {
    match (outcome, status) {
        (Outcome::Retry { after }, 429 | 406) => breaker::Signal::Throttled(*after),
        (Outcome::Retry { .. }, _) => breaker::Signal::Failure,
        (
            Outcome::DeadLetter {
                reason: "push_unauthorized",
            },
            _,
        ) => breaker::Signal::Failure,
        _ => breaker::Signal::Healthy,
    }
}

/// The Web Push `Topic` for an ordering key: at most 32 base64url characters,
/// so the push service replaces a stale undelivered message of the same key.
pub fn topic_for_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..24])
}

fn web_urgency(u: Urgency) -> web_push::Urgency {
    match u {
        Urgency::VeryLow => web_push::Urgency::VeryLow,
        Urgency::Low => web_push::Urgency::Low,
        Urgency::Normal => web_push::Urgency::Normal,
        Urgency::High => web_push::Urgency::High,
    }
}

/// reqwest's errors print the URL, whose path is a credential; say what kind of failure it was instead.
fn describe_transport_error(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_request() {
        "request error"
    } else if e.is_body() {
        "body error"
    } else {
        "transport error"
    }
}

/// Resolves names like the system does, then keeps only public addresses.
struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| endpoint::is_public_ip(a.ip()))
                .collect();
            if addrs.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves to no public address").into();
                return Err(err);
            }
            let iter: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(iter)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topic_header_fits_the_limit_and_is_stable() {
        let t = topic_for_key("12가3456");
        assert_eq!(t.len(), 32);
        assert!(t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(t, topic_for_key("12가3456"));
        assert_ne!(t, topic_for_key("12가3457"));
    }
}
