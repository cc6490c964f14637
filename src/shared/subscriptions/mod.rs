//! Push subscriptions: what a browser's `PushSubscription.toJSON()` gives us, who
//! it belongs to and what it wants, validated and kept in Redis.
//!
//! A subscription's id is derived from its endpoint, so registering the same
//! endpoint again updates it instead of adding a second one.

use std::collections::{BTreeMap, HashMap};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use redis::Script;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::shared::db::Db;
use crate::shared::endpoint;
use crate::shared::event::{format_time, hex_lower, InvalidField};
use crate::shared::keys::SUBSCRIPTION_CHANGES_KEPT;
pub use crate::shared::notification::Format;

/// `POST /v1/subscriptions` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    #[serde(default)]
    pub user: Option<String>,
    pub subscription: BrowserSubscription,
    /// Topic patterns (`*` one word, `#` zero or more words).
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub headers: Option<HeaderFilter>,
    /// The payload this device receives: `herald` or `declarative`;
    /// `api.default_subscription_format` when absent.
    #[serde(default)]
    pub format: Option<Format>,
}

/// The browser's `PushSubscription.toJSON()`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrowserSubscription {
    pub endpoint: String,
    #[serde(default, rename = "expirationTime")]
    pub expiration_time: Option<serde_json::Value>,
    pub keys: BrowserKeys,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrowserKeys {
    /// The user agent's P-256 public key, base64url.
    pub p256dh: String,
    /// The 16-byte authentication secret, base64url.
    pub auth: String,
}

/// A filter on event headers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeaderFilter {
    #[serde(rename = "match", default)]
    pub mode: MatchMode,
    pub values: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MatchMode {
    #[default]
    All,
    Any,
}

/// A stored subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub user: Option<String>,
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
    pub topics: Vec<String>,
    pub headers: Option<HeaderFilter>,
    pub format: Format,
    pub created_at: String,
}

/// What `GET /v1/subscriptions` shows: never the keys, nor the endpoint's path,
/// which acts as a credential.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionView {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub endpoint_origin: String,
    pub topics: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderFilter>,
    pub format: Format,
    pub created_at: String,
}

impl Subscription {
    pub fn view(&self) -> SubscriptionView {
        SubscriptionView {
            id: self.id.clone(),
            user: self.user.clone(),
            endpoint_origin: url::Url::parse(&self.endpoint)
                .map(|u| endpoint::origin(&u))
                .unwrap_or_default(),
            topics: self.topics.clone(),
            headers: self.headers.clone(),
            format: self.format,
            created_at: self.created_at.clone(),
        }
    }

    fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("endpoint", self.endpoint.clone()),
            ("p256dh", self.p256dh.clone()),
            ("auth", self.auth.clone()),
            (
                "topics",
                serde_json::to_string(&self.topics).expect("strings serialize"),
            ),
            ("created_at", self.created_at.clone()),
            ("updated_at", format_time(Utc::now())),
        ];
        if let Some(user) = &self.user {
            fields.push(("user", user.clone()));
        }
        if let Some(headers) = &self.headers {
            fields.push((
                "headers",
                serde_json::to_string(headers).expect("filter serializes"),
            ));
        }
        // Absent is herald's format: what every subscription of earlier versions gets.
        if self.format != Format::Herald {
            fields.push(("format", self.format.as_str().to_string()));
        }
        fields
    }

    /// Reads a stored hash back; an error means the stored subscription is unusable.
    pub fn from_fields(id: &str, fields: &HashMap<String, String>) -> Result<Subscription, String> {
        let need = |name: &str| {
            fields
                .get(name)
                .cloned()
                .ok_or_else(|| format!("subscription {id}: field {name:?} is missing"))
        };
        let topics = match fields.get("topics") {
            Some(json) => {
                serde_json::from_str(json).map_err(|e| format!("subscription {id}: topics: {e}"))?
            }
            None => Vec::new(),
        };
        let headers = match fields.get("headers") {
            Some(json) => Some(
                serde_json::from_str(json)
                    .map_err(|e| format!("subscription {id}: headers: {e}"))?,
            ),
            None => None,
        };
        let format = match fields.get("format") {
            None => Format::Herald,
            Some(text) => Format::parse(text).ok_or_else(|| {
                format!("subscription {id}: format {text:?} is not herald or declarative")
            })?,
        };
        Ok(Subscription {
            id: id.to_string(),
            user: fields.get("user").cloned(),
            format,
            endpoint: need("endpoint")?,
            p256dh: need("p256dh")?,
            auth: need("auth")?,
            topics,
            headers,
            created_at: fields.get("created_at").cloned().unwrap_or_default(),
        })
    }
}

