//! What a decrypted payload is: herald's JSON, or a Declarative Web Push
//! message, checked here as a browser would before showing it (the W3C Push
//! API's "declarative push message": `web_push` 8030, a `notification` with a
//! `title` and an absolute `navigate`, each action with its own `navigate`).
//! Written apart from herald's builder, so a test of one checks the other.

use serde_json::Value;

/// The payload's format, and for a declarative message what a browser would refuse.
pub fn classify(payload: &Value) -> (Option<&'static str>, Vec<String>) {
    match payload.get("web_push") {
        Some(_) => (Some("declarative"), declarative_problems(payload)),
        None if payload.get("id").is_some_and(Value::is_string) => (Some("herald"), Vec::new()),
        None => (None, Vec::new()),
    }
}

fn absolute_url(value: &Value) -> bool {
    value
        .as_str()
        .and_then(|text| url::Url::parse(text).ok())
        .is_some_and(|url| matches!(url.scheme(), "https" | "http"))
}

fn unsigned(value: &Value) -> bool {
    value.as_u64().is_some()
}

/// Every way `message` falls short of a declarative push message; empty when a browser would show it.
pub fn declarative_problems(message: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut need = |ok: bool, what: &str| {
        if !ok {
            problems.push(what.to_string());
        }
    };
    need(
        message.get("web_push").and_then(Value::as_u64) == Some(8030),
        "web_push must be 8030",
    );
    let empty = serde_json::Map::new();
    let n = message
        .get("notification")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    need(
        message.get("notification").is_some_and(Value::is_object),
        "notification must be an object",
    );
    need(
        n.get("title").is_some_and(Value::is_string),
        "notification.title must be a string",
    );
    need(
        n.get("navigate").is_some_and(absolute_url),
        "notification.navigate must be an absolute URL",
    );
    for name in ["lang", "body", "tag"] {
        need(
            n.get(name).is_none_or(Value::is_string),
            &format!("notification.{name} must be a string"),
        );
    }
    need(
        n.get("dir")
            .is_none_or(|d| matches!(d.as_str(), Some("auto" | "ltr" | "rtl"))),
        "notification.dir must be auto, ltr or rtl",
    );
    for name in ["image", "icon", "badge"] {
        need(
            n.get(name).is_none_or(absolute_url),
            &format!("notification.{name} must be an absolute URL"),
        );
    }
    need(
        n.get("vibrate")
            .is_none_or(|v| v.as_array().is_some_and(|a| a.iter().all(unsigned))),
        "notification.vibrate must be an array of whole numbers",
    );
    need(
        n.get("timestamp").is_none_or(unsigned),
        "notification.timestamp must be a whole number",
    );
    for name in ["renotify", "silent", "require_interaction"] {
        need(
            n.get(name).is_none_or(Value::is_boolean),
            &format!("notification.{name} must be true or false"),
        );
    }
    let flag = |name: &str| n.get(name).and_then(Value::as_bool) == Some(true);
    need(
        !flag("renotify")
            || n.get("tag")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty()),
        "notification.renotify needs a tag",
    );
    need(
        !flag("silent") || n.get("vibrate").is_none(),
        "notification.silent and vibrate exclude each other",
    );
    match n.get("actions") {
        None => {}
        Some(Value::Array(actions)) => {
            for (i, action) in actions.iter().enumerate() {
                need(
                    action.get("action").is_some_and(Value::is_string)
                        && action.get("title").is_some_and(Value::is_string),
                    &format!("notification.actions[{i}] needs action and title strings"),
                );
                need(
                    action.get("navigate").is_some_and(absolute_url),
                    &format!("notification.actions[{i}].navigate must be an absolute URL"),
                );
                need(
                    action.get("icon").is_none_or(absolute_url),
                    &format!("notification.actions[{i}].icon must be an absolute URL"),
                );
            }
        }
        Some(_) => need(false, "notification.actions must be an array"),
    }
    need(
        message.get("app_badge").is_none_or(unsigned),
        "app_badge must be a whole number",
    );
    need(
        message.get("mutable").is_none_or(Value::is_boolean),
        "mutable must be true or false",
    );
    problems
}
