//! What a device shows: every Notification option browsers know, checked; how
//! the options live in a stream entry (flat fields, JSON text for the three
//! structured ones); and the two payloads herald sends: its own JSON, which a
//! service worker reads, and Declarative Web Push (`"web_push": 8030`), which a
//! browser shows by itself.
//!
//! The structured options (`actions`, `vibrate`, `data`) are kept as the JSON
//! text the entry holds and written into herald's payload verbatim, so the Lua
//! publish function (`library.lua`) counts that payload's size exactly.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::shared::event::InvalidField;

/// Most actions (buttons) one notification may have. Browsers show fewer
/// (`Notification.maxActions`: 2 in Chrome); the rest are dropped by them.
pub const MAX_ACTIONS: usize = 4;
/// Most entries of a vibration pattern, and the longest one (ms).
pub const MAX_VIBRATE: usize = 32;
pub const MAX_VIBRATE_MS: u32 = 10_000;
/// Largest `data`, as JSON text.
pub const MAX_DATA_BYTES: usize = 2048;
/// Longest URL (`url`, `icon`, `image`, `badge`, an action's `icon` and `url`).
pub const MAX_URL_BYTES: usize = 1024;
pub const MAX_TITLE_BYTES: usize = 256;
pub const MAX_TAG_BYTES: usize = 128;
pub const MAX_LANG_BYTES: usize = 35;
pub const MAX_ACTION_ID_BYTES: usize = 64;
pub const MAX_ACTION_TITLE_BYTES: usize = 128;
/// Largest `timestamp` (ms since 1970) and `app_badge`: what JavaScript holds exactly.
pub const MAX_JS_INTEGER: u64 = (1 << 53) - 1;
/// The Declarative Web Push magic number (the RFC that defines Web Push).
pub const DECLARATIVE_MAGIC: u32 = 8030;

/// The entry fields of a notification, in the order they are written.
pub const FIELDS: [&str; 18] = [
    "title",
    "body",
    "url",
    "icon",
    "image",
    "badge",
    "tag",
    "renotify",
    "require_interaction",
    "silent",
    "timestamp",
    "lang",
    "dir",
    "vibrate",
    "actions",
    "data",
    "app_badge",
    "mutable",
];

/// What the device shows: the browser's `NotificationOptions`, plus `url`
/// (what a click opens) and the Declarative Web Push extras (`app_badge`,
/// `mutable`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub badge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renotify: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_interaction: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silent: Option<bool>,
    /// Milliseconds since 1970 the notification is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vibrate: Option<Json<Vec<u32>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Json<Vec<Action>>>,
    /// Any JSON the app's service worker wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Json<serde_json::Value>>,
    /// The app's badge count (0 clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_badge: Option<u64>,
    /// Declarative Web Push: let the service worker change it before it shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutable: Option<bool>,
}

/// A button on the notification.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// The id the service worker's `notificationclick` sees.
    pub action: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    /// What a click on this button opens (Declarative Web Push's `navigate`;
    /// the notification's `url` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Text direction.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Auto,
    Ltr,
    Rtl,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Auto => "auto",
            Direction::Ltr => "ltr",
            Direction::Rtl => "rtl",
        }
    }

    fn parse(text: &str) -> Option<Direction> {
        match text {
            "auto" => Some(Direction::Auto),
            "ltr" => Some(Direction::Ltr),
            "rtl" => Some(Direction::Rtl),
            _ => None,
        }
    }
}

/// A structured value together with the JSON text it came as: from a request,
/// its compact form; from a stream entry, the entry's text (trimmed). Written
/// out as that text, unchanged; two are equal when their texts are.
#[derive(Debug, Clone)]
pub struct Json<T> {
    text: String,
    value: T,
}

impl<T> Json<T> {
    pub fn value(&self) -> &T {
        &self.value
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn raw(&self) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(self.text.clone())
            .expect("checked as JSON when made")
    }
}

