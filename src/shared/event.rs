//! The event: what a producer hands herald, how it is validated, and how it
//! lives in a stream entry as flat fields that `XRANGE` shows readably.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::shared::notification::{self};
pub use crate::shared::notification::{Content, Json, Notification};

/// Longest Web Push TTL accepted, in seconds (28 days, what push services keep at most).
pub const MAX_TTL: u32 = 28 * 24 * 3600;
/// How far ahead `deliver_at` may be.
pub const MAX_DELAY_DAYS: i64 = 365;
/// Largest notification payload in bytes: the most the `web-push` crate encrypts in one record.
pub const MAX_PAYLOAD_BYTES: usize = 3052;
/// Version of the stream entry layout, written as field `v`.
pub const ENTRY_VERSION: &str = "1";
const MAX_HEADERS: usize = 32;

/// An event as a producer sends it (`POST /v1/events`, `herald publish`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// Idempotency key; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Routing key: dot-separated words.
    pub topic: String,
    /// Direct delivery to this user's devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Ordering key (e.g. the vehicle); also the Web Push `Topic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// What the device shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<Notification>,
    /// A data push: JSON for the service worker alone, without `notification`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Json<serde_json::Value>>,
    /// Producer time, RFC 3339; default now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_at: Option<String>,
    /// Delayed delivery time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_at: Option<String>,
    /// Web Push TTL in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgency: Option<Urgency>,
}

/// Web Push `Urgency` (RFC 8030 §5.3).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Urgency {
    VeryLow,
    Low,
    #[default]
    Normal,
    High,
}

impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }

    pub fn parse(text: &str) -> Option<Urgency> {
        match text {
            "very-low" => Some(Urgency::VeryLow),
            "low" => Some(Urgency::Low),
            "normal" => Some(Urgency::Normal),
            "high" => Some(Urgency::High),
            _ => None,
        }
    }
}

/// A validated event with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub topic: String,
    pub user: Option<String>,
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub content: Content,
    pub publish_at: DateTime<Utc>,
    pub deliver_at: Option<DateTime<Utc>>,
    pub ttl: u32,
    pub urgency: Urgency,
}

/// A field of an event that failed validation: which one, and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    pub field: String,
    pub message: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Defaults applied while validating.
#[derive(Debug, Clone)]
pub struct EventDefaults {
    pub ttl: u32,
    /// How far ahead of now a `publish_at` may be.
    pub max_clock_skew: std::time::Duration,
    /// `events.site_url`: where root-relative URLs lead in a Declarative Web
    /// Push message (whose size is checked too, when it can be made).
    pub site_url: Option<std::sync::Arc<url::Url>>,
}

impl EventInput {
    /// Validates and fills defaults, as intake does: every rule, and, when
    /// `events.site_url` is set (declarative devices may exist), the size of
    /// the Declarative Web Push message too.
    pub fn validate(
        &self,
        defaults: &EventDefaults,
        now: DateTime<Utc>,
    ) -> Result<Event, InvalidField> {
        let event = self.check(defaults, now, false)?;
        if let Some(site) = &defaults.site_url {
            if let Some(Ok(message)) = event.declarative(Some(site)) {
                if message.len() > MAX_PAYLOAD_BYTES {
                    return Err(InvalidField::new(
                        "notification",
                        format!("the Declarative Web Push message would be {} bytes (every action repeats a URL to open, relative URLs are joined to events.site_url); at most {MAX_PAYLOAD_BYTES} fit in one Web Push message", message.len()),
                    ));
                }
            }
        }
        Ok(event)
    }

