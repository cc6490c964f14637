//! Settings: `config.toml`, overridden by `HERALD_<SECTION>__<KEY>` environment
//! variables (and `REDIS_URL`), overridden by command-line flags.
//!
//! Everything is parsed and validated once, here, into types; an error names the
//! key and where its value came from. `config.toml` at the top of the repository
//! documents every key with its default and must stay in step with this file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// Everything herald can be told, for every role.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Directory for herald's own files: VAPID keys, the embedded Redis's data.
    pub data_dir: PathBuf,
    pub redis: RedisSettings,
    pub api: ApiSettings,
    pub worker: WorkerSettings,
    pub push: PushSettings,
    pub events: EventSettings,
    pub retry: RetrySettings,
    pub reclaimer: ReclaimerSettings,
    pub breaker: BreakerSettings,
    pub alerts: AlertSettings,
    pub retention: RetentionSettings,
    pub spool: SpoolSettings,
    pub routing: RoutingSettings,
    pub audit: AuditSettings,
    pub admin: AdminSettings,
}

/// The admin listener of `herald worker`, `herald reclaimer` and `herald
/// audit`: `/metrics`, `/livez`, `/readyz`. (`herald api` and `herald up`
/// serve them on `api.listen`.)
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    pub enabled: bool,
    /// Empty: each role its own default port on loopback (worker 9464,
    /// reclaimer 9465, audit 9466). Port 0 picks a free one (logged).
    pub listen: String,
    /// How often the reclaimer samples the gauges read from Redis (lag, pending, lengths).
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            enabled: true,
            listen: String::new(),
            sample_interval: Duration::from_secs(15),
        }
    }
}

impl AdminSettings {
    /// Where the admin listener of `role` (`worker`, `reclaimer`, `audit`) binds.
    pub fn address(&self, role: &str) -> Result<SocketAddr, String> {
        if self.listen.is_empty() {
            let port = match role {
                "worker" => 9464,
                "reclaimer" => 9465,
                _ => 9466,
            };
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        self.listen.parse().map_err(|e| {
            format!(
                "{:?} is not an address like 127.0.0.1:9464: {e}",
                self.listen
            )
        })
    }
}

/// `herald audit`: a second consumer group on the same streams that logs every event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// The audit's consumer group: its own position in the streams, apart from the workers'.
    pub group: String,
    /// File the JSON lines are appended to; empty means stdout.
    pub out: PathBuf,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            group: "herald-audit".into(),
            out: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSettings {
    /// A topic event that matches no subscription: `count` (acknowledge, log) or `dead-letter`.
    pub unroutable: Unroutable,
    /// Direct events held per user who has no subscription yet (until their TTL); 0 holds none.
    pub hold_per_user: usize,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings {
            unroutable: Unroutable::Count,
            hold_per_user: 100,
        }
    }
}

/// What becomes of a topic event that matches no subscription.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Unroutable {
    #[default]
    Count,
    DeadLetter,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSettings {
    /// Keep accepting events in a local fsync'd file while Redis cannot take them.
    pub enabled: bool,
    /// Where the spool lives; empty means `<data_dir>/spool`. One API process per directory.
    pub dir: PathBuf,
    /// Largest spool in bytes; beyond it the API answers 503.
    pub max_bytes: u64,
    /// How often the drainer tries to move spooled events into Redis.
    #[serde(with = "humantime_serde")]
    pub drain_interval: Duration,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            enabled: true,
            dir: PathBuf::new(),
            max_bytes: 256 * 1024 * 1024,
            drain_interval: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// How often the reclaimer trims.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Events older than this are trimmed, once no group needs them; 0 keeps them by age.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// At most this many events per stream, once no group needs the older ones; 0 means no limit.
    pub max_len: u64,
    /// Dead letters older than this are trimmed; 0 keeps them by age.
    #[serde(with = "humantime_serde")]
    pub dead_letter_max_age: Duration,
    /// At most this many dead letters per partition; 0 means no limit.
    pub dead_letter_max_len: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            interval: Duration::from_secs(60),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_len: 0,
            dead_letter_max_age: Duration::from_secs(30 * 24 * 3600),
            dead_letter_max_len: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Wait before the first retry of a failed entry; doubles with each delivery.
    #[serde(with = "humantime_serde")]
    pub base_delay: Duration,
    /// The longest wait between two attempts.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Attempts before an entry that keeps failing is dead-lettered.
    pub max_deliveries: u32,
    /// Up to this fraction of each wait is added at random, so retries of many entries spread out.
    pub jitter: f64,
    /// The longest an entry is retried, counted from when it entered the stream, whatever
    /// held it back (backoff, `Retry-After`, an open breaker); then its failing devices are
    /// dead-lettered (`retry_expired`). Outcome markers live twice as long.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReclaimerSettings {
    /// How often the pending entries are scanned.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Pending entries looked at per `XPENDING` call.
    pub scan_batch: usize,
    /// Consumers idle this long with no pending entries are removed from the group.
    #[serde(with = "humantime_serde")]
    pub consumer_idle_timeout: Duration,
    /// How often due delayed events (`deliver_at`) are moved into the stream: how late they may be.
    #[serde(with = "humantime_serde")]
    pub schedule_interval: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Distinct subscriptions of one push service whose pushes failed (connect errors,
    /// timeouts, 5xx, 429, 401/403) within `window` that open its breaker, provided
    /// failures are at least half of its answers in the window.
    pub failures_to_open: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long an open breaker stays open when the service did not say (`Retry-After`).
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    /// URL that receives a JSON summary of new dead letters; empty means no webhook.
    pub webhook_url: Secret,
    /// At most one webhook call per this interval; dead letters in between are counted together.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            base_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(600),
            max_deliveries: 8,
            jitter: 0.2,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl Default for ReclaimerSettings {
    fn default() -> Self {
        ReclaimerSettings {
            interval: Duration::from_secs(1),
            scan_batch: 100,
            consumer_idle_timeout: Duration::from_secs(3600),
            schedule_interval: Duration::from_millis(250),
        }
    }
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures_to_open: 5,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
        }
    }
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            webhook_url: Secret::default(),
            interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SentinelSettings {
    /// The name the sentinels monitor the primary under (`sentinel monitor <name> …`).
    pub master: String,
    /// Sentinels' addresses (`redis://host:26379`); one reachable is enough.
    pub nodes: Vec<Secret>,
    /// The ACL user for the primary and replicas themselves (empty: none).
    pub username: String,
    /// Their password (`requirepass`, or the ACL user's); empty: none. A
    /// sentinel's own password goes in its URL.
    pub password: Secret,
}

impl SentinelSettings {
    pub fn is_set(&self) -> bool {
        !self.nodes.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://host:port/db`; empty means `herald up` starts its own redis-server.
    pub url: Secret,
    /// Seed nodes of a Redis Cluster (`redis://host:port`; one reachable is
    /// enough): when set, herald speaks the cluster protocol and `url` must be empty.
    pub cluster_nodes: Vec<Secret>,
    /// A primary with replicas watched by Redis Sentinel: herald asks the
    /// sentinels where the primary is, and again after a failover.
    pub sentinel: SentinelSettings,
    /// First part of every key herald writes, so several deployments (or tests) share one Redis.
    pub key_prefix: String,
    /// Number of event streams; an event's partition is chosen by a hash of its `key` (or id).
    pub partitions: u32,
    /// Multiplexed connections shared by every ordinary command of a process (not
    /// blocking reads, not heartbeats: those have their own); many commands are in
    /// flight on each at once.
    pub connections: usize,
    /// Port of the embedded redis-server; 0 picks a free one.
    pub embedded_port: u16,
    /// Timeout for one command (blocking reads wait this long beyond their block);
    /// a connection whose command timed out is replaced by a new one.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Refuse to start when Redis's settings can lose accepted events (no AOF, or eviction).
    pub require_durable: bool,
    /// Replicas that must confirm a publish (`WAIT`) before it is answered
    /// `202`; 0 does not wait. A publish they do not confirm within
    /// `wait_timeout` is spooled and published again later (idempotently).
    pub wait_replicas: u32,
    /// How long a publish waits for `wait_replicas` confirmations.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// PEM file of the CA (or CAs) that signed a `rediss://` server's
    /// certificate; empty trusts the system's certificate store instead.
    pub tls_ca_file: PathBuf,
    /// PEM file of this client's certificate, for a server that asks for one
    /// (`tls-auth-clients yes`); goes with `tls_key_file`.
    pub tls_cert_file: PathBuf,
    /// PEM file of the private key of `tls_cert_file`.
    pub tls_key_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes; larger requests get 413.
    pub max_body_bytes: usize,
    /// Most events accepted in one `POST /v1/events` array.
    pub max_batch: usize,
    /// Most subscriptions (devices) one user may have; 0: no limit.
    pub max_subscriptions_per_user: u32,
    /// Service credentials, each a name, the SHA-256 of its token and its scopes
    /// (`herald token create` makes one). None: open mode, on loopback only.
    pub tokens: Vec<ApiToken>,
    /// Browser credentials: short-lived tokens for one user, signed by the app's backend.
    pub subscriber_tokens: SubscriberTokenSettings,
    /// Request and event rates allowed per credential (`429` beyond).
    pub limits: LimitSettings,
    /// The payload format of a subscription registered without `format`:
    /// `herald` (herald's JSON, for the app's service worker) or `declarative`
    /// (Declarative Web Push; needs `events.site_url`).
    pub default_subscription_format: crate::shared::notification::Format,
}

/// One service credential. The token itself is never stored, only its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiToken {
    /// Who holds it (logs and metrics say this, never the token).
    pub name: String,
    /// Lowercase hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
    /// What it may do: `publish`, `subscriptions`, `read`, `admin`.
    pub scopes: Vec<Scope>,
}

/// The fields of an `api.tokens` entry, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiTokenFields {
    name: String,
    sha256: String,
    scopes: Vec<Scope>,
}