impl<T: DeserializeOwned> Json<T> {
    /// Reads an entry's field.
    pub fn parse(text: &str) -> Result<Json<T>, String> {
        let text = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
        let value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Ok(Json {
            text: text.to_string(),
            value,
        })
    }
}

impl<T: Serialize> Json<T> {
    pub fn new(value: T) -> Json<T> {
        Json {
            text: serde_json::to_string(&value).expect("JSON values serialize"),
            value,
        }
    }
}

impl<T> PartialEq for Json<T> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<T> Eq for Json<T> {}

impl<T> Serialize for Json<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw().serialize(serializer)
    }
}

impl<'de, T: DeserializeOwned + Serialize> Deserialize<'de> for Json<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Json::new)
    }
}

/// What an event carries for its devices: a notification, or (a data push)
/// only data, for a service worker that decides what to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Notification(Box<Notification>),
    Data(Json<serde_json::Value>),
}

fn field(name: &str) -> String {
    format!("notification.{name}")
}

fn check_text(name: &str, value: &str, max: usize) -> Result<(), InvalidField> {
    if value.len() > max {
        return Err(InvalidField::new(
            field(name),
            format!("must be at most {max} bytes (got {})", value.len()),
        ));
    }
    Ok(())
}

fn not_blank(name: &str, value: &str) -> Result<(), InvalidField> {
    if value.trim().is_empty() {
        return Err(InvalidField::new(field(name), "must not be empty"));
    }
    Ok(())
}

/// A URL a notification may carry: absolute `https:`, or root-relative
/// (`/visits/981`, resolved by the browser against the app's origin, and by
/// herald against `events.site_url` for Declarative Web Push).
pub fn check_url(name: &str, text: &str) -> Result<(), InvalidField> {
    let refuse = |why: &str| Err(InvalidField::new(field(name), why.to_string()));
    if text.len() > MAX_URL_BYTES {
        return refuse(&format!("must be at most {MAX_URL_BYTES} bytes"));
    }
    if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return refuse("must not contain spaces or control characters");
    }
    if text.contains('\\') {
        return refuse("must not contain '\\'");
    }
    if let Some(rest) = text.strip_prefix('/') {
        if rest.starts_with('/') {
            return refuse("a relative URL starts with one '/' (like /visits/981), not '//'");
        }
        return Ok(());
    }
    if !absolute_https(text) {
        return refuse("must be an absolute https: URL with a host name (https://parking.example/…) or a path starting with '/' (like /visits/981)");
    }
    Ok(())
}

/// `https://` (any case), a host name, an optional port, then nothing or a
/// path, query or fragment. Host names only (labels of letters, digits and
/// '-', the last starting with a letter): no addresses, no user info. The same
/// grammar as `url` in library.lua, so FCALL and the worker agree exactly.
fn absolute_https(text: &str) -> bool {
    let Some(rest) = text
        .get(..8)
        .filter(|scheme| scheme.eq_ignore_ascii_case("https://"))
        .map(|_| &text[8..])
    else {
        return false;
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n <= 65535)
    });
    let labels: Vec<&str> = host.split('.').collect();
    let labels_ok = labels.iter().all(|label| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    let last_ok = labels
        .last()
        .is_some_and(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()));
    port_ok && labels_ok && last_ok && host.len() <= 253
}

fn check_lang(text: &str) -> Result<(), InvalidField> {
    let mut parts = text.split('-');
    let primary = parts.next().unwrap_or_default();
    let ok = text.len() <= MAX_LANG_BYTES
        && (2..=8).contains(&primary.len())
        && primary.chars().all(|c| c.is_ascii_alphabetic())
        && parts
            .all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()));
    if !ok {
        return Err(InvalidField::new(
            field("lang"),
            format!("must be a language tag like en or pt-BR (letters, digits and '-', at most {MAX_LANG_BYTES} bytes)"),
        ));
    }
    Ok(())
}