/// The id of the subscription for an endpoint: stable, so a re-registration updates it.
pub fn id_for_endpoint(endpoint: &str) -> String {
    hex_lower(&Sha256::digest(endpoint.as_bytes())[..16])
}

impl SubscriptionInput {
    /// Validates everything a push will need, so a bad subscription fails here
    /// and not at send time. `formats`: the default format, and whether the
    /// declarative one can be made (`events.site_url` is set).
    pub fn validate(
        &self,
        rules: &endpoint::Rules,
        formats: FormatRules,
    ) -> Result<Subscription, InvalidField> {
        let endpoint = endpoint::check(&self.subscription.endpoint, rules)
            .map_err(|message| InvalidField::new("subscription.endpoint", message))?;
        check_p256dh(&self.subscription.keys.p256dh)?;
        let auth = URL_SAFE_NO_PAD
            .decode(self.subscription.keys.auth.trim_end_matches('='))
            .map_err(|e| {
                InvalidField::new("subscription.keys.auth", format!("not base64url: {e}"))
            })?;
        if auth.len() != 16 {
            return Err(InvalidField::new(
                "subscription.keys.auth",
                format!("must be 16 bytes (got {})", auth.len()),
            ));
        }
        let topics = normalized(&self.topics);
        check_interests(self.user.as_deref(), &topics, self.headers.as_ref())?;
        let format = self.format.unwrap_or(formats.default);
        if format == Format::Declarative && !formats.declarative_ready {
            return Err(InvalidField::new(
                "format",
                "declarative needs events.site_url set on herald (Declarative Web Push messages carry absolute URLs only); ask the operator, or register with format herald",
            ));
        }
        Ok(Subscription {
            format,
            id: id_for_endpoint(endpoint.as_str()),
            user: self.user.clone(),
            endpoint: endpoint.to_string(),
            p256dh: self
                .subscription
                .keys
                .p256dh
                .trim_end_matches('=')
                .to_string(),
            auth: URL_SAFE_NO_PAD.encode(auth),
            topics,
            headers: self.headers.clone(),
            created_at: format_time(Utc::now()),
        })
    }
}

/// What decides a new subscription's payload format.
#[derive(Debug, Clone, Copy, Default)]
pub struct FormatRules {
    /// `api.default_subscription_format`.
    pub default: Format,
    /// `events.site_url` is set.
    pub declarative_ready: bool,
}

impl FormatRules {
    pub fn of(settings: &crate::shared::config::Settings) -> FormatRules {
        FormatRules {
            default: settings.api.default_subscription_format,
            declarative_ready: settings.events.site().is_some(),
        }
    }
}

/// Most topic patterns one subscription may have.
pub const MAX_PATTERNS: usize = 32;
/// Most headers one filter may name; longest header name and value.
pub const MAX_FILTER_HEADERS: usize = 32;
pub const MAX_HEADER_NAME: usize = 64;
pub const MAX_HEADER_VALUE: usize = 256;

/// Patterns as stored: each run of `#` words made one (`a.#.#.b` is
/// `a.#.b`: zero-or-more twice is zero-or-more), so a pattern cannot be made
/// of a hundred of them.
fn normalized(topics: &[String]) -> Vec<String> {
    topics
        .iter()
        .map(|pattern| {
            let mut words: Vec<&str> = Vec::new();
            for word in pattern.split('.') {
                if !(word == "#" && words.last() == Some(&"#")) {
                    words.push(word);
                }
            }
            words.join(".")
        })
        .collect()
}

