//! Property tests on what comes from outside: no event or subscription body
//! makes parsing or validation panic, every valid event survives the trip
//! through its stream entry unchanged, and no bearer token makes
//! authentication panic. (Topic matching's step budget is property-tested
//! next to the trie, in `src/deliver/route/trie.rs`.)

use std::collections::HashMap;

use chrono::{TimeZone, Utc};
use herald::shared::config::{ApiToken, Scope, Secret, Settings};
use herald::shared::endpoint::Rules;
use herald::shared::event::{Event, EventDefaults, EventInput};
use herald::shared::subscriptions::SubscriptionInput;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn defaults() -> EventDefaults {
    EventDefaults {
        ttl: 3600,
        max_clock_skew: std::time::Duration::from_secs(300),
        site_url: None,
    }
}

/// Any JSON at all, keys biased towards the names the parsers look for.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,300}".prop_map(Value::String),
        "[a-z#*.]{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "id",
            "topic",
            "user",
            "key",
            "headers",
            "notification",
            "title",
            "body",
            "url",
            "icon",
            "tag",
            "image",
            "badge",
            "renotify",
            "require_interaction",
            "silent",
            "timestamp",
            "lang",
            "dir",
            "vibrate",
            "actions",
            "action",
            "data",
            "app_badge",
            "mutable",
            "format",
            "publish_at",
            "deliver_at",
            "ttl",
            "urgency",
            "subscription",
            "endpoint",
            "keys",
            "p256dh",
            "auth",
            "topics",
            "match",
            "values",
            "expirationTime",
        ])
        .prop_map(str::to_string),
        ".{0,12}",
    ]
}

/// Notification options, each in a valid form (their combination may not be).
fn options() -> impl Strategy<Value = Vec<(&'static str, Value)>> {
    let action = (
        "[a-z]{1,8}",
        ".{1,20}",
        proptest::option::of("/[a-z0-9/]{0,12}"),
    )
        .prop_map(|(id, title, url)| match url {
            Some(url) => json!({"action": id, "title": title, "url": url}),
            None => json!({"action": id, "title": title}),
        });
    prop::collection::vec(
        prop_oneof![
            ".{0,40}".prop_map(|t| ("tag", json!(t))),
            any::<bool>().prop_map(|b| ("renotify", json!(b))),
            any::<bool>().prop_map(|b| ("require_interaction", json!(b))),
            any::<bool>().prop_map(|b| ("silent", json!(b))),
            any::<bool>().prop_map(|b| ("mutable", json!(b))),
            (0u64..=(1 << 53) - 1).prop_map(|t| ("timestamp", json!(t))),
            (0u64..1000).prop_map(|n| ("app_badge", json!(n))),
            prop::collection::vec(0u32..=10_000, 0..5).prop_map(|v| ("vibrate", json!(v))),
            prop::collection::vec(action, 0..4).prop_map(|a| ("actions", json!(a))),
            any_json().prop_map(|d| ("data", d)),
            prop::sample::select(vec!["auto", "ltr", "rtl"]).prop_map(|d| ("dir", json!(d))),
            "[a-z]{2,3}(-[A-Z]{2})?".prop_map(|l| ("lang", json!(l))),
            "https://[a-z]{1,10}\\.example/[a-z0-9/]{0,20}".prop_map(|u| ("image", json!(u))),
            "/[a-z0-9/]{0,20}".prop_map(|u| ("icon", json!(u))),
            "/[a-z0-9/]{0,20}".prop_map(|u| ("badge", json!(u))),
        ],
        0..8,
    )
}

/// An event body that is valid more often than not, with any text in its
/// strings and any of the notification options; now and then a data push.
fn plausible_event() -> impl Strategy<Value = Value> {
    (simple_event(), options(), any_json(), 0u8..10).prop_map(|(mut event, options, data, dice)| {
        if dice == 0 {
            event
                .as_object_mut()
                .expect("an object")
                .remove("notification");
            event["data"] = data;
            return event;
        }
        for (name, value) in options {
            event["notification"][name] = value;
        }
        event
    })
}