impl<'de> Deserialize<'de> for ApiToken {
    /// A table; a bare string (the token itself, as `api.tokens` held before
    /// scopes) is refused saying what to write instead.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ApiToken, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = ApiToken;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table {name, sha256, scopes}")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<ApiToken, E> {
                Err(E::custom(
                    "an api.tokens entry is a table {name, sha256, scopes}, not the token itself: herald keeps only its SHA-256 now. `herald token create --name NAME --scope publish` makes a new one; for an existing token write {name = \"NAME\", sha256 = \"<printf %s TOKEN | sha256sum>\", scopes = [\"publish\", \"subscriptions\", \"read\", \"admin\"]}",
                ))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, map: M) -> Result<ApiToken, M::Error> {
                let fields =
                    ApiTokenFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ApiToken {
                    name: fields.name,
                    sha256: fields.sha256,
                    scopes: fields.scopes,
                })
            }
        }
        deserializer.deserialize_any(Entry)
    }
}

/// What a service credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// `POST /v1/events`.
    Publish,
    /// Create, change, list and delete any user's subscriptions.
    Subscriptions,
    /// Stats and lists (`GET /v1/stats`, `GET /v1/subscriptions`).
    Read,
    /// Dead letters and replay (`/v1/admin/…`); includes `read`.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::Publish,
        Scope::Subscriptions,
        Scope::Read,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Subscriptions => "subscriptions",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                format!("unknown scope {s:?}: use publish, subscriptions, read or admin")
            })
    }
}

/// Subscriber tokens: HS256 JWTs whose `sub` is the user, minted by the app's backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriberTokenSettings {
    /// The shared HMAC secret (at least 32 bytes); better from the environment
    /// (`HERALD_API__SUBSCRIBER_TOKENS__SECRET`) or `secret_file`. Both empty: off.
    pub secret: Secret,
    /// File holding the secret (trailing newline ignored); refused when group or others may read it.
    pub secret_file: PathBuf,
    /// While rotating: the secret before, still accepted until the tokens
    /// signed with it have expired (`max_lifetime`); then remove it.
    pub previous_secret: Secret,
    /// The previous secret from a file (same rules as `secret_file`).
    pub previous_secret_file: PathBuf,
    /// The `aud` a token must carry, so tokens minted for another service do not work here.
    pub audience: String,
    /// The longest life a token may have, from its `iat` to its `exp`.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
}

/// Token buckets per credential; a rate of 0 turns that limit off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Requests per second of one service token, and the burst it may save up.
    pub token_requests: Rate,
    /// Events per second one service token may publish (a batch counts each event).
    pub token_events: Rate,
    /// Requests per second of one subscriber (user), all its tokens together.
    pub subscriber_requests: Rate,
}