/// The interests of a subscription: a valid user, valid patterns, a non-empty
/// header filter, and at least one of the three.
fn check_interests(
    user: Option<&str>,
    topics: &[String],
    headers: Option<&HeaderFilter>,
) -> Result<(), InvalidField> {
    if let Some(user) = user {
        crate::shared::event::check_identifier("user", user, 128)?;
    }
    if topics.len() > MAX_PATTERNS {
        return Err(InvalidField::new(
            "topics",
            format!(
                "at most {MAX_PATTERNS} patterns per subscription (got {})",
                topics.len()
            ),
        ));
    }
    for (i, pattern) in topics.iter().enumerate() {
        check_pattern(pattern).map_err(|m| InvalidField::new(format!("topics[{i}]"), m))?;
    }
    if let Some(filter) = headers {
        if filter.values.is_empty() {
            return Err(InvalidField::new(
                "headers.values",
                "must name at least one header",
            ));
        }
        if filter.values.len() > MAX_FILTER_HEADERS {
            return Err(InvalidField::new(
                "headers.values",
                format!(
                    "at most {MAX_FILTER_HEADERS} headers per filter (got {})",
                    filter.values.len()
                ),
            ));
        }
        for (name, value) in &filter.values {
            if name.is_empty() || name.len() > MAX_HEADER_NAME || value.len() > MAX_HEADER_VALUE {
                return Err(InvalidField::new(
                    format!("headers.values.{name}"),
                    format!(
                        "names are 1 to {MAX_HEADER_NAME} bytes, values at most {MAX_HEADER_VALUE}"
                    ),
                ));
            }
        }
    }
    if user.is_none() && topics.is_empty() && headers.is_none() {
        return Err(InvalidField::new(
            "user",
            "a subscription needs a user, topics or a header filter",
        ));
    }
    Ok(())
}

/// `PATCH /v1/subscriptions/{id}` body: the interests to change. A field left
/// out stays as it is; `"user": null` or `"headers": null` removes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterestsPatch {
    #[serde(default, deserialize_with = "present")]
    pub user: Option<Option<String>>,
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub headers: Option<Option<HeaderFilter>>,
}

/// Tells `"field": null` (Some(None)) from a field left out (None).
fn present<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl InterestsPatch {
    /// The subscription with its interests changed, validated like a registration.
    pub fn apply(&self, sub: &Subscription) -> Result<Subscription, InvalidField> {
        if self.user.is_none() && self.topics.is_none() && self.headers.is_none() {
            return Err(InvalidField::new(
                "user",
                "name at least one of user, topics, headers to change",
            ));
        }
        let mut changed = sub.clone();
        if let Some(user) = &self.user {
            changed.user = user.clone();
        }
        if let Some(topics) = &self.topics {
            changed.topics = normalized(topics);
        }
        if let Some(headers) = &self.headers {
            changed.headers = headers.clone();
        }
        check_interests(
            changed.user.as_deref(),
            &changed.topics,
            changed.headers.as_ref(),
        )?;
        Ok(changed)
    }
}

/// `p256dh` must be an uncompressed P-256 point (65 bytes, `0x04 | x | y`) on the curve.
fn check_p256dh(text: &str) -> Result<(), InvalidField> {
    let field = "subscription.keys.p256dh";
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| InvalidField::new(field, format!("not base64url: {e}")))?;
    if bytes.len() != 65 || bytes[0] != 0x04 {
        return Err(InvalidField::new(
            field,
            format!(
                "must be a 65-byte uncompressed P-256 point (got {} bytes)",
                bytes.len()
            ),
        ));
    }
    p256::PublicKey::from_sec1_bytes(&bytes)
        .map_err(|_| InvalidField::new(field, "is not a point on the P-256 curve"))?;
    Ok(())
}

/// A topic pattern: dot-separated words, each a literal word, `*` or `#`.
pub(crate) fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.len() > 255 {
        return Err("must be 1 to 255 characters".into());
    }
    let max = crate::shared::event::MAX_TOPIC_WORDS;
    if pattern.split('.').count() > max {
        return Err(format!(
            "must have at most {max} words (after runs of '#' are made one)"
        ));
    }
    for word in pattern.split('.') {
        let literal = !word.is_empty()
            && word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':'));
        if !(literal || word == "*" || word == "#") {
            return Err(format!(
                "word {word:?} must be '*', '#' or a non-empty word of A-Z, a-z, 0-9, '-', '_', ':'"
            ));
        }
    }
    Ok(())
}

static PUT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
static DELETE: std::sync::OnceLock<Script> = std::sync::OnceLock::new();

fn put_script() -> &'static Script {
    crate::shared::db::script(&PUT, include_str!("put.lua"))
}

fn delete_script() -> &'static Script {
    crate::shared::db::script(&DELETE, include_str!("delete.lua"))
}

/// A stored subscription that cannot be read back (edited by hand, or written by another version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub id: String,
    pub problem: String,
    /// Its `user` field, when that much can be read.
    pub user: Option<String>,
}