    /// Every rule but the declarative size, which intake checks and a worker
    /// does not (a device whose message is too big fails alone). `legacy`:
    /// see [`Notification::check`].
    fn check(
        &self,
        defaults: &EventDefaults,
        now: DateTime<Utc>,
        legacy: bool,
    ) -> Result<Event, InvalidField> {
        let id = match &self.id {
            Some(id) => {
                check_identifier("id", id, 128)?;
                id.clone()
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        check_topic(&self.topic)?;
        if let Some(user) = &self.user {
            check_identifier("user", user, 128)?;
        }
        if let Some(key) = &self.key {
            if key.is_empty() || key.len() > 256 {
                return Err(InvalidField::new("key", "must be 1 to 256 bytes"));
            }
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(InvalidField::new(
                "headers",
                format!("at most {MAX_HEADERS} headers (got {})", self.headers.len()),
            ));
        }
        for (name, value) in &self.headers {
            check_identifier(&format!("headers.{name}"), name, 64)?;
            if value.len() > 256 {
                return Err(InvalidField::new(
                    format!("headers.{name}"),
                    "value must be at most 256 bytes",
                ));
            }
        }
        let content = match (&self.notification, &self.data) {
            (Some(n), None) => {
                n.check(legacy)?;
                Content::Notification(Box::new(n.clone()))
            }
            (None, Some(data)) => {
                notification::check_data("data", data)?;
                Content::Data(data.clone())
            }
            (Some(_), Some(_)) => {
                return Err(InvalidField::new(
                    "data",
                    "an event with a notification carries its data in notification.data",
                ))
            }
            (None, None) => {
                return Err(InvalidField::new(
                    "notification",
                    "is required (or data alone, for a data push)",
                ))
            }
        };
        let publish_at = match &self.publish_at {
            Some(text) => parse_time("publish_at", text)?,
            None => now,
        };
        let skew =
            chrono::Duration::from_std(defaults.max_clock_skew).unwrap_or(chrono::Duration::MAX);
        if publish_at > now + skew {
            return Err(InvalidField::new(
                "publish_at",
                format!(
                    "is {} s ahead of herald's clock; at most {} s are allowed (events.max_clock_skew)",
                    (publish_at - now).num_seconds(),
                    skew.num_seconds()
                ),
            ));
        }
        let deliver_at = match &self.deliver_at {
            Some(text) => Some(parse_time("deliver_at", text)?),
            None => None,
        };
        if let Some(at) = deliver_at {
            if at > now + chrono::Duration::days(MAX_DELAY_DAYS) {
                return Err(InvalidField::new(
                    "deliver_at",
                    format!("must be at most {MAX_DELAY_DAYS} days ahead"),
                ));
            }
        }
        let ttl = self.ttl.unwrap_or(defaults.ttl);
        if ttl > MAX_TTL {
            return Err(InvalidField::new(
                "ttl",
                format!("must be at most {MAX_TTL} seconds (28 days)"),
            ));
        }
        let event = Event {
            id,
            topic: self.topic.clone(),
            user: self.user.clone(),
            key: self.key.clone(),
            headers: self.headers.clone(),
            content,
            publish_at,
            deliver_at,
            ttl,
            urgency: self.urgency.unwrap_or_default(),
        };
        let size = event.payload().len();
        if size > MAX_PAYLOAD_BYTES {
            return Err(InvalidField::new(
                event.content_field(),
                format!("the push payload would be {size} bytes; at most {MAX_PAYLOAD_BYTES} fit in one Web Push message"),
            ));
        }
        Ok(event)
    }
}

impl Event {
    /// When the event is due: its `deliver_at` when that is later than its
    /// `publish_at`. Its TTL counts from then, and so does its place in the
    /// order of its key (a reminder scheduled for later is not superseded by
    /// what happened before it).
    pub fn due_at(&self) -> DateTime<Utc> {
        self.deliver_at
            .map_or(self.publish_at, |at| at.max(self.publish_at))
    }

    /// What is left of the event's TTL at `now`, in whole seconds, counted from
    /// when it was due: `None` once it is over, as a push service would have
    /// dropped it by then. An event with a TTL of 0 ("now or never") has one
    /// second. A due time ahead of `now` (a producer's clock) leaves the whole TTL.
    pub fn ttl_left(&self, now: DateTime<Utc>) -> Option<u32> {
        let elapsed_ms = (now - self.due_at()).num_milliseconds().max(0) as u64;
        let life_ms = u64::from(self.ttl.max(1)) * 1000;
        if elapsed_ms >= life_ms {
            return None;
        }
        let elapsed_s = u32::try_from(elapsed_ms / 1000).unwrap_or(u32::MAX);
        Some(self.ttl.saturating_sub(elapsed_s))
    }

    /// The flat fields of the stream entry, in a stable order.
    pub fn to_fields(&self) -> Vec<(String, String)> {
        let mut f: Vec<(String, String)> = Vec::with_capacity(12 + self.headers.len());
        let mut put = |k: &str, v: &str| f.push((k.to_string(), v.to_string()));
        put("v", ENTRY_VERSION);
        put("id", &self.id);
        put("topic", &self.topic);
        if let Some(user) = &self.user {
            put("user", user);
        }
        if let Some(key) = &self.key {
            put("key", key);
        }
        put("publish_at", &format_time(self.publish_at));
        if let Some(at) = self.deliver_at {
            put("deliver_at", &format_time(at));
        }
        put("ttl", &self.ttl.to_string());
        put("urgency", self.urgency.as_str());
        match &self.content {
            Content::Notification(n) => n.to_fields(&mut |k, v| f.push((k.to_string(), v))),
            Content::Data(data) => f.push(("data".to_string(), data.text().to_string())),
        }
        for (name, value) in &self.headers {
            f.push((format!("h.{name}"), value.clone()));
        }
        f
    }

    /// Reads a stream entry back, as README's entry contract says: `topic` and
    /// `title` are required; `v` absent is the current version; `ttl` absent is
    /// `defaults.ttl`, `urgency` absent is normal; `id` and `publish_at` absent
    /// were filled in when the entry was read (see [`complete_entry`]). Every
    /// rule of the API applies. An error here makes the entry a poison message.
    pub fn from_fields(
        fields: &HashMap<String, String>,
        defaults: &EventDefaults,
    ) -> Result<Event, InvalidField> {
        let get = |name: &str| fields.get(name).cloned();
        let need = |name: &str| get(name).ok_or_else(|| InvalidField::new(name, "is required"));
        if let Some(names) = fields.get(NOT_UTF8) {
            let first = names.split(' ').next().unwrap_or_default();
            return Err(InvalidField::new(first, "is not UTF-8 text"));
        }
        match fields.get("v").map(String::as_str) {
            None | Some(ENTRY_VERSION) => {}
            Some(other) => {
                return Err(InvalidField::new(
                    "v",
                    format!("entry version {other:?} is not understood by this herald"),
                ))
            }
        }
        let ttl = match fields.get("ttl") {
            Some(text) => Some(text.parse::<u32>().map_err(|_| {
                InvalidField::new("ttl", format!("{text:?} is not a whole number of seconds"))
            })?),
            None => None,
        };
        let urgency = match fields.get("urgency") {
            Some(text) => Some(Urgency::parse(text).ok_or_else(|| {
                InvalidField::new(
                    "urgency",
                    format!("{text:?} is not very-low, low, normal or high"),
                )
            })?),
            None => None,
        };
        let (notification, data) = match get("title") {
            Some(title) => (Some(Notification::from_fields(title, &get)?), None),
            None => {
                if let Some(other) = notification::FIELDS
                    .iter()
                    .find(|name| **name != "data" && fields.contains_key(**name))
                {
                    return Err(InvalidField::new(
                        "title",
                        format!("is required with {other} (an entry without title is a data push: data alone)"),
                    ));
                }
                let data = get("data")
                    .map(|text| Json::parse(&text).map_err(|e| InvalidField::new("data", e)))
                    .transpose()?;
                if data.is_none() {
                    return Err(InvalidField::new(
                        "title",
                        "is required (or data alone, for a data push)",
                    ));
                }
                (None, data)
            }
        };
        let input = EventInput {
            id: Some(need("id")?),
            topic: need("topic")?,
            user: get("user"),
            key: get("key"),
            headers: fields
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("h.")
                        .map(|name| (name.to_string(), v.clone()))
                })
                .collect(),
            notification,
            data,
            publish_at: get("publish_at"),
            deliver_at: get("deliver_at"),
            ttl,
            urgency,
        };
        // An entry herald wrote as version 1 was checked then, by the rules of
        // its time; a producer's entry without `v` gets every rule.
        let legacy = fields.get("v").map(String::as_str) == Some(ENTRY_VERSION);
        input.check(defaults, Utc::now(), legacy)
    }