/// A token bucket: `per_second` refill, `burst` capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Consumer group the workers share.
    pub group: String,
    /// This consumer's name; empty means `<hostname>-<pid>`. Must be unique per process.
    pub consumer: String,
    /// Most entries read in one `XREADGROUP`.
    pub batch_size: usize,
    /// How long one `XREADGROUP` blocks waiting for entries (at most 5 s, so stops are prompt).
    #[serde(with = "humantime_serde")]
    pub block: Duration,
    /// Most pushes in flight at once in one worker process.
    pub concurrency: usize,
    /// How long a stop waits for in-flight pushes before giving up on them.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// `at-least-once` (acknowledge after the push) or `at-most-once` (read with NOACK: never retried).
    pub delivery: Delivery,
    /// Where a consumer group created on a stream that already holds entries starts
    /// (a renamed `worker.group`, a group lost and recreated).
    pub new_group_start: GroupStart,
}

/// Where a new consumer group starts reading a stream that already holds entries.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum GroupStart {
    /// At the entries added within the outcome markers' life (`2 × retry.max_age`):
    /// history older than that could reach devices that had it already.
    #[default]
    Markers,
    /// At the first entry still in the stream: everything is processed again.
    Beginning,
    /// At the entries added from now on.
    Now,
}

/// Delivery guarantee of the workers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Entries stay pending until every device is settled; a crash means a retry, maybe a duplicate.
    #[default]
    AtLeastOnce,
    /// Entries are acknowledged as they are read (`NOACK`); a crash or failure loses them, never duplicates.
    AtMostOnce,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushSettings {
    /// Accept `http://` and loopback/private endpoints (the sink uses them). Never in production.
    pub allow_insecure_endpoints: bool,
    /// Ports an endpoint may name (https' 443 alone by default); any with
    /// `allow_insecure_endpoints`.
    pub allowed_ports: Vec<u16>,
    /// Accept only endpoints on `known_services` (and their subdomains).
    pub known_services_only: bool,
    /// The push services' hosts, for `known_services_only`.
    pub known_services: Vec<String>,
    /// VAPID `sub` claim: a `mailto:` or `https:` contact for the push services.
    pub vapid_subject: String,
    /// File holding the VAPID private key (base64url, 32 bytes); empty means
    /// `<data_dir>/vapid_private_key`. Refused when group or others may read it.
    pub vapid_private_key_file: PathBuf,
    /// The VAPID private key itself (base64url), for secret stores that hand
    /// it over in the environment (`HERALD_PUSH__VAPID_PRIVATE_KEY`); when set,
    /// no file is read.
    pub vapid_private_key: Secret,
    /// Create the VAPID key file when it is missing (only `herald up` and `herald vapid generate` do).
    pub create_vapid_key: bool,
    /// Timeout for connecting to a push service.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout for one whole push request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The longest `Retry-After` honoured; a push service asking for more gets an
    /// ordinary retry with backoff instead.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// The share of `worker.concurrency` that pushes to one push service (origin) may
    /// take at once, so a slow or hanging service cannot hold every slot.
    pub service_share: f64,
    /// PEM file of certificate authorities trusted besides the built-in ones (a
    /// TLS-inspecting middlebox's, a test push service's); empty: none.
    pub extra_ca_file: PathBuf,
    /// An HTTP(S) proxy every push goes through (`http://host:port`); empty:
    /// none. `HTTPS_PROXY` and the like are ignored: the proxy resolves push
    /// services' names, so it must refuse internal addresses itself.
    pub proxy: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// Web Push TTL, in seconds, for events that do not set `ttl`.
    pub default_ttl: u32,
    /// How long an event id is remembered to deduplicate repeated publishes.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// How far in the future a `publish_at` may be (producer clocks drift); later ones get 422.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// The web app's `https:` address (`https://parking.example/`). Declarative
    /// Web Push messages need absolute URLs: root-relative ones (`/visits/981`)
    /// are joined to it, and a notification without `url` opens it. Empty:
    /// none (then no subscription may ask for the declarative format).
    pub site_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from("data"),
            redis: RedisSettings::default(),
            api: ApiSettings::default(),
            worker: WorkerSettings::default(),
            push: PushSettings::default(),
            events: EventSettings::default(),
            retry: RetrySettings::default(),
            reclaimer: ReclaimerSettings::default(),
            breaker: BreakerSettings::default(),
            alerts: AlertSettings::default(),
            retention: RetentionSettings::default(),
            spool: SpoolSettings::default(),
            routing: RoutingSettings::default(),
            audit: AuditSettings::default(),
            admin: AdminSettings::default(),
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: Secret::default(),
            cluster_nodes: Vec::new(),
            sentinel: SentinelSettings::default(),
            key_prefix: "herald".into(),
            partitions: 1,
            connections: 4,
            embedded_port: 0,
            command_timeout: Duration::from_secs(5),
            require_durable: false,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            tls_ca_file: PathBuf::new(),
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            max_subscriptions_per_user: 64,
            tokens: Vec::new(),
            subscriber_tokens: SubscriberTokenSettings::default(),
            limits: LimitSettings::default(),
            default_subscription_format: crate::shared::notification::Format::Herald,
        }
    }
}

impl Default for SubscriberTokenSettings {
    fn default() -> Self {
        SubscriberTokenSettings {
            secret: Secret::default(),
            secret_file: PathBuf::new(),
            previous_secret: Secret::default(),
            previous_secret_file: PathBuf::new(),
            audience: "herald".into(),
            max_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            token_requests: Rate {
                per_second: 2_000,
                burst: 4_000,
            },
            token_events: Rate {
                per_second: 20_000,
                burst: 100_000,
            },
            subscriber_requests: Rate {
                per_second: 2,
                burst: 20,
            },
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            group: "herald".into(),
            consumer: String::new(),
            batch_size: 64,
            block: Duration::from_secs(2),
            concurrency: 128,
            shutdown_grace: Duration::from_secs(10),
            delivery: Delivery::AtLeastOnce,
            new_group_start: GroupStart::Markers,
        }
    }
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            allow_insecure_endpoints: false,
            allowed_ports: vec![443],
            known_services_only: false,
            known_services: [
                "fcm.googleapis.com",
                "updates.push.services.mozilla.com",
                "push.services.mozilla.com",
                "web.push.apple.com",
                "notify.windows.com",
            ]
            .map(String::from)
            .to_vec(),
            vapid_subject: "mailto:push-admin@example.com".into(),
            vapid_private_key_file: PathBuf::new(),
            vapid_private_key: Secret::default(),
            create_vapid_key: false,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_retry_after: Duration::from_secs(3600),
            service_share: 0.5,
            extra_ca_file: PathBuf::new(),
            proxy: Secret::default(),
        }
    }
}

impl EventSettings {
    /// The defaults an event is validated with.
    pub fn defaults(&self) -> crate::shared::event::EventDefaults {
        crate::shared::event::EventDefaults {
            ttl: self.default_ttl,
            max_clock_skew: self.max_clock_skew,
            site_url: self.site().map(std::sync::Arc::new),
        }
    }
}