/// Checks `data`, wherever it is carried.
pub fn check_data(name: &str, data: &Json<serde_json::Value>) -> Result<(), InvalidField> {
    if data.value().is_null() {
        return Err(InvalidField::new(
            name,
            "must not be null (leave it out instead)",
        ));
    }
    if data.text().len() > MAX_DATA_BYTES {
        return Err(InvalidField::new(
            name,
            format!(
                "must be at most {MAX_DATA_BYTES} bytes of JSON (got {})",
                data.text().len()
            ),
        ));
    }
    Ok(())
}

impl Notification {
    /// Checks every option; the error names the field (`notification.…`).
    /// `legacy`: the five fields of the first entry version (`title`, `body`,
    /// `url`, `icon`, `tag`) are held only to its rules (a title not blank):
    /// entries herald wrote before, checked less at the time, still read.
    pub fn check(&self, legacy: bool) -> Result<(), InvalidField> {
        not_blank("title", &self.title)?;
        let mut urls = vec![("image", &self.image), ("badge", &self.badge)];
        if !legacy {
            check_text("title", &self.title, MAX_TITLE_BYTES)?;
            urls.extend([("url", &self.url), ("icon", &self.icon)]);
            if let Some(tag) = &self.tag {
                check_text("tag", tag, MAX_TAG_BYTES)?;
            }
        }
        for (name, url) in urls {
            if let Some(url) = url {
                check_url(name, url)?;
            }
        }
        if self.renotify == Some(true) && self.tag.as_deref().unwrap_or_default().is_empty() {
            return Err(InvalidField::new(
                field("renotify"),
                "needs a tag: renotify alerts again for a notification replacing one of the same tag (browsers refuse it without)",
            ));
        }
        if let Some(at) = self.timestamp {
            if at > MAX_JS_INTEGER {
                return Err(InvalidField::new(
                    field("timestamp"),
                    "must be milliseconds since 1970, at most 2^53-1",
                ));
            }
        }
        if let Some(lang) = &self.lang {
            check_lang(lang)?;
        }
        if let Some(pattern) = &self.vibrate {
            let pattern = pattern.value();
            if pattern.len() > MAX_VIBRATE {
                return Err(InvalidField::new(
                    field("vibrate"),
                    format!("at most {MAX_VIBRATE} durations"),
                ));
            }
            if pattern.iter().any(|&ms| ms > MAX_VIBRATE_MS) {
                return Err(InvalidField::new(
                    field("vibrate"),
                    format!("each duration is at most {MAX_VIBRATE_MS} ms"),
                ));
            }
            if self.silent == Some(true) {
                return Err(InvalidField::new(
                    field("vibrate"),
                    "must be left out when silent is true (browsers refuse both)",
                ));
            }
        }
        if let Some(actions) = &self.actions {
            let actions = actions.value();
            if actions.len() > MAX_ACTIONS {
                return Err(InvalidField::new(
                    field("actions"),
                    format!("at most {MAX_ACTIONS} actions (got {})", actions.len()),
                ));
            }
            for (i, action) in actions.iter().enumerate() {
                let name = |member: &str| format!("actions[{i}].{member}");
                not_blank(&name("action"), &action.action)?;
                check_text(&name("action"), &action.action, MAX_ACTION_ID_BYTES)?;
                if actions[..i].iter().any(|a| a.action == action.action) {
                    return Err(InvalidField::new(
                        field(&name("action")),
                        format!("{:?} is used by an earlier action", action.action),
                    ));
                }
                not_blank(&name("title"), &action.title)?;
                check_text(&name("title"), &action.title, MAX_ACTION_TITLE_BYTES)?;
                if let Some(icon) = &action.icon {
                    check_url(&name("icon"), icon)?;
                }
                if let Some(url) = &action.url {
                    check_url(&name("url"), url)?;
                }
            }
        }
        if let Some(data) = &self.data {
            check_data(&field("data"), data)?;
        }
        if let Some(badge) = self.app_badge {
            if badge > MAX_JS_INTEGER {
                return Err(InvalidField::new(
                    field("app_badge"),
                    "must be a whole number from 0 (clears the badge) to 2^53-1",
                ));
            }
        }
        Ok(())
    }