/// Where following the changes starts when none was recorded yet (a stream id before any).
pub const NO_CHANGE_YET: &str = "0-0";

/// One subscription change, as `{P:subs}:changes` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The change's stream entry id.
    pub entry: String,
    /// The version the change made.
    pub version: i64,
    /// The subscription changed (created, updated or deleted).
    pub id: String,
}

/// Whether a put created a subscription or updated an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Created,
    Updated,
    /// Not stored: its user has `max` subscriptions already.
    UserFull {
        max: u32,
    },
    /// Not stored: it exists for another user than the one it had to belong to.
    OwnedByAnother,
}

/// Subscriptions in Redis. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Db,
    /// Most subscriptions one user may have (0: no limit).
    max_per_user: u32,
}

/// Attempts of an optimistic script before giving up (only concurrent re-registrations collide).
const ATTEMPTS: usize = 8;

impl Store {
    pub fn new(db: Db) -> Store {
        Store {
            db,
            max_per_user: 0,
        }
    }

    /// A store that refuses a user's subscription beyond `max` (0: no limit).
    pub fn with_max_per_user(self, max: u32) -> Store {
        Store {
            max_per_user: max,
            ..self
        }
    }

    pub async fn put(&self, sub: &Subscription) -> anyhow::Result<Stored> {
        self.put_owned(sub, "").await
    }

    /// [`Store::put`], when an existing subscription of this endpoint belongs to
    /// `owner` (or `owner` is empty): checked in the script that writes.
    pub async fn put_owned(&self, sub: &Subscription, owner: &str) -> anyhow::Result<Stored> {
        let keys = &self.db.keys;
        let sub_key = keys.subscription(&sub.id);
        let mut conn = self.db.conn();
        for _ in 0..ATTEMPTS {
            let previous: Option<String> = redis::cmd("HGET")
                .arg(&sub_key)
                .arg("user")
                .query_async(&mut conn)
                .await?;
            let previous = previous.unwrap_or_default();
            let user_key = |user: &str| {
                if user.is_empty() {
                    sub_key.clone()
                } else {
                    keys.user_subscriptions(user)
                }
            };
            let new_user = sub.user.clone().unwrap_or_default();
            let mut inv = put_script().prepare_invoke();
            inv.key(&sub_key)
                .key(keys.all_subscriptions())
                .key(keys.subscriptions_version())
                .key(user_key(&new_user))
                .key(user_key(&previous))
                .key(keys.subscription_changes())
                .arg(&sub.id)
                .arg(&new_user)
                .arg(&previous)
                .arg(SUBSCRIPTION_CHANGES_KEPT)
                .arg(self.max_per_user)
                .arg(owner);
            for (field, value) in sub.to_fields() {
                inv.arg(field).arg(value);
            }
            let answer: i64 = inv.invoke_async(&mut conn).await?;
            match answer {
                1 => return Ok(Stored::Created),
                0 => return Ok(Stored::Updated),
                -2 => {
                    return Ok(Stored::UserFull {
                        max: self.max_per_user,
                    })
                }
                -3 => return Ok(Stored::OwnedByAnother),
                _ => continue,
            }
        }
        anyhow::bail!(
            "subscription {} changed owner concurrently {ATTEMPTS} times; try again",
            sub.id
        )
    }

    /// Deletes a subscription; false when there was none.
    pub async fn delete(&self, id: &str) -> anyhow::Result<bool> {
        self.delete_owned(id, "").await
    }

    /// [`Store::delete`], only when it belongs to `owner` (or `owner` is
    /// empty); another user's is `false`, as if there were none.
    pub async fn delete_owned(&self, id: &str, owner: &str) -> anyhow::Result<bool> {
        let keys = &self.db.keys;
        let sub_key = keys.subscription(id);
        let mut conn = self.db.conn();
        for _ in 0..ATTEMPTS {
            let user: Option<String> = redis::cmd("HGET")
                .arg(&sub_key)
                .arg("user")
                .query_async(&mut conn)
                .await?;
            let user = user.unwrap_or_default();
            let user_key = if user.is_empty() {
                sub_key.clone()
            } else {
                keys.user_subscriptions(&user)
            };
            let answer: i64 = delete_script()
                .key(&sub_key)
                .key(keys.all_subscriptions())
                .key(keys.subscriptions_version())
                .key(user_key)
                .key(keys.subscription_changes())
                .arg(id)
                .arg(&user)
                .arg(SUBSCRIPTION_CHANGES_KEPT)
                .arg(owner)
                .invoke_async(&mut conn)
                .await?;
            match answer {
                1 => return Ok(true),
                0 => return Ok(false),
                _ => continue,
            }
        }
        anyhow::bail!("subscription {id} changed owner concurrently {ATTEMPTS} times; try again")
    }