impl EventSettings {
    /// `site_url`, parsed (checked by [`Settings::validate`]); `None` when empty.
    pub fn site(&self) -> Option<url::Url> {
        url::Url::parse(&self.site_url).ok()
    }
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            default_ttl: 3600,
            dedup_window: Duration::from_secs(24 * 3600),
            max_clock_skew: Duration::from_secs(300),
            site_url: String::new(),
        }
    }
}

/// A string that never prints: Redis URLs carry passwords, tokens are credentials.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"[redacted]\"")
        }
    }
}

/// Overrides from command-line flags, applied last.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub redis_url: Option<String>,
    pub api_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub allow_insecure_endpoints: Option<bool>,
    pub consumer: Option<String>,
}

impl Overrides {
    /// Whether a flag set this key (so an error about it is the flag's).
    fn sets(&self, key: &str) -> bool {
        match key {
            "redis.url" => self.redis_url.is_some(),
            "api.listen" => self.api_listen.is_some(),
            "data_dir" => self.data_dir.is_some(),
            "push.allow_insecure_endpoints" => self.allow_insecure_endpoints.is_some(),
            "worker.consumer" => self.consumer.is_some(),
            _ => false,
        }
    }
}

/// A setting that failed validation: which key, and what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{key} {message}")]
pub struct Invalid {
    pub key: &'static str,
    pub message: String,
}

impl Invalid {
    fn new(key: &'static str, message: impl Into<String>) -> Invalid {
        Invalid {
            key,
            message: message.into(),
        }
    }
}

/// Where settings are read from: a file (explicit, or `./config.toml` when present) and the environment.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: Option<PathBuf>,
}

impl Source {
    /// `--config PATH` when given (it must exist), else `./config.toml` when it exists.
    pub fn discover(explicit: Option<&Path>) -> anyhow::Result<Source> {
        match explicit {
            Some(path) if !path.exists() => {
                anyhow::bail!(
                    "config file {} does not exist (given with --config)",
                    path.display()
                )
            }
            Some(path) => Ok(Source {
                file: Some(path.to_path_buf()),
            }),
            None => {
                let default = PathBuf::from("config.toml");
                Ok(Source {
                    file: default.exists().then_some(default),
                })
            }
        }
    }
}

