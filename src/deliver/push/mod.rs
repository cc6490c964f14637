//! Sending one event to one subscription: build the encrypted Web Push message
//! (aes128gcm with ring: [`encrypt`]; the VAPID token signed with `web-push`
//! and cached per origin: [`vapid`]), send it with one shared HTTP client, and
//! classify the answer. What is the same for every device of an event (the
//! payload, its headers) is made once per event: [`Notice`].
//!
//! A push service is someone else's server, and its answer affects that push,
//! that device, and at most that service, in proportion to the evidence:
//! one device's `429` slows that device ([`pacing`]); only many devices
//! failing open the service's [`breaker`]; a slow or hanging service holds at
//! most its share of the in-flight slots ([`pacing`]); an error body is read up
//! to [`ERROR_BODY_CAP`] bytes; `Retry-After` is bounded ([`outcome`]); a
//! refused VAPID token is signed again once ([`vapid`]).

pub mod breaker;
pub mod encrypt;
pub mod outcome;
pub mod pacing;
pub mod vapid;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use sha2::{Digest, Sha256};

use super::route::Device;
use crate::shared::config::Settings;
use crate::shared::endpoint;
use crate::shared::event::{Content, Event};
use crate::shared::subscriptions::{Format, Subscription};
pub use outcome::Outcome;
use vapid::{Signer, VapidKey};

/// Bytes of an error answer's body kept for the log line; the rest is never read.
pub const ERROR_BODY_CAP: usize = 512;

/// What happened to one push: the outcome, and what the push service said.
#[derive(Debug, Clone)]
pub struct PushReport {
    pub outcome: Outcome,
    /// HTTP status, when an answer came.
    pub status: Option<u16>,
    /// What went wrong, when something did; never contains the endpoint's path.
    pub error: Option<String>,
    /// Nothing was sent (the service's breaker is open, the subscription waits out a
    /// `429`, the service's slots are taken): such a retry does not count against
    /// the entry's attempts.
    pub not_sent: bool,
    /// Handling this device panicked (herald's bug, or a hostile input it did not
    /// survive); it is retried, then dead-lettered with reason `panic`.
    pub panicked: bool,
}

impl PushReport {
    /// A failure on herald's side before or after the push (Redis, say): retry later.
    pub fn unsent(error: String) -> PushReport {
        PushReport::failed(Outcome::Retry { after: None }, error)
    }

    /// Not sent, on purpose, for `wait`: the attempt does not count.
    pub fn not_sent(wait: Duration, error: String) -> PushReport {
        PushReport {
            not_sent: true,
            ..PushReport::failed(Outcome::Retry { after: Some(wait) }, error)
        }
    }

    fn failed(outcome: Outcome, error: String) -> PushReport {
        PushReport {
            outcome,
            status: None,
            error: Some(error),
            not_sent: false,
            panicked: false,
        }
    }
}

/// A function called before each push, with the target: for tests and fault
/// drills (it may panic, to show that a panic is one device's failed attempt).
pub type PushHook = Arc<dyn Fn(&Device) + Send + Sync>;

/// What a worker can say about its push services now.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct PushState {
    /// Origins whose breaker is open, with the seconds left.
    pub open_breakers: Vec<(String, f64)>,
    /// Subscriptions waiting out a `429` in this process.
    pub waiting_subscriptions: usize,
    /// Pushes the push services accepted since this process started.
    pub delivered: u64,
}

/// Sends pushes. One per process; cheap to share behind an `Arc`.
pub struct Pusher {
    client: reqwest::Client,
    /// Pushes in flight in this process (`worker.concurrency`), taken after the
    /// service's own slot: pushes waiting for a full service hold none of these.
    in_flight: tokio::sync::Semaphore,
    breakers: breaker::Breakers,
    pacing: pacing::Pacing,
    signer: Signer,
    endpoint_rules: endpoint::Rules,
    max_retry_after: Duration,
    hook: Option<PushHook>,
    /// Pushes accepted so far (the console's delivery rate comes from it).
    delivered: std::sync::atomic::AtomicU64,
    /// `events.site_url`, for Declarative Web Push messages.
    site_url: Option<url::Url>,
}