    /// The version and the last change, read together: where following the
    /// changes starts for an index built from every subscription after this.
    pub async fn snapshot(&self) -> anyhow::Result<(i64, String)> {
        let keys = &self.db.keys;
        let (version, last): (Option<i64>, Vec<(String, Vec<String>)>) = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(keys.subscriptions_version())
            .cmd("XREVRANGE")
            .arg(keys.subscription_changes())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.db.conn())
            .await?;
        let cursor = last.into_iter().next().map(|(id, _)| id);
        Ok((
            version.unwrap_or(0),
            cursor.unwrap_or_else(|| NO_CHANGE_YET.into()),
        ))
    }

    /// Up to `count` changes from the change `cursor` on (itself included),
    /// oldest first; `None` when one of them is not a change herald wrote.
    pub async fn changes_from(
        &self,
        cursor: &str,
        count: usize,
    ) -> anyhow::Result<Option<Vec<Change>>> {
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(self.db.keys.subscription_changes())
            .arg(cursor)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.db.conn())
            .await?;
        let mut changes = Vec::with_capacity(entries.len());
        for (entry, fields) in entries {
            let version = fields.get("v").and_then(|v| v.parse().ok());
            match (version, fields.get("id")) {
                (Some(version), Some(id)) => changes.push(Change {
                    entry,
                    version,
                    id: id.clone(),
                }),
                _ => {
                    tracing::warn!(entry = %entry, fields = ?fields, "a subscription change without a version or an id (written by hand?); reading every subscription instead");
                    return Ok(None);
                }
            }
        }
        Ok(Some(changes))
    }

    /// Every subscription (or what is wrong with it), handed to `each` as it is
    /// read, a thousand at a time: all of them are never held here at once.
    pub async fn for_each(
        &self,
        mut each: impl FnMut(Result<Subscription, Unreadable>),
    ) -> anyhow::Result<()> {
        let mut conn = self.db.conn();
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.db.keys.all_subscriptions())
            .query_async(&mut conn)
            .await?;
        ids.sort();
        let mut ids = ids.into_iter();
        loop {
            let chunk: Vec<String> = ids.by_ref().take(1000).collect();
            if chunk.is_empty() {
                return Ok(());
            }
            for found in self.fetch(&chunk).await? {
                each(found);
            }
        }
    }

    /// One subscription by id; `None` when there is none.
    pub async fn get(&self, id: &str) -> anyhow::Result<Option<Result<Subscription, Unreadable>>> {
        Ok(self.fetch(&[id.to_string()]).await?.into_iter().next())
    }

    /// Every subscription of one user. Unreadable ones are returned as errors, by id.
    pub async fn for_user(
        &self,
        user: &str,
    ) -> anyhow::Result<Vec<Result<Subscription, Unreadable>>> {
        let mut conn = self.db.conn();
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.db.keys.user_subscriptions(user))
            .query_async(&mut conn)
            .await?;
        ids.sort();
        drop(conn);
        self.fetch(&ids).await
    }

    /// The subscriptions with these ids, in one pipeline; ids deleted meanwhile are skipped.
    pub async fn fetch(
        &self,
        ids: &[String],
    ) -> anyhow::Result<Vec<Result<Subscription, Unreadable>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(self.db.keys.subscription(id));
        }
        let mut conn = self.db.conn();
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        Ok(ids
            .iter()
            .zip(hashes)
            // A hash deleted between SMEMBERS and HGETALL is simply gone.
            .filter(|(_, fields)| !fields.is_empty())
            .map(|(id, fields)| {
                Subscription::from_fields(id, &fields).map_err(|problem| Unreadable {
                    id: id.clone(),
                    problem,
                    user: fields.get("user").cloned(),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(endpoint: &str, p256dh: &str, auth: &str) -> SubscriptionInput {
        serde_json::from_value(serde_json::json!({
            "user": "u-42",
            "subscription": {"endpoint": endpoint, "expirationTime": null, "keys": {"p256dh": p256dh, "auth": auth}},
        }))
        .expect("parses")
    }

    fn good_key() -> String {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        URL_SAFE_NO_PAD.encode(secret.public_key().to_sec1_bytes())
    }

    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

    #[test]
    fn runs_of_hash_collapse_and_interests_are_capped() {
        let mut sub = input("https://fcm.googleapis.com/fcm/send/abc", &good_key(), AUTH);
        sub.topics = vec![
            vec!["#"; 128].join("."),
            "a.#.#.b.#".into(),
            "#.#.*.#".into(),
        ];
        let stored = sub
            .validate(&endpoint::Rules::strict(), FormatRules::default())
            .expect("valid");
        assert_eq!(stored.topics, vec!["#", "a.#.b.#", "#.*.#"]);

        sub.topics = (0..=MAX_PATTERNS).map(|i| format!("t{i}.#")).collect();
        let err = sub
            .validate(&endpoint::Rules::strict(), FormatRules::default())
            .expect_err("too many");
        assert_eq!(err.field, "topics");

        sub.topics = vec!["a.#".into()];
        sub.headers = Some(HeaderFilter {
            mode: MatchMode::All,
            values: (0..=MAX_FILTER_HEADERS)
                .map(|i| (format!("h{i}"), "v".to_string()))
                .collect(),
        });
        let err = sub
            .validate(&endpoint::Rules::strict(), FormatRules::default())
            .expect_err("too many headers");
        assert_eq!(err.field, "headers.values");

        sub.headers = Some(HeaderFilter {
            mode: MatchMode::All,
            values: [("lot".to_string(), "x".repeat(MAX_HEADER_VALUE + 1))].into(),
        });
        let err = sub
            .validate(&endpoint::Rules::strict(), FormatRules::default())
            .expect_err("long value");
        assert_eq!(err.field, "headers.values.lot");
    }

    #[test]
    fn a_browser_subscription_is_accepted() {
        let sub = input("https://fcm.googleapis.com/fcm/send/abc", &good_key(), AUTH)
            .validate(&endpoint::Rules::strict(), FormatRules::default())
            .expect("valid");
        assert_eq!(
            sub.id,
            id_for_endpoint("https://fcm.googleapis.com/fcm/send/abc")
        );
        assert_eq!(sub.user.as_deref(), Some("u-42"));
    }

    #[test]
    fn keys_of_the_wrong_shape_are_refused() {
        let ep = "https://push.example.net/x";
        let short = URL_SAFE_NO_PAD.encode([4u8; 33]);
        let off_curve = URL_SAFE_NO_PAD.encode({
            let mut b = [7u8; 65];
            b[0] = 4;
            b
        });
        for (p256dh, auth, field) in [
            (short.as_str(), AUTH, "subscription.keys.p256dh"),
            (off_curve.as_str(), AUTH, "subscription.keys.p256dh"),
            ("not base64!", AUTH, "subscription.keys.p256dh"),
        ] {
            let err = input(ep, p256dh, auth)
                .validate(&endpoint::Rules::strict(), FormatRules::default())
                .expect_err("must fail");
            assert_eq!(err.field, field, "{err}");
        }
        let key = good_key();
        let err = input(ep, &key, "AAAA")
            .validate(&endpoint::Rules::strict(), FormatRules::default())
            .expect_err("short auth");
        assert_eq!(err.field, "subscription.keys.auth");
    }

    #[test]
    fn insecure_endpoints_need_the_setting() {
        let key = good_key();
        let err = input("http://127.0.0.1:9000/push/1", &key, AUTH)
            .validate(&endpoint::Rules::strict(), FormatRules::default())
            .expect_err("insecure");
        assert_eq!(err.field, "subscription.endpoint");
        input("http://127.0.0.1:9000/push/1", &key, AUTH)
            .validate(
                &endpoint::Rules {
                    allow_insecure: true,
                    ports: vec![443],
                    known_services: None,
                },
                FormatRules::default(),
            )
            .expect("allowed when configured");
    }

    #[test]
    fn topic_patterns_are_checked() {
        assert!(check_pattern("parking.*.entry").is_ok());
        assert!(check_pattern("#").is_ok());
        assert!(check_pattern("a..b").is_err());
        assert!(check_pattern("a.b*").is_err());
    }
}