impl Settings {
    /// Reads file, environment and flags, in that order of precedence (last wins), and validates.
    pub fn load(source: &Source, overrides: &Overrides) -> anyhow::Result<Settings> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = &source.file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(
            Env::raw()
                .only(&["REDIS_URL"])
                .map(|_| "redis.url".into())
                .split("."),
        );
        figment = figment.merge(Env::prefixed("HERALD_").split("__"));
        let mut settings: Settings = figment.extract().map_err(|e| {
            // figment's message names the key and the file or variable it came from.
            let renamed = if e.to_string().contains("pool_size") {
                "; redis.pool_size is now redis.connections (shared multiplexed connections, default 4)"
            } else {
                ""
            };
            anyhow::anyhow!("invalid configuration: {e}{renamed}")
        })?;
        settings.apply(overrides);
        settings.validate().map_err(|e| {
            let from = if overrides.sets(e.key) {
                "a command-line flag".to_string()
            } else {
                match figment.find_metadata(e.key) {
                    Some(meta) => match &meta.source {
                        Some(source) => format!("{} {source}", meta.name),
                        None => meta.name.to_string(),
                    },
                    None => "the defaults".to_string(),
                }
            };
            anyhow::anyhow!("invalid configuration: {e} (set in {from})")
        })?;
        Ok(settings)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(url) = &o.redis_url {
            self.redis.url = Secret::new(url.clone());
        }
        if let Some(listen) = o.api_listen {
            self.api.listen = listen;
        }
        if let Some(dir) = &o.data_dir {
            self.data_dir = dir.clone();
        }
        if let Some(allow) = o.allow_insecure_endpoints {
            self.push.allow_insecure_endpoints = allow;
        }
        if let Some(consumer) = &o.consumer {
            self.worker.consumer = consumer.clone();
        }
    }

    /// Checks what types alone cannot; each error names the key.
    pub fn validate(&self) -> Result<(), Invalid> {
        let url = self.redis.url.expose();
        if !url.is_empty() {
            check_redis_url("redis.url", url, "redis://[:password@]host:port[/db]")?;
        }
        if !self.redis.cluster_nodes.is_empty() && !url.is_empty() {
            return Err(Invalid::new(
                "redis.cluster_nodes",
                "is set together with redis.url: set one of them (cluster_nodes for a Redis Cluster, url for one Redis)",
            ));
        }
        let sentinel = &self.redis.sentinel;
        let sources = [
            !url.is_empty(),
            !self.redis.cluster_nodes.is_empty(),
            sentinel.is_set(),
        ];
        if sentinel.is_set() && sources.iter().filter(|set| **set).count() > 1 {
            return Err(Invalid::new(
                "redis.sentinel.nodes",
                "is set together with redis.url or redis.cluster_nodes: set one way to reach Redis",
            ));
        }
        if sentinel.is_set() == sentinel.master.is_empty() {
            return Err(Invalid::new(
                "redis.sentinel.master",
                "and redis.sentinel.nodes go together: the name the sentinels monitor, and where they are",
            ));
        }
        for node in &sentinel.nodes {
            check_redis_url(
                "redis.sentinel.nodes",
                node.expose(),
                "redis://host:26379, one per sentinel",
            )?;
        }
        for node in &self.redis.cluster_nodes {
            check_redis_url(
                "redis.cluster_nodes",
                node.expose(),
                "redis://[:password@]host:port, one per seed node",
            )?;
        }
        self.redis.check_tls()?;
        ensure_name("redis.key_prefix", &self.redis.key_prefix)?;
        ensure_name("worker.group", &self.worker.group)?;
        if !self.worker.consumer.is_empty() {
            ensure_name("worker.consumer", &self.worker.consumer)?;
        }
        ensure_range("redis.partitions", self.redis.partitions as u64, 1, 1024)?;
        ensure_range("redis.connections", self.redis.connections as u64, 1, 256)?;
        if self.push.allowed_ports.is_empty() || self.push.allowed_ports.contains(&0) {
            return Err(Invalid::new(
                "push.allowed_ports",
                "must list at least one port, none of them 0 (push services listen on 443)",
            ));
        }
        ensure_range(
            "redis.wait_replicas",
            u64::from(self.redis.wait_replicas),
            0,
            16,
        )?;
        if self.redis.wait_replicas > 0
            && (self.redis.wait_timeout.is_zero()
                || self.redis.wait_timeout >= self.redis.command_timeout)
        {
            return Err(Invalid::new(
                "redis.wait_timeout",
                "must be above 0 and below redis.command_timeout when redis.wait_replicas is set",
            ));
        }
        ensure_range(
            "api.max_body_bytes",
            self.api.max_body_bytes as u64,
            1024,
            64 << 20,
        )?;
        ensure_range("api.max_batch", self.api.max_batch as u64, 1, 100_000)?;
        ensure_range(
            "worker.batch_size",
            self.worker.batch_size as u64,
            1,
            10_000,
        )?;
        ensure_range(
            "worker.concurrency",
            self.worker.concurrency as u64,
            1,
            100_000,
        )?;
        ensure_range(
            "events.default_ttl",
            self.events.default_ttl as u64,
            0,
            crate::shared::event::MAX_TTL as u64,
        )?;
        if !self.events.site_url.is_empty() {
            match url::Url::parse(&self.events.site_url) {
                Ok(site) if site.scheme() == "https" && site.host().is_some() => {}
                _ => {
                    return Err(Invalid::new(
                        "events.site_url",
                        format!(
                            "{:?} is not an absolute https: URL like https://parking.example/",
                            self.events.site_url
                        ),
                    ))
                }
            }
        }
        if self.api.default_subscription_format == crate::shared::notification::Format::Declarative
            && self.events.site_url.is_empty()
        {
            return Err(Invalid::new(
                "api.default_subscription_format",
                "declarative needs events.site_url: Declarative Web Push messages carry absolute URLs only",
            ));
        }
        if self.worker.block < Duration::from_millis(10)
            || self.worker.block > Duration::from_secs(5)
        {
            return Err(Invalid::new(
                "worker.block",
                format!(
                    "must be between 10ms and 5s (got {}): a longer block delays stops",
                    humantime::format_duration(self.worker.block)
                ),
            ));
        }
        for (key, value) in [
            ("redis.command_timeout", self.redis.command_timeout),
            ("push.connect_timeout", self.push.connect_timeout),
            ("push.request_timeout", self.push.request_timeout),
        ] {
            if value.is_zero() {
                return Err(Invalid::new(key, "must be more than 0"));
            }
        }
        for (key, value) in [
            ("retry.base_delay", self.retry.base_delay),
            ("retry.max_delay", self.retry.max_delay),
            ("reclaimer.interval", self.reclaimer.interval),
            ("breaker.window", self.breaker.window),
            ("breaker.open_for", self.breaker.open_for),
            ("alerts.interval", self.alerts.interval),
            ("retention.interval", self.retention.interval),
            ("spool.drain_interval", self.spool.drain_interval),
            ("retry.max_age", self.retry.max_age),
            ("push.max_retry_after", self.push.max_retry_after),
        ] {
            if value.is_zero() {
                return Err(Invalid::new(key, "must be more than 0"));
            }
        }
        if self.retry.max_delay < self.retry.base_delay {
            return Err(Invalid::new(
                "retry.max_delay",
                "must not be less than retry.base_delay",
            ));
        }
        ensure_range(
            "retry.max_deliveries",
            self.retry.max_deliveries as u64,
            1,
            1000,
        )?;
        if !(self.push.service_share > 0.0 && self.push.service_share <= 1.0) {
            return Err(Invalid::new(
                "push.service_share",
                format!(
                    "must be a fraction above 0 and at most 1 (got {})",
                    self.push.service_share
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.retry.jitter) {
            return Err(Invalid::new(
                "retry.jitter",
                format!(
                    "must be a fraction between 0 and 1 (got {})",
                    self.retry.jitter
                ),
            ));
        }
        ensure_range(
            "reclaimer.scan_batch",
            self.reclaimer.scan_batch as u64,
            1,
            10_000,
        )?;
        ensure_range(
            "breaker.failures_to_open",
            self.breaker.failures_to_open as u64,
            1,
            1_000_000,
        )?;
        let webhook = self.alerts.webhook_url.expose();
        if !webhook.is_empty()
            && !url::Url::parse(webhook).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return Err(Invalid::new(
                "alerts.webhook_url",
                "must be an http:// or https:// URL",
            ));
        }
        let subject = &self.push.vapid_subject;
        if !(subject.starts_with("mailto:") || subject.starts_with("https://")) {
            return Err(Invalid::new(
                "push.vapid_subject",
                format!("must start with mailto: or https:// (got {subject:?})"),
            ));
        }
        if let Err(problem) = self.admin.address("worker") {
            return Err(Invalid::new("admin.listen", problem));
        }
        self.check_credentials()?;
        if !self.push.vapid_private_key.is_empty()
            && !self.push.vapid_private_key_file.as_os_str().is_empty()
        {
            return Err(Invalid::new(
                "push.vapid_private_key",
                "set either vapid_private_key or vapid_private_key_file, not both",
            ));
        }
        let proxy = self.push.proxy.expose();
        if !proxy.is_empty()
            && !self.push.known_services_only
            && !self.push.allow_insecure_endpoints
        {
            return Err(Invalid::new(
                "push.proxy",
                "needs push.known_services_only = true: through a proxy, the proxy resolves endpoints' names and herald cannot refuse one that leads inside",
            ));
        }
        if !proxy.is_empty()
            && !url::Url::parse(proxy).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.path() == "/"
            })
        {
            return Err(Invalid::new(
                "push.proxy",
                "must be an http:// or https:// proxy URL such as http://proxy.internal:3128",
            ));
        }
        Ok(())
    }

    /// API tokens, subscriber tokens and rate limits.
    fn check_credentials(&self) -> Result<(), Invalid> {
        let mut names = std::collections::HashSet::new();
        let mut digests = std::collections::HashSet::new();
        for token in &self.api.tokens {
            let name = &token.name;
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(Invalid::new(
                    "api.tokens",
                    format!("name {name:?} must be 1 to 64 of A-Z a-z 0-9 . _ -"),
                ));
            }
            if !names.insert(name) {
                return Err(Invalid::new(
                    "api.tokens",
                    format!("name {name:?} is used twice; names tell credentials apart"),
                ));
            }
            let digest = &token.sha256;
            if digest.len() != 64
                || !digest
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(Invalid::new(
                    "api.tokens",
                    format!("{name}: sha256 must be the 64 lowercase hex digits of the token's SHA-256, not the token (`herald token create` prints the entry)"),
                ));
            }
            if !digests.insert(digest) {
                return Err(Invalid::new(
                    "api.tokens",
                    format!("{name}: the same token digest is listed twice"),
                ));
            }
            if token.scopes.is_empty() {
                return Err(Invalid::new(
                    "api.tokens",
                    format!(
                        "{name}: name at least one scope (publish, subscriptions, read, admin)"
                    ),
                ));
            }
        }
        let subscriber = &self.api.subscriber_tokens;
        if !subscriber.secret.is_empty() && !subscriber.secret_file.as_os_str().is_empty() {
            return Err(Invalid::new(
                "api.subscriber_tokens.secret",
                "set either secret or secret_file, not both",
            ));
        }
        if !subscriber.previous_secret.is_empty()
            && !subscriber.previous_secret_file.as_os_str().is_empty()
        {
            return Err(Invalid::new(
                "api.subscriber_tokens.previous_secret",
                "set either previous_secret or previous_secret_file, not both",
            ));
        }
        let has_previous = !subscriber.previous_secret.is_empty()
            || !subscriber.previous_secret_file.as_os_str().is_empty();
        let has_secret =
            !subscriber.secret.is_empty() || !subscriber.secret_file.as_os_str().is_empty();
        if has_previous && !has_secret {
            return Err(Invalid::new(
                "api.subscriber_tokens.previous_secret",
                "is for a rotation: set the new secret too",
            ));
        }
        if !subscriber.previous_secret.is_empty() && subscriber.previous_secret.expose().len() < 32
        {
            return Err(Invalid::new(
                "api.subscriber_tokens.previous_secret",
                "must be at least 32 bytes",
            ));
        }
        if !subscriber.secret.is_empty() && subscriber.secret.expose().len() < 32 {
            return Err(Invalid::new(
                "api.subscriber_tokens.secret",
                "must be at least 32 bytes (e.g. `openssl rand -base64 32`)",
            ));
        }
        if subscriber.audience.is_empty() {
            return Err(Invalid::new(
                "api.subscriber_tokens.audience",
                "must not be empty",
            ));
        }
        if subscriber.max_lifetime < Duration::from_secs(1)
            || subscriber.max_lifetime > Duration::from_secs(30 * 24 * 3600)
        {
            return Err(Invalid::new(
                "api.subscriber_tokens.max_lifetime",
                "must be between 1s and 30 days",
            ));
        }
        let limits = &self.api.limits;
        for (key, rate) in [
            ("api.limits.token_requests", limits.token_requests),
            ("api.limits.token_events", limits.token_events),
            ("api.limits.subscriber_requests", limits.subscriber_requests),
        ] {
            if rate.per_second > 0 && rate.burst == 0 {
                return Err(Invalid::new(
                    key,
                    "burst must be at least 1 (per_second = 0 turns the limit off)",
                ));
            }
        }
        if limits.token_events.per_second > 0
            && (limits.token_events.burst as usize) < self.api.max_batch
        {
            return Err(Invalid::new(
                "api.limits.token_events",
                format!(
                    "burst ({}) must be at least api.max_batch ({}), or a full batch could never pass",
                    limits.token_events.burst, self.api.max_batch
                ),
            ));
        }
        Ok(())
    }

    /// The consumer name: configured, or `<hostname>-<pid>`, unique per running process.
    pub fn consumer_name(&self) -> String {
        if !self.worker.consumer.is_empty() {
            return self.worker.consumer.clone();
        }
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "herald".into());
        format!("{host}-{}", std::process::id())
    }

    /// Directory of the API's spool.
    pub fn spool_dir(&self) -> PathBuf {
        if self.spool.dir.as_os_str().is_empty() {
            self.data_dir.join("spool")
        } else {
            self.spool.dir.clone()
        }
    }

    /// Path of the VAPID private key file.
    pub fn vapid_key_path(&self) -> PathBuf {
        if self.push.vapid_private_key_file.as_os_str().is_empty() {
            self.data_dir.join("vapid_private_key")
        } else {
            self.push.vapid_private_key_file.clone()
        }
    }

    /// The effective settings as TOML, with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.redis.url.is_empty() {
            shown.redis.url = Secret::new("[redacted]");
        }
        if !shown.redis.sentinel.password.is_empty() {
            shown.redis.sentinel.password = Secret::new("[redacted]");
        }
        shown.redis.sentinel.nodes = shown
            .redis
            .sentinel
            .nodes
            .iter()
            .map(|node| Secret::new(crate::shared::db::redacted_url(node.expose())))
            .collect();
        shown.redis.cluster_nodes = shown
            .redis
            .cluster_nodes
            .iter()
            .map(|node| Secret::new(crate::shared::db::redacted_url(node.expose())))
            .collect();
        if !shown.alerts.webhook_url.is_empty() {
            shown.alerts.webhook_url = Secret::new("[redacted]");
        }
        if !shown.push.vapid_private_key.is_empty() {
            shown.push.vapid_private_key = Secret::new("[redacted]");
        }
        if !shown.push.proxy.is_empty() {
            shown.push.proxy = Secret::new(redacted_proxy(shown.push.proxy.expose()));
        }
        if !shown.api.subscriber_tokens.secret.is_empty() {
            shown.api.subscriber_tokens.secret = Secret::new("[redacted]");
        }
        if !shown.api.subscriber_tokens.previous_secret.is_empty() {
            shown.api.subscriber_tokens.previous_secret = Secret::new("[redacted]");
        }
        toml::to_string_pretty(&shown)
            .unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