impl Pusher {
    pub fn new(settings: &Settings, key: VapidKey) -> anyhow::Result<Pusher> {
        let push = &settings.push;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(push.connect_timeout)
            // The whole request, the answer's body included: a trickle ends here.
            .timeout(push.request_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .redirect(reqwest::redirect::Policy::none())
            // HTTPS_PROXY/ALL_PROXY would move the address check to the proxy,
            // not the target: only push.proxy, explicitly, is used.
            .no_proxy()
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")));
        let proxy = push.proxy.expose();
        if !proxy.is_empty() {
            // Only the explicit setting: the proxy's own address is the operator's choice.
            let proxy = reqwest::Proxy::all(proxy).context("push.proxy is not a proxy URL")?;
            builder = builder.proxy(proxy);
            tracing::info!(proxy = %crate::shared::config::redacted_proxy(push.proxy.expose()), "pushes go through push.proxy, which resolves push services' names");
        }
        if push.allow_insecure_endpoints {
            tracing::warn!("push.allow_insecure_endpoints is on: plain-http and private-address endpoints are accepted; never use this in production");
        } else if proxy.is_empty() {
            // A public name that resolves to a private address is refused at connect time too.
            builder = builder.dns_resolver(Arc::new(PublicOnlyResolver));
        }
        for ca in extra_authorities(&push.extra_ca_file)? {
            builder = builder.add_root_certificate(ca);
        }
        let client = builder.build().with_context(|| {
            if push.extra_ca_file.as_os_str().is_empty() {
                "cannot build the HTTP client for push services".to_string()
            } else {
                format!(
                    "cannot build the HTTP client for push services: is push.extra_ca_file ({}) a PEM bundle of CA certificates?",
                    push.extra_ca_file.display()
                )
            }
        })?;
        Ok(Pusher {
            client,
            in_flight: tokio::sync::Semaphore::new(settings.worker.concurrency.max(1)),
            breakers: breaker::Breakers::new(settings.breaker.clone()),
            pacing: pacing::Pacing::new(
                settings.worker.concurrency,
                push.service_share,
                push.connect_timeout,
                settings.retry.base_delay,
            ),
            signer: Signer::new(key, push.vapid_subject.clone()),
            endpoint_rules: endpoint::Rules::from_settings(push),
            max_retry_after: push.max_retry_after,
            hook: None,
            delivered: std::sync::atomic::AtomicU64::new(0),
            site_url: settings.events.site(),
        })
    }

    /// Calls `hook` before every push (tests, fault drills).
    pub fn with_hook(mut self, hook: PushHook) -> Pusher {
        self.hook = Some(hook);
        self
    }

    /// The VAPID public key browsers subscribe with.
    pub fn public_key(&self) -> &str {
        self.signer.public_key()
    }

    /// Open breakers and waiting subscriptions, now.
    pub fn state(&self) -> PushState {
        let now = Instant::now();
        let mut open_breakers: Vec<(String, f64)> = self
            .breakers
            .open(now)
            .into_iter()
            .map(|(origin, left)| (origin, left.as_secs_f64()))
            .collect();
        open_breakers.sort_by(|a, b| a.0.cmp(&b.0));
        PushState {
            open_breakers,
            waiting_subscriptions: self.pacing.waiting_count(now),
            delivered: self.delivered.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Pushes `event` to `sub` with a `TTL` of `ttl` seconds and says what came of it.
    /// Never panics on bad input from outside.
    pub async fn push(&self, sub: &Subscription, event: &Event, ttl: u32) -> PushReport {
        let notice = Notice::of(event, self.site_url.as_ref());
        self.push_checked(&Device::new(sub), &notice, ttl, &|| true)
            .await
    }

    /// [`Pusher::push`] of an event's [`Notice`], asking `may_send` right before
    /// the request goes out (after any wait for a slot): when it says no,
    /// nothing is sent.
    pub async fn push_checked(
        &self,
        sub: &Device,
        notice: &Notice,
        ttl: u32,
        may_send: &(dyn Fn() -> bool + Sync),
    ) -> PushReport {
        let service = crate::shared::metrics::service_class_of(sub.endpoint());
        let report = self.push_inner(sub, notice, ttl, service, may_send).await;
        let outcome = match report.outcome {
            Outcome::Delivered => {
                self.delivered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                "delivered"
            }
            Outcome::Gone => "gone",
            Outcome::Retry { .. } if report.not_sent => "not_sent",
            Outcome::Retry { .. } => "retry",
            Outcome::DeadLetter { .. } => "dead_lettered",
        };
        crate::shared::metrics::push(outcome, service);
        report
    }

    async fn push_inner(
        &self,
        sub: &Device,
        notice: &Notice,
        ttl: u32,
        service: &'static str,
        may_send: &(dyn Fn() -> bool + Sync),
    ) -> PushReport {
        if let Some(hook) = &self.hook {
            hook(sub);
        }
        let url = match endpoint::check(sub.endpoint(), &self.endpoint_rules) {
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
        if let Some(wait) = self.pacing.waiting(sub.id(), Instant::now()) {
            return PushReport::not_sent(
                wait,
                format!("{origin} asked this subscription to slow down (429): not sent"),
            );
        }
        let admission = match self.breakers.admit(&origin, Instant::now()) {
            Ok(admission) => admission,
            Err(wait) => {
                return PushReport::not_sent(wait, format!("breaker open for {origin}: not sent"))
            }
        };
        let Some(_slot) = self.pacing.slot(&origin).await else {
            return PushReport::not_sent(
                Duration::ZERO,
                format!(
                    "every in-flight slot of {origin} stayed taken (push.service_share): not sent"
                ),
            );
        };
        let _in_flight = self
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let mut refused_token = false;
        loop {
            let message = match self.build(&origin, sub, notice) {
                Ok(message) => message,
                Err(report) => return report,
            };
            // Right before the request: after any wait, is the push still this processor's?
            if !may_send() {
                return PushReport::not_sent(
                    Duration::ZERO,
                    "this processor no longer holds the entry, or its heartbeats stopped landing (paused, cut off from Redis): not sent".into(),
                );
            }
            let (report, wait) = self
                .send(&url, &origin, notice, ttl, message, service)
                .await;
            // A refused token is ours (expired, or the service's clock): sign a new one, try once more.
            let refused = matches!(report.status, Some(401 | 403))
                && matches!(report.outcome, Outcome::DeadLetter { .. });
            if refused && !refused_token {
                refused_token = true;
                self.signer.forget(&origin);
                tracing::info!(%origin, status = ?report.status, "push service refused the VAPID token; signing a new one and trying once more");
                continue;
            }
            // 429 (and WNS's 406, which classify makes a retry) is about this device first.
            let throttled = matches!(report.status, Some(429 | 406))
                && matches!(report.outcome, Outcome::Retry { .. });
            let signal = match &report.outcome {
                Outcome::Retry { .. }
                | Outcome::DeadLetter {
                    reason: "push_unauthorized",
                } => breaker::Signal::Failure {
                    subscription: sub.id(),
                    throttled,
                },
                _ => breaker::Signal::Healthy,
            };
            admission.record(signal);
            if throttled {
                self.pacing.slow_down(sub.id(), wait, Instant::now());
            }
            return report;
        }
    }

    /// Encrypts the payload for `sub` and finds the VAPID token of its origin
    /// (about 60 microseconds of CPU, on the async threads: with the earlier,
    /// slower encryption the blocking pool made no measurable difference).
    fn build(&self, origin: &str, sub: &Device, notice: &Notice) -> Result<Message, PushReport> {
        let invalid = |problem: String| {
            PushReport::failed(
                Outcome::DeadLetter {
                    reason: "invalid_subscription",
                },
                format!("cannot build the message: {problem}"),
            )
        };
        let (ua_public, auth) = sub.keys().map_err(|problem| invalid(problem.to_string()))?;
        let payload = notice.payload_for(sub.format()).map_err(|problem| {
            PushReport::failed(
                Outcome::DeadLetter {
                    reason: "no_site_url",
                },
                problem.to_string(),
            )
        })?;
        let body = encrypt::encrypt(ua_public, auth, payload).map_err(|e| match e {
            encrypt::EncryptError::BadPublicKey | encrypt::EncryptError::BadAuthSecret(_) => {
                invalid(e.to_string())
            }
            // Intake caps payloads well below one record; never expected.
            encrypt::EncryptError::TooLarge(_) => PushReport::failed(
                Outcome::DeadLetter {
                    reason: "payload_too_large",
                },
                e.to_string(),
            ),
            // The system's random source: herald's side, and passing.
            encrypt::EncryptError::Random => {
                PushReport::failed(Outcome::Retry { after: None }, e.to_string())
            }
        })?;
        let authorization = self.signer.authorization(origin).map_err(|e| {
            PushReport::failed(
                Outcome::DeadLetter {
                    reason: "vapid_error",
                },
                e.to_string(),
            )
        })?;
        Ok(Message {
            body,
            authorization,
        })
    }

    /// Sends one message and classifies the answer; also returns the service's
    /// bounded `Retry-After`, if it gave one.
    async fn send(
        &self,
        url: &url::Url,
        origin: &str,
        notice: &Notice,
        ttl: u32,
        message: Message,
        service: &'static str,
    ) -> (PushReport, Option<Duration>) {
        let mut request = self
            .client
            .post(url.clone())
            .header("TTL", ttl)
            .header("Content-Encoding", "aes128gcm")
            .header("Content-Type", "application/octet-stream")
            .header("Urgency", notice.urgency)
            .header("Authorization", &*message.authorization);
        if let Some(topic) = &notice.topic {
            request = request.header("Topic", topic);
        }
        let sent = Instant::now();
        let response = request.body(message.body).send().await;
        crate::shared::metrics::push_duration(service, sent.elapsed());
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                let report = PushReport::failed(
                    outcome::classify_transport_error(),
                    format!(
                        "request to {origin} failed: {}",
                        describe_transport_error(&e)
                    ),
                );
                return (report, None);
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = if response.status().is_success() {
            // Never read: dropping the answer closes a connection whose body goes on.
            String::new()
        } else {
            read_some(response, ERROR_BODY_CAP).await
        };
        let now = Utc::now();
        let wait = retry_after
            .as_deref()
            .and_then(|v| outcome::parse_retry_after(v, now, self.max_retry_after));
        let outcome = outcome::classify(
            status,
            retry_after.as_deref(),
            url.host_str().unwrap_or(""),
            &text,
            now,
            self.max_retry_after,
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
        let report = PushReport {
            outcome,
            status: Some(status),
            error,
            not_sent: false,
            panicked: false,
        };
        (report, wait)
    }
}

/// The first `cap` bytes of an answer's body (lossy UTF-8), within the request's
/// timeout; the rest is never read, and the connection goes with the answer.
async fn read_some(mut response: reqwest::Response, cap: usize) -> String {
    let mut kept: Vec<u8> = Vec::with_capacity(cap.min(4096));
    while kept.len() < cap {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - kept.len();
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    drop(response);
    String::from_utf8_lossy(&kept).into_owned()
}

/// The Web Push `Topic` for an ordering key: at most 32 base64url characters,
/// so the push service replaces a stale undelivered message of the same key.
pub fn topic_for_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..24])
}

/// The certificate authorities of `push.extra_ca_file` (none when it is empty).
fn extra_authorities(path: &std::path::Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    if path.as_os_str().is_empty() {
        return Ok(Vec::new());
    }
    let pem = std::fs::read(path)
        .with_context(|| format!("push.extra_ca_file: cannot read {}", path.display()))?;
    let authorities = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        anyhow::anyhow!(
            "push.extra_ca_file: {} is not a PEM bundle of certificates: {e}",
            path.display()
        )
    })?;
    anyhow::ensure!(
        !authorities.is_empty(),
        "push.extra_ca_file: {} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
        path.display()
    );
    tracing::info!(path = %path.display(), authorities = authorities.len(), "trusting extra certificate authorities for push services");
    Ok(authorities)
}

/// What is pushed to every device of one event, made once per event.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The plaintext a device receives in herald's format ([`Event::payload`]).
    pub payload: Vec<u8>,
    /// The Declarative Web Push message ([`Event::declarative`]), for devices
    /// that asked for it; `None` for a data push (herald's payload for all).
    pub declarative: Option<Result<Vec<u8>, &'static str>>,
    /// The `Urgency` header.
    pub urgency: &'static str,
    /// The `Topic` header, from the event's ordering key.
    pub topic: Option<String>,
}

impl Notice {
    /// `site`: `events.site_url`, which declarative messages need. Without
    /// it no device may ask for them (a registration is refused), so none is
    /// made: a device left declarative from before is told why.
    pub fn of(event: &Event, site: Option<&url::Url>) -> Notice {
        let declarative = match site {
            Some(site) => event.declarative(Some(site)),
            None => match event.content {
                Content::Notification(_) => Some(Err(crate::shared::notification::NO_SITE_URL)),
                Content::Data(_) => None,
            },
        };
        Notice {
            payload: event.payload(),
            declarative,
            urgency: event.urgency.as_str(),
            topic: event.key.as_deref().map(topic_for_key),
        }
    }
}

impl Notice {
    /// The plaintext for a device that asked for `format`.
    pub fn payload_for(&self, format: Format) -> Result<&[u8], &'static str> {
        match (format, &self.declarative) {
            (Format::Declarative, Some(message)) => message.as_deref().map_err(|e| *e),
            _ => Ok(&self.payload),
        }
    }
}

/// One device's message: its encrypted body and its origin's VAPID header.
struct Message {
    body: Vec<u8>,
    authorization: Arc<str>,
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