    /// The plaintext a device receives in herald's format: small JSON its
    /// service worker shows (README, "herald's payload").
    pub fn payload(&self) -> Vec<u8> {
        notification::herald_payload(
            &self.id,
            &self.topic,
            &format_time(self.publish_at),
            &self.content,
        )
    }

    /// The Declarative Web Push message, for a notification (a data push has
    /// none: every subscription gets herald's payload); `Err` when a URL needs
    /// `events.site_url` and it is not set.
    pub fn declarative(&self, site: Option<&url::Url>) -> Option<Result<Vec<u8>, &'static str>> {
        match &self.content {
            Content::Notification(n) => Some(n.declarative(site)),
            Content::Data(_) => None,
        }
    }

    /// The field an error about the whole content names.
    fn content_field(&self) -> &'static str {
        match self.content {
            Content::Notification(_) => "notification",
            Content::Data(_) => "data",
        }
    }
}

/// The field a reader adds to an entry whose fields (named in it) are not
/// UTF-8: such an entry is not an event.
pub const NOT_UTF8: &str = "herald.not_utf8";

/// The prefix of the id an entry without `id` gets: `xadd-` and its stream id.
pub const DERIVED_ID_PREFIX: &str = "xadd-";

/// Fills in what an entry written with plain `XADD` may leave out and only its
/// stream id can tell: `id` (`xadd-<stream id>`, the same on every read, so a
/// retry of the entry is the same event) and `publish_at` (when it entered
/// the stream). Done as entries are read, so dead letters and replays keep them.
pub fn complete_entry(stream_id: &str, fields: &mut HashMap<String, String>) {
    if !fields.contains_key("id") {
        fields.insert("id".into(), format!("{DERIVED_ID_PREFIX}{stream_id}"));
    }
    if !fields.contains_key("publish_at") {
        if let Some(at) = crate::shared::stream::id_time(stream_id) {
            fields.insert("publish_at".into(), format_time(at));
        }
    }
}