/// A proxy URL to show: some proxies take their key as the user name, so
/// both user and password are hidden.
pub fn redacted_proxy(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if !parsed.username().is_empty() || parsed.password().is_some() {
                let _ = parsed.set_username("redacted");
                let _ = parsed.set_password(None);
            }
            parsed.to_string()
        }
        Err(_) => "(unparsable url)".into(),
    }
}

impl RedisSettings {
    /// Whether any of the TLS files is set.
    pub fn has_tls_files(&self) -> bool {
        [&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file]
            .iter()
            .any(|f| !f.as_os_str().is_empty())
    }

    /// TLS only where it was tested (one Redis at `redis.url`), with files
    /// that exist and hold what they should: a wrong file is said at start,
    /// not at the first connection.
    fn check_tls(&self) -> Result<(), Invalid> {
        let tls = |url: &Secret| {
            url::Url::parse(url.expose()).is_ok_and(|u| matches!(u.scheme(), "rediss" | "valkeys"))
        };
        let elsewhere = [
            ("redis.cluster_nodes", &self.cluster_nodes),
            ("redis.sentinel.nodes", &self.sentinel.nodes),
        ];
        for (key, nodes) in elsewhere {
            if nodes.iter().any(tls) {
                return Err(Invalid::new(
                    key,
                    "uses rediss://: TLS is supported with redis.url (one Redis) only, not yet with Redis Cluster or Sentinel",
                ));
            }
        }
        if !self.has_tls_files() {
            return Ok(());
        }
        if !tls(&self.url) {
            let key = match (
                self.tls_ca_file.as_os_str().is_empty(),
                self.tls_cert_file.as_os_str().is_empty(),
            ) {
                (false, _) => "redis.tls_ca_file",
                (true, false) => "redis.tls_cert_file",
                (true, true) => "redis.tls_key_file",
            };
            return Err(Invalid::new(
                key,
                "is set but redis.url does not start with rediss://: TLS files are used only for a rediss:// redis.url (TLS is not supported with Redis Cluster or Sentinel yet)",
            ));
        }
        if !self.tls_ca_file.as_os_str().is_empty() {
            let certs = read_pem_certs("redis.tls_ca_file", &self.tls_ca_file)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    Invalid::new(
                        "redis.tls_ca_file",
                        format!(
                            "holds a certificate that cannot be a trust anchor ({e}): {}",
                            self.tls_ca_file.display()
                        ),
                    )
                })?;
            }
        }
        match (
            self.tls_cert_file.as_os_str().is_empty(),
            self.tls_key_file.as_os_str().is_empty(),
        ) {
            (true, true) => {}
            (false, true) => {
                return Err(Invalid::new(
                    "redis.tls_key_file",
                    "is empty but redis.tls_cert_file is set: a client certificate needs its private key",
                ))
            }
            (true, false) => {
                return Err(Invalid::new(
                    "redis.tls_cert_file",
                    "is empty but redis.tls_key_file is set: a private key needs its client certificate",
                ))
            }
            (false, false) => {
                read_pem_certs("redis.tls_cert_file", &self.tls_cert_file)?;
                let pem = read_file("redis.tls_key_file", &self.tls_key_file)?;
                PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    Invalid::new(
                        "redis.tls_key_file",
                        format!(
                            "holds no PEM private key ({e}): {}",
                            self.tls_key_file.display()
                        ),
                    )
                })?;
            }
        }
        Ok(())
    }
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, Invalid> {
    std::fs::read(path)
        .map_err(|e| Invalid::new(key, format!("cannot be read ({e}): {}", path.display())))
}