    /// The entry's fields (see [`FIELDS`]), for those present.
    pub fn to_fields(&self, put: &mut dyn FnMut(&str, String)) {
        let texts = [
            ("title", Some(&self.title)),
            ("body", self.body.as_ref()),
            ("url", self.url.as_ref()),
            ("icon", self.icon.as_ref()),
            ("image", self.image.as_ref()),
            ("badge", self.badge.as_ref()),
            ("tag", self.tag.as_ref()),
        ];
        for (name, value) in texts {
            if let Some(value) = value {
                put(name, value.clone());
            }
        }
        for (name, value) in [
            ("renotify", self.renotify),
            ("require_interaction", self.require_interaction),
            ("silent", self.silent),
        ] {
            if let Some(value) = value {
                put(name, value.to_string());
            }
        }
        if let Some(at) = self.timestamp {
            put("timestamp", at.to_string());
        }
        if let Some(lang) = &self.lang {
            put("lang", lang.clone());
        }
        if let Some(dir) = self.dir {
            put("dir", dir.as_str().to_string());
        }
        if let Some(vibrate) = &self.vibrate {
            put("vibrate", vibrate.text().to_string());
        }
        if let Some(actions) = &self.actions {
            put("actions", actions.text().to_string());
        }
        if let Some(data) = &self.data {
            put("data", data.text().to_string());
        }
        if let Some(badge) = self.app_badge {
            put("app_badge", badge.to_string());
        }
        if let Some(mutable) = self.mutable {
            put("mutable", mutable.to_string());
        }
    }

    /// Reads the notification of an entry whose `title` is `title`; field
    /// errors name the entry's field. Checked by [`Notification::check`] after.
    pub fn from_fields(
        title: String,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Notification, InvalidField> {
        let flag = |name: &str| -> Result<Option<bool>, InvalidField> {
            match get(name).as_deref() {
                None => Ok(None),
                Some("true") => Ok(Some(true)),
                Some("false") => Ok(Some(false)),
                Some(other) => Err(InvalidField::new(
                    name,
                    format!("{other:?} is not true or false"),
                )),
            }
        };
        let number = |name: &str| -> Result<Option<u64>, InvalidField> {
            match get(name) {
                None => Ok(None),
                Some(text) => canonical_number(&text).map(Some).ok_or_else(|| {
                    InvalidField::new(name, format!("{text:?} is not a whole number like 42"))
                }),
            }
        };
        fn json<T: DeserializeOwned>(
            name: &str,
            text: Option<String>,
        ) -> Result<Option<Json<T>>, InvalidField> {
            text.map(|text| Json::parse(&text).map_err(|e| InvalidField::new(name, e)))
                .transpose()
        }
        let dir = match get("dir") {
            None => None,
            Some(text) => Some(Direction::parse(&text).ok_or_else(|| {
                InvalidField::new("dir", format!("{text:?} is not auto, ltr or rtl"))
            })?),
        };
        Ok(Notification {
            title,
            body: get("body"),
            url: get("url"),
            icon: get("icon"),
            image: get("image"),
            badge: get("badge"),
            tag: get("tag"),
            renotify: flag("renotify")?,
            require_interaction: flag("require_interaction")?,
            silent: flag("silent")?,
            timestamp: number("timestamp")?,
            lang: get("lang"),
            dir,
            vibrate: json("vibrate", get("vibrate"))?,
            actions: json("actions", get("actions"))?,
            data: json("data", get("data"))?,
            app_badge: number("app_badge")?,
            mutable: flag("mutable")?,
        })
    }
}

/// A number as the entry writes it: digits, no sign, no leading zero.
fn canonical_number(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.len() <= 19
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// herald's own payload (what README calls "herald's payload"): the event's
/// id, topic and publish_at beside every option present, members in
/// alphabetical order, absent ones left out.
#[derive(Serialize)]
pub struct HeraldPayload<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    actions: Option<&'a Json<Vec<Action>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_badge: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    badge: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Json<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dir: Option<Direction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icon: Option<&'a str>,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lang: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mutable: Option<bool>,
    publish_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    renotify: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    require_interaction: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    silent: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vibrate: Option<&'a Json<Vec<u32>>>,
}

/// herald's payload of an event with `content`.
pub fn herald_payload(id: &str, topic: &str, publish_at: &str, content: &Content) -> Vec<u8> {
    let mut payload = HeraldPayload {
        actions: None,
        app_badge: None,
        badge: None,
        body: None,
        data: None,
        dir: None,
        icon: None,
        id,
        image: None,
        lang: None,
        mutable: None,
        publish_at,
        renotify: None,
        require_interaction: None,
        silent: None,
        tag: None,
        timestamp: None,
        title: None,
        topic,
        url: None,
        vibrate: None,
    };
    match content {
        Content::Data(data) => payload.data = Some(data),
        Content::Notification(n) => {
            payload.actions = n.actions.as_ref();
            payload.app_badge = n.app_badge;
            payload.badge = n.badge.as_deref();
            payload.body = n.body.as_deref();
            payload.data = n.data.as_ref();
            payload.dir = n.dir;
            payload.icon = n.icon.as_deref();
            payload.image = n.image.as_deref();
            payload.lang = n.lang.as_deref();
            payload.mutable = n.mutable;
            payload.renotify = n.renotify;
            payload.require_interaction = n.require_interaction;
            payload.silent = n.silent;
            payload.tag = n.tag.as_deref();
            payload.timestamp = n.timestamp;
            payload.title = Some(&n.title);
            payload.url = n.url.as_deref();
            payload.vibrate = n.vibrate.as_ref();
        }
    }
    serde_json::to_vec(&payload).expect("the payload serializes")
}

/// Why a Declarative Web Push message cannot be made.
pub const NO_SITE_URL: &str = "a Declarative Web Push message needs absolute URLs: set events.site_url (the web app's https origin) so that root-relative URLs and a notification without url have somewhere to go";

/// A URL made absolute against the site.
fn absolute(url: &str, site: Option<&url::Url>) -> Result<String, &'static str> {
    if !url.starts_with('/') {
        return Ok(url.to_string());
    }
    let site = site.ok_or(NO_SITE_URL)?;
    site.join(url).map(String::from).map_err(|_| NO_SITE_URL)
}