/// Times are written as RFC 3339 in UTC with milliseconds, so they sort as text.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(field: &str, text: &str) -> Result<DateTime<Utc>, InvalidField> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            InvalidField::new(
                field,
                format!("{e}; expected RFC 3339 like 2026-11-21T10:00:00Z"),
            )
        })
}

/// Ids, users and header names go into Redis keys and logs: printable, no spaces.
pub(crate) fn check_identifier(field: &str, value: &str, max: usize) -> Result<(), InvalidField> {
    if value.is_empty() || value.len() > max {
        return Err(InvalidField::new(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'))
    {
        return Err(InvalidField::new(
            field,
            "may only contain A-Z, a-z, 0-9 and - _ . : @",
        ));
    }
    Ok(())
}

/// Most words in a topic or a topic pattern: routing's work grows with them.
pub const MAX_TOPIC_WORDS: usize = 32;

fn check_topic(topic: &str) -> Result<(), InvalidField> {
    if topic.is_empty() || topic.len() > 255 {
        return Err(InvalidField::new("topic", "must be 1 to 255 characters"));
    }
    if topic.split('.').count() > MAX_TOPIC_WORDS {
        return Err(InvalidField::new(
            "topic",
            format!("must have at most {MAX_TOPIC_WORDS} words"),
        ));
    }
    for word in topic.split('.') {
        if word.is_empty() {
            return Err(InvalidField::new(
                "topic",
                "words between dots must not be empty",
            ));
        }
        if !word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':'))
        {
            return Err(InvalidField::new(
                "topic",
                format!("word {word:?} may only contain A-Z, a-z, 0-9, '-', '_' and ':' ('*' and '#' are for subscriptions)"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        hex.push(char::from(DIGITS[usize::from(b >> 4)]));
        hex.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: EventDefaults = EventDefaults {
        ttl: 3600,
        max_clock_skew: std::time::Duration::from_secs(300),
        site_url: None,
    };

    fn sample() -> EventInput {
        serde_json::from_value(serde_json::json!({
            "id": "evt-7f3a",
            "topic": "parking.lot-7.entry",
            "user": "u-42",
            "key": "12가3456",
            "headers": {"lot": "7", "kind": "entry"},
            "notification": {"title": "Entry", "body": "12가3456 entered lot 7", "url": "/visits/981"},
            "publish_at": "2026-11-21T10:00:00Z",
            "ttl": 600,
            "urgency": "high"
        }))
        .expect("sample parses")
    }

    #[test]
    fn an_event_survives_the_round_trip_through_stream_fields() {
        let event = sample().validate(&DEFAULTS, Utc::now()).expect("valid");
        let fields: HashMap<String, String> = event.to_fields().into_iter().collect();
        assert_eq!(fields["h.lot"], "7");
        assert_eq!(
            Event::from_fields(&fields, &DEFAULTS).expect("decodes"),
            event
        );
    }

    #[test]
    fn defaults_fill_id_time_ttl_and_urgency() {
        let input: EventInput = serde_json::from_value(
            serde_json::json!({"topic": "a.b", "user": "u", "notification": {"title": "t"}}),
        )
        .expect("parses");
        let now = Utc::now();
        let event = input.validate(&DEFAULTS, now).expect("valid");
        assert!(!event.id.is_empty());
        assert_eq!(event.publish_at, now);
        assert_eq!(event.ttl, 3600);
        assert_eq!(event.urgency, Urgency::Normal);
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (serde_json::json!({"topic": "a..b"}), "topic"),
            (serde_json::json!({"topic": "a.*"}), "topic"),
            (serde_json::json!({"id": "has space"}), "id"),
            (serde_json::json!({"user": ""}), "user"),
            (serde_json::json!({"publish_at": "yesterday"}), "publish_at"),
            (serde_json::json!({"ttl": MAX_TTL + 1}), "ttl"),
            (
                serde_json::json!({"notification": {"title": " "}}),
                "notification.title",
            ),
            (
                serde_json::json!({"notification": {"title": "t", "body": "x".repeat(4000)}}),
                "notification",
            ),
            (
                serde_json::json!({"headers": {"bad name": "1"}}),
                "headers.bad name",
            ),
            (
                serde_json::json!({"deliver_at": "2999-01-01T00:00:00Z"}),
                "deliver_at",
            ),
        ];
        for (patch, field) in cases {
            let mut value = serde_json::to_value(sample()).expect("serializes");
            for (k, v) in patch.as_object().expect("object") {
                value[k] = v.clone();
            }
            let input: EventInput = serde_json::from_value(value).expect("parses");
            let err = input.validate(&DEFAULTS, Utc::now()).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn the_ttl_counts_down_from_when_the_event_was_due() {
        let mut event = sample().validate(&DEFAULTS, Utc::now()).expect("valid");
        let due = event.due_at();
        let at = |s: i64| due + chrono::Duration::milliseconds(s);
        assert_eq!(event.ttl_left(at(0)), Some(600));
        assert_eq!(
            event.ttl_left(at(-60_000)),
            Some(600),
            "a clock ahead leaves it whole"
        );
        assert_eq!(event.ttl_left(at(90_500)), Some(510));
        assert_eq!(event.ttl_left(at(599_999)), Some(1));
        assert_eq!(event.ttl_left(at(600_000)), None);
        assert_eq!(event.ttl_left(at(10 * 365 * 86_400_000)), None);
        event.ttl = 0;
        assert_eq!(
            event.ttl_left(at(500)),
            Some(0),
            "now or never: a second to go"
        );
        assert_eq!(event.ttl_left(at(1_000)), None);
    }

    fn entry(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut fields: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        complete_entry("1796112000000-3", &mut fields);
        fields
    }

    #[test]
    fn a_plain_xadd_entry_needs_only_topic_and_title() {
        let event = Event::from_fields(
            &entry(&[("topic", "parking.lot-1.entry"), ("title", "In")]),
            &DEFAULTS,
        )
        .expect("the minimal entry is an event");
        assert_eq!(
            event.id, "xadd-1796112000000-3",
            "a stable id from the stream id"
        );
        assert_eq!(event.publish_at.timestamp_millis(), 1_796_112_000_000);
        assert_eq!(
            (event.ttl, event.urgency, event.user),
            (3600, Urgency::Normal, None)
        );
        let given = entry(&[
            ("v", "1"),
            ("id", "e-1"),
            ("topic", "a"),
            ("title", "t"),
            ("ttl", "60"),
        ]);
        let event = Event::from_fields(&given, &DEFAULTS).expect("an event");
        assert_eq!((event.id.as_str(), event.ttl), ("e-1", 60));
    }

    #[test]
    fn an_entry_breaking_the_contract_names_the_field() {
        for (pairs, field) in [
            (&[("title", "t")][..], "topic"),
            (&[("topic", "a")][..], "title"),
            (&[("topic", "a"), ("title", "t"), ("v", "2")][..], "v"),
            (&[("topic", "a"), ("title", "t"), ("ttl", "-1")][..], "ttl"),
            (
                &[("topic", "a"), ("title", "t"), ("ttl", "9999999999")][..],
                "ttl",
            ),
            (
                &[("topic", "a"), ("title", "t"), ("urgency", "now")][..],
                "urgency",
            ),
            (&[("topic", "a b"), ("title", "t")][..], "topic"),
            (
                &[("topic", "a"), ("title", "t"), ("user", "u 1")][..],
                "user",
            ),
            (
                &[("topic", "a"), ("title", "t"), ("publish_at", "today")][..],
                "publish_at",
            ),
            (&[("topic", "a"), ("title", "  ")][..], "notification.title"),
        ] {
            let problem = Event::from_fields(&entry(pairs), &DEFAULTS).expect_err("refused");
            assert_eq!(problem.field, field, "{pairs:?}: {problem}");
        }
    }
}