/// The certificates of a PEM file; at least one.
fn read_pem_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Invalid> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            Invalid::new(
                key,
                format!("is not a PEM certificate file ({e}): {}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(Invalid::new(
            key,
            format!(
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----): {}",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// A Redis URL the client accepts, with a scheme herald knows.
fn check_redis_url(key: &'static str, url: &str, expected: &str) -> Result<(), Invalid> {
    let scheme_ok = url::Url::parse(url).is_ok_and(|u| {
        matches!(
            u.scheme(),
            "redis" | "rediss" | "redis+unix" | "unix" | "valkey" | "valkeys"
        )
    });
    let parsed = redis::Client::open(url);
    if !scheme_ok || parsed.is_err() {
        let why = parsed.err().map(|e| format!(" ({e})")).unwrap_or_default();
        return Err(Invalid::new(
            key,
            format!("is not a Redis URL{why}; expected {expected}"),
        ));
    }
    Ok(())
}

fn ensure_name(key: &'static str, value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(Invalid::new(
            key,
            format!("must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' or '.' (got {value:?})"),
        ));
    }
    Ok(())
}

fn ensure_range(key: &'static str, value: u64, min: u64, max: u64) -> Result<(), Invalid> {
    if value < min || value > max {
        return Err(Invalid::new(
            key,
            format!("must be between {min} and {max} (got {value})"),
        ));
    }
    Ok(())
}

/// Durations as human strings (`"250ms"`, `"10m"`) in TOML and the environment.
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}); write it like \"250ms\", \"5s\" or \"10m\""
            ))
        })
    }
}

/// `herald config …`.
#[derive(clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration; exit 1 with the problem when it is not valid.
    Check,
    /// Print the effective configuration as TOML, secrets redacted.
    Print,
}