#[derive(Serialize)]
struct Declarative<'a> {
    web_push: u32,
    notification: DeclarativeNotification<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_badge: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mutable: Option<bool>,
}

/// The members of the W3C Push API's declarative push message notification.
#[derive(Serialize)]
struct DeclarativeNotification<'a> {
    title: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dir: Option<Direction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lang: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    navigate: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icon: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    badge: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vibrate: Option<&'a Json<Vec<u32>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    renotify: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    silent: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    require_interaction: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Json<serde_json::Value>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    actions: Vec<DeclarativeAction<'a>>,
}

#[derive(Serialize)]
struct DeclarativeAction<'a> {
    action: &'a str,
    title: &'a str,
    navigate: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    icon: Option<String>,
}

impl Notification {
    /// The Declarative Web Push message of this notification: every URL
    /// absolute (root-relative ones joined to `site`), `navigate` from `url`
    /// (the site itself when absent), each action's from its own `url` or the
    /// notification's. Fails only when a URL needs `site` and there is none.
    pub fn declarative(&self, site: Option<&url::Url>) -> Result<Vec<u8>, &'static str> {
        let optional = |url: &Option<String>| url.as_deref().map(|u| absolute(u, site)).transpose();
        let navigate = match &self.url {
            Some(url) => absolute(url, site)?,
            None => site.ok_or(NO_SITE_URL)?.to_string(),
        };
        let mut actions = Vec::new();
        for action in self
            .actions
            .as_ref()
            .map(|a| a.value().as_slice())
            .unwrap_or_default()
        {
            actions.push(DeclarativeAction {
                action: &action.action,
                title: &action.title,
                navigate: match &action.url {
                    Some(url) => absolute(url, site)?,
                    None => navigate.clone(),
                },
                icon: optional(&action.icon)?,
            });
        }
        let message = Declarative {
            web_push: DECLARATIVE_MAGIC,
            notification: DeclarativeNotification {
                title: &self.title,
                dir: self.dir,
                lang: self.lang.as_deref(),
                body: self.body.as_deref(),
                navigate,
                tag: self.tag.as_deref(),
                image: optional(&self.image)?,
                icon: optional(&self.icon)?,
                badge: optional(&self.badge)?,
                vibrate: self.vibrate.as_ref(),
                timestamp: self.timestamp,
                renotify: self.renotify,
                silent: self.silent,
                require_interaction: self.require_interaction,
                data: self.data.as_ref(),
                actions,
            },
            app_badge: self.app_badge,
            mutable: self.mutable,
        };
        Ok(serde_json::to_vec(&message).expect("the message serializes"))
    }
}