fn simple_event() -> impl Strategy<Value = Value> {
    (
        "[a-z0-9_:-]{1,8}(\\.[a-z0-9_:-]{1,8}){0,6}",
        proptest::option::of("[A-Za-z0-9._:@-]{1,40}"),
        proptest::option::of(".{1,60}"),
        proptest::option::of(".{1,60}"),
        ".{1,120}",
        proptest::option::of(".{0,300}"),
        prop::collection::btree_map("[a-z-]{1,10}", ".{0,40}", 0..5),
        proptest::option::of(0u32..=2_419_200),
        proptest::option::of(prop::sample::select(vec![
            "very-low", "low", "normal", "high",
        ])),
        proptest::option::of("https://[a-z]{1,10}\\.example/[a-z0-9/]{0,20}"),
    )
        .prop_map(
            |(topic, user, id, key, title, body, headers, ttl, urgency, url)| {
                let mut event = json!({"topic": topic, "notification": {"title": title}});
                let mut put = |name: &str, value: Option<Value>| {
                    if let Some(value) = value {
                        event[name] = value;
                    }
                };
                put("user", user.map(Value::String));
                put("id", id.map(Value::String));
                put("key", key.map(Value::String));
                put("ttl", ttl.map(|t| json!(t)));
                put("urgency", urgency.map(|u| json!(u)));
                if !headers.is_empty() {
                    event["headers"] = json!(headers);
                }
                if let Some(body) = body {
                    event["notification"]["body"] = json!(body);
                }
                if let Some(url) = url {
                    event["notification"]["url"] = json!(url);
                }
                event
            },
        )
}

/// The stream entry as Redis hands it back: a map of its fields.
fn through_the_stream(event: &Event) -> Event {
    let fields: HashMap<String, String> = event.to_fields().into_iter().collect();
    Event::from_fields(&fields, &defaults()).expect("a valid event's entry reads back")
}

fn validate(body: Value) -> Option<Event> {
    // A whole millisecond: entries carry times to the millisecond (and reading
    // one back checks its time against the clock).
    let now = Utc
        .timestamp_millis_opt(Utc::now().timestamp_millis())
        .single()
        .expect("a time");
    let input: EventInput = serde_json::from_value(body).ok()?;
    input.validate(&defaults(), now).ok()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // A failure prints its minimal input; nothing is written into the checkout.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_event_body_makes_parsing_panic(body in any_json()) {
        let _ = validate(body);
    }

    #[test]
    fn an_event_with_a_field_replaced_by_anything_is_judged_without_panic(
        base in plausible_event(),
        field in key(),
        value in any_json(),
    ) {
        let mut top = base.clone();
        top[field.as_str()] = value.clone();
        let _ = validate(top);
        let mut inner = base;
        inner["notification"][field.as_str()] = value;
        let _ = validate(inner);
    }

    #[test]
    fn every_valid_event_survives_its_stream_entry_unchanged(body in plausible_event()) {
        if let Some(event) = validate(body) {
            prop_assert_eq!(through_the_stream(&event), event);
        }
    }

    #[test]
    fn no_stream_entry_makes_reading_it_panic(
        fields in prop::collection::hash_map(key(), ".{0,80}", 0..12),
    ) {
        let _ = Event::from_fields(&fields, &defaults());
    }

    #[test]
    fn no_subscription_body_makes_parsing_panic(body in any_json(), endpoint in ".{0,200}") {
        let rules = Rules::strict();
        if let Ok(input) = serde_json::from_value::<SubscriptionInput>(body) {
            let _ = input.validate(&rules, Default::default());
        }
        let shaped = json!({
            "user": "u-1",
            "subscription": {"endpoint": endpoint, "keys": {"p256dh": "AAAA", "auth": "AAAA"}},
        });
        if let Ok(input) = serde_json::from_value::<SubscriptionInput>(shaped) {
            let _ = input.validate(&rules, Default::default());
        }
    }

    #[test]
    fn no_bearer_token_makes_authentication_panic(header in ".{0,200}", dots in "[A-Za-z0-9_=+/-]{0,40}\\.[A-Za-z0-9_=+/-]{0,80}\\.[A-Za-z0-9_=+/-]{0,60}") {
        let mut settings = Settings::default();
        settings.api.tokens = vec![ApiToken {
            name: "t".into(),
            sha256: herald::intake::auth::digest_hex("tok"),
            scopes: vec![Scope::Publish],
        }];
        settings.api.subscriber_tokens.secret = Secret::new("0123456789abcdef0123456789abcdef");
        let credentials = herald::intake::auth::Credentials::from_settings(&settings).expect("credentials");
        for value in [header.clone(), format!("Bearer {header}"), format!("Bearer {dots}")] {
            let _ = credentials.identify(Some(&value), 1_800_000_000);
        }
    }
}