impl ConfigCommand {
    /// `check` says where the valid settings came from; `print` shows them, secrets redacted.
    pub fn run(&self, source: &Source, settings: &Settings) -> anyhow::Result<()> {
        match self {
            ConfigCommand::Check => println!(
                "configuration is valid ({})",
                source
                    .file
                    .as_ref()
                    .map(|f| format!("{} + environment", f.display()))
                    .unwrap_or_else(|| "defaults + environment".into())
            ),
            ConfigCommand::Print => print!("{}", settings.to_redacted_toml()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Settings::default()
            .validate()
            .expect("defaults must validate");
    }

    #[test]
    fn a_bad_duration_names_the_key_and_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("herald.toml");
        std::fs::write(&file, "[worker]\nblock = \"soon\"\n").expect("write config");
        let err = Settings::load(&Source { file: Some(file) }, &Overrides::default())
            .expect_err("a bad duration must fail")
            .to_string();
        assert!(err.contains("worker.block"), "{err}");
        assert!(err.contains("herald.toml"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("herald.toml");
        std::fs::write(&file, "[api]\nlisten_on = \"0.0.0.0:1\"\n").expect("write config");
        let err = Settings::load(&Source { file: Some(file) }, &Overrides::default())
            .expect_err("an unknown key must fail")
            .to_string();
        assert!(err.contains("listen_on"), "{err}");
    }

    #[test]
    fn the_shipped_config_file_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let shipped: Settings = Figment::new()
            .merge(Toml::file_exact(&path))
            .extract()
            .expect("config.toml must parse");
        assert_eq!(
            toml::to_string(&shipped).expect("render"),
            toml::to_string(&Settings::default()).expect("render"),
            "config.toml must document the defaults exactly"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let mut s = Settings::default();
        s.redis.url = Secret::new("redis://:hunter2@db:6379");
        s.api.subscriber_tokens.secret = Secret::new("hunter2-hunter2-hunter2-hunter2-hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!s.to_redacted_toml().contains("hunter2"));
    }

    #[test]
    fn a_push_proxy_needs_the_known_services_allowlist_and_never_prints_its_credentials() {
        let mut s = Settings::default();
        s.push.proxy = Secret::new("http://key-5d41402a:@proxy.internal:3128");
        assert_eq!(s.validate().expect_err("refused").key, "push.proxy");
        s.push.known_services_only = true;
        s.validate().expect("valid with the allowlist");
        assert!(!s.to_redacted_toml().contains("key-5d41402a"));
        s.push.proxy = Secret::new("socks5://proxy.internal:1080");
        assert_eq!(s.validate().expect_err("refused").key, "push.proxy");
    }

    #[test]
    fn a_block_longer_than_five_seconds_is_refused() {
        let mut s = Settings::default();
        s.worker.block = Duration::from_secs(30);
        let err = s.validate().expect_err("must fail");
        assert_eq!(err.key, "worker.block");
    }

    #[test]
    fn ways_to_reach_redis_and_push_limits_are_checked_naming_the_key() {
        let refused = |change: &dyn Fn(&mut Settings)| {
            let mut s = Settings::default();
            change(&mut s);
            s.validate().expect_err("must fail").key
        };
        let url = |s: &mut Settings| s.redis.url = Secret::new("redis://127.0.0.1:6379");
        let node = || Secret::new("redis://127.0.0.1:7000");
        assert_eq!(
            refused(&|s| {
                url(s);
                s.redis.cluster_nodes = vec![node()];
            }),
            "redis.cluster_nodes"
        );
        assert_eq!(
            refused(&|s| s.redis.cluster_nodes = vec![Secret::new("http://x")]),
            "redis.cluster_nodes"
        );
        assert_eq!(
            refused(&|s| {
                url(s);
                s.redis.sentinel.master = "m".into();
                s.redis.sentinel.nodes = vec![node()];
            }),
            "redis.sentinel.nodes"
        );
        assert_eq!(
            refused(&|s| s.redis.sentinel.nodes = vec![node()]),
            "redis.sentinel.master"
        );
        assert_eq!(
            refused(&|s| s.redis.sentinel.master = "m".into()),
            "redis.sentinel.master"
        );
        assert_eq!(
            refused(&|s| {
                s.redis.sentinel.master = "m".into();
                s.redis.sentinel.nodes = vec![Secret::new("not a url")];
            }),
            "redis.sentinel.nodes"
        );
        assert_eq!(
            refused(&|s| s.redis.wait_replicas = 17),
            "redis.wait_replicas"
        );
        assert_eq!(
            refused(&|s| {
                s.redis.wait_replicas = 1;
                s.redis.wait_timeout = s.redis.command_timeout;
            }),
            "redis.wait_timeout"
        );
        assert_eq!(
            refused(&|s| s.push.allowed_ports = vec![]),
            "push.allowed_ports"
        );
        assert_eq!(
            refused(&|s| s.push.allowed_ports = vec![443, 0]),
            "push.allowed_ports"
        );
        // Secrets in the new keys are redacted when the configuration is shown.
        let mut s = Settings::default();
        s.redis.sentinel.password = Secret::new("hunter2");
        s.redis.sentinel.nodes = vec![Secret::new("redis://:hunter2@127.0.0.1:26379")];
        s.redis.cluster_nodes = vec![Secret::new("redis://:hunter2@127.0.0.1:7000")];
        assert!(!s.to_redacted_toml().contains("hunter2"));
    }

    #[test]
    fn tls_files_are_checked_at_start_naming_the_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write a test file");
            path
        };
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("a certificate");
        let ca = write("ca.pem", &cert.pem());
        let client_key = write("key.pem", &key.serialize_pem());
        let junk = write("junk.pem", "not a certificate");
        let check = |change: &dyn Fn(&mut Settings)| {
            let mut s = Settings::default();
            s.redis.url = Secret::new("rediss://127.0.0.1:6380");
            change(&mut s);
            s.validate()
        };
        let refused = |change: &dyn Fn(&mut Settings)| {
            let e = check(change).expect_err("must fail");
            (e.key, e.message)
        };
        check(&|s| {
            s.redis.tls_ca_file = ca.clone();
            s.redis.tls_cert_file = ca.clone();
            s.redis.tls_key_file = client_key.clone();
        })
        .expect("a CA, a certificate and its key are accepted");
        let (key, message) = refused(&|s| s.redis.tls_ca_file = dir.path().join("missing.pem"));
        assert_eq!(key, "redis.tls_ca_file");
        assert!(message.contains("cannot be read"), "{message}");
        let (key, message) = refused(&|s| s.redis.tls_ca_file = junk.clone());
        assert_eq!(key, "redis.tls_ca_file");
        assert!(message.contains("holds no PEM certificate"), "{message}");
        let (key, message) = refused(&|s| {
            s.redis.url = Secret::new("redis://127.0.0.1:6379");
            s.redis.tls_ca_file = ca.clone();
        });
        assert_eq!(key, "redis.tls_ca_file");
        assert!(message.contains("rediss://"), "{message}");
        assert_eq!(
            refused(&|s| s.redis.tls_cert_file = ca.clone()).0,
            "redis.tls_key_file"
        );
        assert_eq!(
            refused(&|s| s.redis.tls_key_file = client_key.clone()).0,
            "redis.tls_cert_file"
        );
        assert_eq!(
            refused(&|s| {
                s.redis.tls_cert_file = ca.clone();
                s.redis.tls_key_file = junk.clone();
            })
            .0,
            "redis.tls_key_file"
        );
        let (key, message) = refused(&|s| {
            s.redis.url = Secret::default();
            s.redis.cluster_nodes = vec![Secret::new("rediss://127.0.0.1:7000")];
        });
        assert_eq!(key, "redis.cluster_nodes");
        assert!(
            message.contains("TLS is supported with redis.url"),
            "{message}"
        );
    }

    #[test]
    fn each_role_has_its_own_admin_port_unless_one_is_given() {
        let mut s = Settings::default();
        let port = |s: &Settings, role| s.admin.address(role).expect("an address").port();
        assert_eq!(
            (port(&s, "worker"), port(&s, "reclaimer"), port(&s, "audit")),
            (9464, 9465, 9466)
        );
        s.admin.listen = "0.0.0.0:9100".into();
        assert_eq!(port(&s, "reclaimer"), 9100);
        s.admin.listen = "localhost".into();
        let err = s.validate().expect_err("must fail");
        assert_eq!(err.key, "admin.listen");
    }

    #[test]
    fn a_value_out_of_range_names_the_key_and_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("herald.toml");
        std::fs::write(&file, "[redis]\npartitions = 0\n").expect("write config");
        let err = Settings::load(&Source { file: Some(file) }, &Overrides::default())
            .expect_err("must fail")
            .to_string();
        assert!(
            err.contains("redis.partitions must be between 1 and 1024"),
            "{err}"
        );
        assert!(err.contains("herald.toml"), "{err}");
    }
}