/// The payload format a subscription receives.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// herald's own JSON, for the app's service worker.
    #[default]
    Herald,
    /// Declarative Web Push (`"web_push": 8030`), shown by the browser itself.
    Declarative,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Herald => "herald",
            Format::Declarative => "declarative",
        }
    }

    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "herald" => Some(Format::Herald),
            "declarative" => Some(Format::Declarative),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_option() -> Notification {
        serde_json::from_value(serde_json::json!({
            "title": "Exit", "body": "12가3456 left lot 7", "url": "/visits/981",
            "icon": "/i/car.png", "image": "https://cdn.example/plate.jpg", "badge": "/i/badge.png",
            "tag": "visit-981", "renotify": true, "require_interaction": true, "silent": false,
            "timestamp": 1_764_580_000_000u64, "lang": "ko-KR", "dir": "ltr", "vibrate": [200, 100, 200],
            "actions": [{"action": "pay", "title": "Pay now", "url": "/pay/981", "icon": "/i/pay.png"},
                        {"action": "dismiss", "title": "Later"}],
            "data": {"visit": 981, "fee": {"amount": 3.5, "currency": "EUR"}},
            "app_badge": 3, "mutable": true
        }))
        .expect("parses")
    }

    #[test]
    fn every_option_survives_the_entry_and_keeps_its_json_text() {
        let n = every_option();
        n.check(false).expect("valid");
        let mut fields = std::collections::HashMap::new();
        n.to_fields(&mut |k, v| {
            fields.insert(k.to_string(), v);
        });
        assert_eq!(fields["renotify"], "true");
        assert_eq!(fields["vibrate"], "[200,100,200]");
        assert_eq!(fields.len(), FIELDS.len());
        let get = |name: &str| fields.get(name).cloned();
        let back = Notification::from_fields(fields["title"].clone(), &get).expect("reads");
        assert_eq!(back, n);
        // A producer's spacing is kept as written (trimmed), and compared as text.
        let spaced = Json::<Vec<u32>>::parse(" [ 200, 100 ] \n").expect("parses");
        assert_eq!(spaced.text(), "[ 200, 100 ]");
        assert_eq!(spaced.value(), &vec![200, 100]);
    }

    #[test]
    fn a_declarative_message_has_absolute_urls_and_a_navigate_for_every_action() {
        let site = url::Url::parse("https://parking.example/app/").expect("url");
        let message: serde_json::Value =
            serde_json::from_slice(&every_option().declarative(Some(&site)).expect("builds"))
                .expect("JSON");
        assert_eq!(message["web_push"], 8030);
        let n = &message["notification"];
        assert_eq!(n["navigate"], "https://parking.example/visits/981");
        assert_eq!(n["icon"], "https://parking.example/i/car.png");
        assert_eq!(n["image"], "https://cdn.example/plate.jpg");
        assert_eq!(
            n["actions"][0]["navigate"],
            "https://parking.example/pay/981"
        );
        assert_eq!(n["actions"][1]["navigate"], n["navigate"]);
        assert_eq!(n["require_interaction"], true);
        assert_eq!(message["app_badge"], 3);
        assert_eq!(message["mutable"], true);
        assert!(n.get("url").is_none() && n.get("app_badge").is_none());
        let bare = Notification {
            title: "t".into(),
            ..Default::default()
        };
        assert_eq!(bare.declarative(None), Err(NO_SITE_URL));
        let absolute = Notification {
            url: Some("https://parking.example/x".into()),
            ..bare
        };
        assert!(absolute.declarative(None).is_ok());
    }

    #[test]
    fn each_bad_option_is_named() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                serde_json::json!({"url": "http://a.example/"}),
                "notification.url",
            ),
            (
                serde_json::json!({"url": "//evil.example/"}),
                "notification.url",
            ),
            (
                serde_json::json!({"icon": "javascript:alert(1)"}),
                "notification.icon",
            ),
            (
                serde_json::json!({"image": "https://1.2.3.4/plate.jpg"}),
                "notification.image",
            ),
            (
                serde_json::json!({"url": "https://user@parking.example/"}),
                "notification.url",
            ),
            (
                serde_json::json!({"url": "https:parking.example/x"}),
                "notification.url",
            ),
            (
                serde_json::json!({"icon": "https://a.example:99999/i.png"}),
                "notification.icon",
            ),
            (
                serde_json::json!({"image": "/a b.png"}),
                "notification.image",
            ),
            (serde_json::json!({"badge": "b.png"}), "notification.badge"),
            (
                serde_json::json!({"tag": null, "renotify": true}),
                "notification.renotify",
            ),
            (
                serde_json::json!({"lang": "english please"}),
                "notification.lang",
            ),
            (
                serde_json::json!({"vibrate": [20000]}),
                "notification.vibrate",
            ),
            (serde_json::json!({"silent": true}), "notification.vibrate"),
            (
                serde_json::json!({"actions": [{"action": "a", "title": "A"}, {"action": "a", "title": "B"}]}),
                "notification.actions[1].action",
            ),
            (
                serde_json::json!({"actions": [{"action": "a", "title": " "}]}),
                "notification.actions[0].title",
            ),
            (
                serde_json::json!({"actions": [{"action": "a", "title": "A", "url": "ftp://x"}]}),
                "notification.actions[0].url",
            ),
            (
                serde_json::json!({"actions": (0..5)
                    .map(|i| serde_json::json!({"action": format!("a{i}"), "title": "A"}))
                    .collect::<Vec<_>>()}),
                "notification.actions",
            ),
            (
                serde_json::json!({"data": "x".repeat(MAX_DATA_BYTES)}),
                "notification.data",
            ),
            (
                serde_json::json!({"timestamp": MAX_JS_INTEGER + 1}),
                "notification.timestamp",
            ),
            (
                serde_json::json!({"app_badge": MAX_JS_INTEGER + 1}),
                "notification.app_badge",
            ),
            (
                serde_json::json!({"title": "x".repeat(MAX_TITLE_BYTES + 1)}),
                "notification.title",
            ),
        ];
        for (patch, name) in cases {
            let mut value = serde_json::to_value(every_option()).expect("serializes");
            for (k, v) in patch.as_object().expect("object") {
                value[k] = v.clone();
            }
            let n: Notification = serde_json::from_value(value).expect("parses");
            let err = n.check(false).expect_err(name);
            assert_eq!(err.field, name, "{err}");
        }
    }

    #[test]
    fn entry_fields_in_the_wrong_form_are_named() {
        for (name, text) in [
            ("renotify", "yes"),
            ("timestamp", "-1"),
            ("timestamp", "007"),
            ("app_badge", "1e3"),
            ("dir", "up"),
            ("vibrate", "[1,"),
            ("actions", "{\"action\":1}"),
            ("data", "{nope}"),
        ] {
            let get = |n: &str| (n == name).then(|| text.to_string());
            let err = Notification::from_fields("t".into(), &get).expect_err(name);
            assert_eq!(err.field, name, "{err}");
        }
    }
}
