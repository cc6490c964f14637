//! Who may do what on the API: service tokens known by their digest and
//! limited to their scopes, subscriber tokens limited to their own user, rate
//! limits per credential, open mode on loopback only, `herald token create`.

mod helpers;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use helpers::TestApp;
use herald::intake::auth::digest_hex;
use herald::shared::config::{ApiToken, Rate, Scope, Settings};
use reqwest::Method;
use serde_json::{json, Value};

const SECRET: &str = "test-secret-test-secret-test-secret-32";

fn token(name: &str, scopes: &[Scope]) -> ApiToken {
    ApiToken {
        name: name.into(),
        sha256: digest_hex(&format!("tok-{name}")),
        scopes: scopes.to_vec(),
    }
}

fn with_credentials(s: &mut Settings) {
    s.api.tokens = vec![
        token("publisher", &[Scope::Publish]),
        token("manager", &[Scope::Subscriptions]),
        token("reader", &[Scope::Read]),
        token("operator", &[Scope::Admin]),
        token("backend", &[Scope::Publish, Scope::Subscriptions]),
    ];
    s.api.subscriber_tokens.secret = herald::shared::config::Secret::new(SECRET);
}

/// A subscriber token as the README's snippets mint it (`iat` now unless `claims` set it).
fn subscriber_token(mut claims: Value, secret: &str) -> String {
    if claims.get("iat").is_none() {
        claims["iat"] = json!(now());
    }
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, signed.as_bytes()));
    format!("{signed}.{signature}")
}

fn now() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

fn for_user(user: &str) -> String {
    subscriber_token(
        json!({"sub": user, "aud": "herald", "exp": now() + 600, "topics": ["lot.7"]}),
        SECRET,
    )
}

struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<String>,
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut request = app.http.request(method, format!("{}{path}", app.api_url));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the api answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_string());
    let text = response.text().await.expect("a body");
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        retry_after,
    }
}

fn event(user: &str) -> Value {
    json!({"topic": "parking.exit", "user": user, "notification": {"title": "Exit"}})
}

#[tokio::test]
async fn service_tokens_are_known_by_their_digest_and_held_to_their_scopes() {
    let app = TestApp::start_with(with_credentials).await;
    let tok = |name: &str| format!("tok-{name}");
    let (_, browser) = app.sink.new_subscription();
    let subscription = json!({"user": "u-1", "subscription": browser});

    let missing = call(&app, Method::POST, "/v1/events", None, Some(event("u-1"))).await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert_eq!(missing.body["error"]["code"], "unauthorized");
    assert!(missing.body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("Authorization: Bearer"));
    let wrong = call(
        &app,
        Method::POST,
        "/v1/events",
        Some("tok-nobody"),
        Some(event("u-1")),
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    // The digest itself is not a token.
    let digest = digest_hex("tok-publisher");
    let by_digest = call(
        &app,
        Method::POST,
        "/v1/events",
        Some(&digest),
        Some(event("u-1")),
    )
    .await;
    assert_eq!(by_digest.status, 401, "{}", by_digest.body);

    // Each route, with a token lacking its scope, then with one holding it.
    let forbidden = |answer: &Answer, scope: &str| {
        assert_eq!(answer.status, 403, "{}", answer.body);
        assert_eq!(answer.body["error"]["code"], "forbidden");
        assert_eq!(answer.body["error"]["scope"], scope, "{}", answer.body);
    };
    let a = call(
        &app,
        Method::POST,
        "/v1/events",
        Some(&tok("reader")),
        Some(event("u-1")),
    )
    .await;
    forbidden(&a, "publish");
    let a = call(
        &app,
        Method::POST,
        "/v1/events",
        Some(&tok("publisher")),
        Some(event("u-1")),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.body);

    let a = call(
        &app,
        Method::POST,
        "/v1/subscriptions",
        Some(&tok("publisher")),
        Some(subscription.clone()),
    )
    .await;
    forbidden(&a, "subscriptions");
    let a = call(
        &app,
        Method::POST,
        "/v1/subscriptions",
        Some(&tok("manager")),
        Some(subscription.clone()),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let id = a.body["id"].as_str().expect("id").to_string();

    let a = call(
        &app,
        Method::GET,
        "/v1/subscriptions?user=u-1",
        Some(&tok("publisher")),
        None,
    )
    .await;
    forbidden(&a, "subscriptions");
    for lister in ["reader", "manager", "operator"] {
        let a = call(
            &app,
            Method::GET,
            "/v1/subscriptions?user=u-1",
            Some(&tok(lister)),
            None,
        )
        .await;
        assert_eq!(a.status, 200, "{lister}: {}", a.body);
        assert_eq!(a.body["subscriptions"][0]["id"], json!(id));
    }

    let patch = json!({"topics": ["lot.*"]});
    let path = format!("/v1/subscriptions/{id}");
    let a = call(
        &app,
        Method::PATCH,
        &path,
        Some(&tok("reader")),
        Some(patch.clone()),
    )
    .await;
    forbidden(&a, "subscriptions");
    let a = call(
        &app,
        Method::PATCH,
        &path,
        Some(&tok("manager")),
        Some(patch),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);

    let a = call(
        &app,
        Method::GET,
        "/v1/stats",
        Some(&tok("publisher")),
        None,
    )
    .await;
    forbidden(&a, "read");
    for reader in ["reader", "operator"] {
        let a = call(&app, Method::GET, "/v1/stats", Some(&tok(reader)), None).await;
        assert_eq!(a.status, 200, "{reader}: {}", a.body);
        assert_eq!(a.body["streams"][0]["length"], 1, "{}", a.body);
    }

    let a = call(
        &app,
        Method::GET,
        "/v1/admin/dead-letters",
        Some(&tok("reader")),
        None,
    )
    .await;
    forbidden(&a, "admin");
    let a = call(
        &app,
        Method::GET,
        "/v1/admin/dead-letters?limit=5000",
        Some(&tok("operator")),
        None,
    )
    .await;
    assert_eq!(
        (a.status, &a.body["error"]["field"]),
        (400, &json!("limit")),
        "{}",
        a.body
    );
    let a = call(
        &app,
        Method::GET,
        "/v1/admin/dead-letters",
        Some(&tok("operator")),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["dead_letters"], json!([]));

    let a = call(&app, Method::DELETE, &path, Some(&tok("publisher")), None).await;
    forbidden(&a, "subscriptions");
    let a = call(&app, Method::DELETE, &path, Some(&tok("manager")), None).await;
    assert_eq!(a.status, 204);

    // What is public stays public.
    for open in ["/v1/vapid-public-key", "/livez", "/metrics"] {
        let a = call(&app, Method::GET, open, None, None).await;
        assert_eq!(a.status, 200, "{open}");
    }
    let metrics = call(&app, Method::GET, "/metrics", None, None).await.body;
    let metrics = metrics.as_str().expect("text");
    assert!(
        metrics.contains(r#"herald_api_refused_total{reason="forbidden"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"herald_api_refused_total{reason="unauthorized"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_subscriber_token_manages_its_own_users_subscriptions_and_nothing_else() {
    let app = TestApp::start_with(with_credentials).await;
    let mine = for_user("u-1");
    let (sink_id, browser) = app.sink.new_subscription();

    // The user comes from the token: the body need not name it, and may not name another.
    let a = call(
        &app,
        Method::POST,
        "/v1/subscriptions",
        Some(&mine),
        Some(json!({"subscription": browser})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let id = a.body["id"].as_str().expect("id").to_string();
    let a = call(
        &app,
        Method::POST,
        "/v1/subscriptions",
        Some(&mine),
        Some(json!({"user": "u-2", "subscription": browser})),
    )
    .await;
    assert_eq!(
        (a.status, &a.body["error"]["field"]),
        (403, &json!("user")),
        "{}",
        a.body
    );
    // Topics only from the token's own list; no header filter.
    let a = call(
        &app,
        Method::POST,
        "/v1/subscriptions",
        Some(&mine),
        Some(json!({"subscription": browser, "topics": ["#"]})),
    )
    .await;
    assert_eq!(
        (a.status, &a.body["error"]["field"]),
        (403, &json!("topics[0]")),
        "{}",
        a.body
    );
    let a = call(
        &app,
        Method::POST,
        "/v1/subscriptions",
        Some(&mine),
        Some(json!({"subscription": browser, "headers": {"match": "all", "values": {"lot": "7"}}})),
    )
    .await;
    assert_eq!(
        (a.status, &a.body["error"]["field"]),
        (403, &json!("headers")),
        "{}",
        a.body
    );
    let a = call(
        &app,
        Method::POST,
        "/v1/subscriptions",
        Some(&mine),
        Some(json!({"user": "u-1", "subscription": browser, "topics": ["lot.7"]})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);

    // Listed: its own user, by default and by name; never another's.
    let a = call(&app, Method::GET, "/v1/subscriptions", Some(&mine), None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["user"], "u-1");
    assert_eq!(a.body["subscriptions"][0]["id"], json!(id));
    let a = call(
        &app,
        Method::GET,
        "/v1/subscriptions?user=u-2",
        Some(&mine),
        None,
    )
    .await;
    assert_eq!(
        (a.status, &a.body["error"]["field"]),
        (403, &json!("user")),
        "{}",
        a.body
    );

    // Another user's device: not found for deletion, not taken over by registration.
    let (_, theirs) = app.sink.new_subscription();
    let a = call(
        &app,
        Method::POST,
        "/v1/subscriptions",
        Some("tok-backend"),
        Some(json!({"user": "u-2", "subscription": theirs})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let their_id = a.body["id"].as_str().expect("id").to_string();
    let a = call(
        &app,
        Method::DELETE,
        &format!("/v1/subscriptions/{their_id}"),
        Some(&mine),
        None,
    )
    .await;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = call(
        &app,
        Method::POST,
        "/v1/subscriptions",
        Some(&mine),
        Some(json!({"subscription": theirs})),
    )
    .await;
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (409, &json!("conflict")),
        "{}",
        a.body
    );
    let a = call(
        &app,
        Method::GET,
        "/v1/subscriptions?user=u-2",
        Some("tok-backend"),
        None,
    )
    .await;
    assert_eq!(
        a.body["subscriptions"][0]["id"],
        json!(their_id),
        "u-2's device is untouched"
    );

    // Nothing else: no publishing, no changing interests, no stats.
    let a = call(
        &app,
        Method::POST,
        "/v1/events",
        Some(&mine),
        Some(event("u-1")),
    )
    .await;
    assert_eq!(
        (a.status, &a.body["error"]["scope"]),
        (403, &json!("publish")),
        "{}",
        a.body
    );
    let a = call(
        &app,
        Method::PATCH,
        &format!("/v1/subscriptions/{id}"),
        Some(&mine),
        Some(json!({"topics": []})),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = call(&app, Method::GET, "/v1/stats", Some(&mine), None).await;
    assert_eq!(a.status, 403, "{}", a.body);

    // Forged, expired, foreign and eternal tokens are refused, each saying why.
    let refused = |claims: Value, secret: &str| subscriber_token(claims, secret);
    for (token, why) in [
        (
            refused(
                json!({"sub": "u-1", "aud": "herald", "exp": now() + 600}),
                "another-secret-another-secret-another",
            ),
            "signature",
        ),
        (
            refused(
                json!({"sub": "u-1", "aud": "herald", "exp": now() - 3600}),
                SECRET,
            ),
            "expired",
        ),
        (
            refused(
                json!({"sub": "u-1", "aud": "chat", "exp": now() + 600}),
                SECRET,
            ),
            "aud",
        ),
        (
            refused(
                json!({"sub": "u-1", "aud": "herald", "exp": now() + 400 * 24 * 3600}),
                SECRET,
            ),
            "max_lifetime",
        ),
    ] {
        let a = call(&app, Method::GET, "/v1/subscriptions", Some(&token), None).await;
        assert_eq!(a.status, 401, "{why}: {}", a.body);
        let message = a.body["error"]["message"].as_str().expect("message");
        assert!(message.contains(why), "{why}: {message}");
    }

    // The device registered with the subscriber token gets its user's events.
    let a = call(
        &app,
        Method::POST,
        "/v1/events",
        Some("tok-backend"),
        Some(json!({"id": "evt-u1", "topic": "parking.exit", "user": "u-1", "notification": {"title": "Exit"}})),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.body);
    app.step().await;
    assert_eq!(app.delivered_to(&sink_id), vec!["evt-u1".to_string()]);

    // Deleting its own device works.
    let a = call(
        &app,
        Method::DELETE,
        &format!("/v1/subscriptions/{id}"),
        Some(&mine),
        None,
    )
    .await;
    assert_eq!(a.status, 204, "{}", a.body);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_per_credential_and_keep_what_they_refuse_out() {
    let app = TestApp::start_with(|s| {
        with_credentials(s);
        s.api.max_batch = 10;
        s.api.limits.token_requests = Rate {
            per_second: 1,
            burst: 4,
        };
        s.api.limits.token_events = Rate {
            per_second: 1,
            burst: 10,
        };
        s.api.limits.subscriber_requests = Rate {
            per_second: 1,
            burst: 2,
        };
    })
    .await;
    let batch: Vec<Value> = (0..10)
        .map(|i| json!({"id": format!("e-{i}"), "topic": "t", "user": "u", "notification": {"title": "t"}}))
        .collect();
    let a = call(
        &app,
        Method::POST,
        "/v1/events",
        Some("tok-publisher"),
        Some(Value::Array(batch)),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let a = call(
        &app,
        Method::POST,
        "/v1/events",
        Some("tok-publisher"),
        Some(json!({"id": "e-over", "topic": "t", "user": "u", "notification": {"title": "t"}})),
    )
    .await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "rate_limited");
    assert!(a.body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("api.limits.token_events"));
    let wait: u64 = a
        .retry_after
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&wait), "{wait}");
    assert_eq!(app.stream_len(), 10, "the refused event was not written");

    // Requests: the bucket of one token, not of the others.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            call(&app, Method::GET, "/v1/stats", Some("tok-reader"), None)
                .await
                .status,
        );
    }
    let a = call(&app, Method::GET, "/v1/stats", Some("tok-reader"), None).await;
    assert_eq!(statuses, vec![200, 200, 200]);
    let a2 = call(&app, Method::GET, "/v1/stats", Some("tok-reader"), None).await;
    assert!(
        a.status == 429 || a2.status == 429,
        "{} {}",
        a.body,
        a2.body
    );
    let limited = if a.status == 429 { a } else { a2 };
    assert!(limited.body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("api.limits.token_requests"));
    assert!(limited.retry_after.is_some());
    let a = call(&app, Method::GET, "/v1/stats", Some("tok-operator"), None).await;
    assert_eq!(a.status, 200, "another token is not slowed: {}", a.body);

    // A subscriber's bucket is its user's, whichever of its tokens it uses.
    let first = for_user("u-9");
    let second = subscriber_token(
        json!({"sub": "u-9", "aud": "herald", "exp": now() + 300}),
        SECRET,
    );
    let s1 = call(&app, Method::GET, "/v1/subscriptions", Some(&first), None)
        .await
        .status;
    let s2 = call(&app, Method::GET, "/v1/subscriptions", Some(&second), None)
        .await
        .status;
    let s3 = call(&app, Method::GET, "/v1/subscriptions", Some(&second), None).await;
    assert_eq!((s1, s2, s3.status), (200, 200, 429), "{}", s3.body);
    assert!(s3.body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("api.limits.subscriber_requests"));
    let other = call(
        &app,
        Method::GET,
        "/v1/subscriptions",
        Some(&for_user("u-10")),
        None,
    )
    .await;
    assert_eq!(other.status, 200, "another user is not slowed");

    let metrics = call(&app, Method::GET, "/metrics", None, None).await.body;
    let metrics = metrics.as_str().expect("text");
    assert!(
        metrics.contains(r#"herald_api_rate_limited_total{limit="api.limits.token_events"}"#),
        "{metrics}"
    );
}

fn herald(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = std::process::Command::new(helpers::herald_bin());
    command
        .args(args)
        .current_dir(dir.path())
        .env_remove("REDIS_URL");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("herald runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn token_create_prints_a_token_once_and_the_entry_that_accepts_it() {
    let (ok, out, err) = herald(
        &[
            "token",
            "create",
            "--name",
            "parking-backend",
            "--scope",
            "publish",
            "--scope",
            "read",
        ],
        &[],
    );
    assert!(ok, "{err}");
    let token = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("hrld_"))
        .expect("the token")
        .to_string();
    let digest = digest_hex(&token);
    assert!(out.contains(&format!("sha256 = \"{digest}\"")), "{out}");
    assert!(out.contains(r#"scopes = ["publish", "read"]"#), "{out}");
    // The environment line parses into the same credential.
    let env_line = out
        .lines()
        .find_map(|l| l.strip_prefix("HERALD_API__TOKENS='"))
        .and_then(|l| l.strip_suffix('\''))
        .expect("an environment line");
    let (ok, printed, err) = herald(&["config", "print"], &[("HERALD_API__TOKENS", env_line)]);
    assert!(ok, "{err}");
    assert!(
        printed.contains(&digest) && printed.contains("parking-backend"),
        "{printed}"
    );
    assert!(
        !printed.contains(&token),
        "the token itself is never printed"
    );

    let app = TestApp::start_with(|s| {
        s.api.tokens = vec![ApiToken {
            name: "parking-backend".into(),
            sha256: digest.clone(),
            scopes: vec![Scope::Publish, Scope::Read],
        }]
    })
    .await;
    let a = call(
        &app,
        Method::POST,
        "/v1/events",
        Some(&token),
        Some(event("u-1")),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.body);

    let (ok, _, err) = herald(
        &["token", "create", "--name", "x", "--scope", "everything"],
        &[],
    );
    assert!(
        !ok && err.contains("publish, subscriptions, read or admin"),
        "{err}"
    );
    let (ok, _, err) = herald(
        &["token", "create", "--name", "two words", "--scope", "read"],
        &[],
    );
    assert!(!ok && err.contains("--name"), "{err}");
    // A token written as api.tokens held them before scopes: refused saying what to write;
    // `herald token create` still works beside it.
    let (ok, _, err) = herald(
        &["config", "check"],
        &[("HERALD_API__TOKENS", r#"["s3cret"]"#)],
    );
    assert!(
        !ok && err.contains("herald token create") && err.contains("sha256sum"),
        "{err}"
    );
    assert!(
        !err.contains("s3cret"),
        "the old token is not echoed: {err}"
    );
    let (ok, out, err) = herald(
        &["token", "create", "--name", "new", "--scope", "publish"],
        &[("HERALD_API__TOKENS", r#"["s3cret"]"#)],
    );
    assert!(ok && out.contains("hrld_"), "{err}");
    let (ok, _, err) = herald(
        &["config", "check"],
        &[(
            "HERALD_API__TOKENS",
            r#"[{name="a",sha256="tok-plain",scopes=["publish"]}]"#,
        )],
    );
    assert!(
        !ok && err.contains("api.tokens") && err.contains("herald token create"),
        "{err}"
    );
}

#[tokio::test]
async fn open_mode_serves_loopback_only() {
    let app = TestApp::start().await;
    let a = call(&app, Method::POST, "/v1/events", None, Some(event("u-1"))).await;
    assert_eq!(a.status, 202, "open on loopback: {}", a.body);
    let mut settings = app.settings.clone();
    settings.api.listen = "0.0.0.0:0".parse().expect("address");
    let db = herald::shared::db::Db::connect(&settings)
        .await
        .expect("redis");
    let refused = herald::intake::api::Api::bind(&settings, db, "key".into())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        refused.contains("herald token create") && refused.contains("0.0.0.0"),
        "{refused}"
    );
}

/// README's ways to mint a subscriber token: Node's crypto, Python's standard
/// library, Rust's `jsonwebtoken`; herald accepts each for its user.
#[tokio::test]
async fn the_readme_snippets_mint_tokens_herald_accepts() {
    let app = TestApp::start_with(with_credentials).await;
    let repo = env!("CARGO_MANIFEST_DIR");
    let mut tokens = Vec::new();
    for (program, script) in [
        ("node", "examples/subscriber-tokens/mint.mjs"),
        ("python3", "examples/subscriber-tokens/mint.py"),
    ] {
        let out = std::process::Command::new(program)
            .arg(script)
            .current_dir(repo)
            .env("HERALD_USER", "u-42")
            .env("HERALD_SUBSCRIBER_SECRET", SECRET)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test.sh installs it): {e}"));
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokens.push((
            script,
            String::from_utf8(out.stdout)
                .expect("utf-8")
                .trim()
                .to_string(),
        ));
    }
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        aud: &'a str,
        iat: u64,
        exp: u64,
    }
    let rust = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims {
            sub: "u-42",
            aud: "herald",
            iat: now(),
            exp: now() + 3600,
        },
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("jsonwebtoken signs");
    tokens.push(("jsonwebtoken", rust));
    for (how, token) in tokens {
        let a = call(&app, Method::GET, "/v1/subscriptions", Some(&token), None).await;
        assert_eq!(a.status, 200, "{how}: {}", a.body);
        assert_eq!(a.body["user"], "u-42", "{how}");
    }
    // The topics claim of the scripts lets the browser subscribe to that pattern.
    let (_, browser) = app.sink.new_subscription();
    let node = std::process::Command::new("node")
        .arg("examples/subscriber-tokens/mint.mjs")
        .current_dir(repo)
        .env("HERALD_USER", "u-42")
        .env("HERALD_SUBSCRIBER_SECRET", SECRET)
        .output()
        .expect("node");
    let token = String::from_utf8(node.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    let a = call(
        &app,
        Method::POST,
        "/v1/subscriptions",
        Some(&token),
        Some(json!({"subscription": browser, "topics": ["parking.lot-7.*"]})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
}

// What a review attacked: each test failed before its fix.

fn credentials_with_a_dotted_token() -> herald::intake::auth::Credentials {
    let mut s = Settings::default();
    with_credentials(&mut s);
    s.api.tokens.push(ApiToken {
        name: "dotted".into(),
        sha256: digest_hex("svc.prod.0123456789abcdef"),
        scopes: vec![Scope::Publish],
    });
    herald::intake::auth::Credentials::from_settings(&s).expect("credentials")
}

#[test]
fn a_token_minted_for_a_year_is_never_accepted() {
    let c = credentials_with_a_dotted_token();
    let t0 = now();
    let token = subscriber_token(
        json!({"sub": "u-1", "aud": "herald", "exp": t0 + 365 * 24 * 3600}),
        SECRET,
    );
    let header = format!("Bearer {token}");
    assert!(
        c.identify(Some(&header), t0).is_err(),
        "refused when minted"
    );
    // 364 days later the same year-long token is accepted: max_lifetime bounds
    // how far ahead exp is *now*, not how long the token lives.
    assert!(
        c.identify(Some(&header), t0 + 364 * 24 * 3600).is_err(),
        "a year-long token is accepted during its last max_lifetime"
    );
}

#[test]
fn a_configured_service_token_with_a_dot_works() {
    let c = credentials_with_a_dotted_token();
    let got = c.identify(Some("Bearer svc.prod.0123456789abcdef"), now());
    assert!(
        matches!(got, Ok(herald::intake::auth::Caller::Service { .. })),
        "configured digest, yet refused: {got:?}"
    );
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let c = credentials_with_a_dotted_token();
    // RFC 9110 §11.1 / RFC 6750: the auth-scheme is case-insensitive.
    let got = c.identify(Some("bearer tok-publisher"), now());
    assert!(got.is_ok(), "{got:?}");
}

#[test]
fn exp_as_a_fractional_numeric_date_is_accepted() {
    let c = credentials_with_a_dotted_token();
    // RFC 7519 §2: NumericDate "can represent ... non-integer values".
    let token = subscriber_token(
        json!({"sub": "u-1", "aud": "herald", "exp": (now() + 600) as f64 + 0.5}),
        SECRET,
    );
    let got = c.identify(Some(&format!("Bearer {token}")), now());
    assert!(got.is_ok(), "{got:?}");
}

#[test]
fn a_proxy_credential_in_the_user_part_is_not_printed() {
    // Zyte/Crawlera-style: the API key is the user name, the password empty.
    let proxy = "http://APIKEY5d41402abc4b:@proxy.example.com:8011";
    let shown = herald::shared::config::redacted_proxy(proxy);
    assert!(
        !shown.contains("APIKEY5d41402abc4b"),
        "redacted_url: {shown}"
    );
    let mut s = Settings::default();
    s.push.proxy = herald::shared::config::Secret::new(proxy);
    let printed = s.to_redacted_toml();
    assert!(
        !printed.contains("APIKEY5d41402abc4b"),
        "config print shows the proxy key"
    );
}

#[tokio::test]
async fn another_users_endpoint_is_409_in_every_spelling() {
    let app = TestApp::start_with(with_credentials).await;
    // u-2's device, registered by the backend.
    let (their_sink, theirs) = app.sink.new_subscription();
    let a = call(
        &app,
        Method::POST,
        "/v1/subscriptions",
        Some("tok-backend"),
        Some(json!({"user": "u-2", "subscription": theirs})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    // The plain spelling is refused (the existing test)...
    let mine = for_user("u-1");
    let a = call(
        &app,
        Method::POST,
        "/v1/subscriptions",
        Some(&mine),
        Some(json!({"subscription": theirs})),
    )
    .await;
    assert_eq!(a.status, 409, "{}", a.body);
    // ...and so is the same device spelled with an empty query.
    let mut variant = theirs.clone();
    let endpoint = theirs["endpoint"].as_str().expect("endpoint").to_string();
    variant["endpoint"] = json!(format!("{endpoint}?"));
    let a = call(
        &app,
        Method::POST,
        "/v1/subscriptions",
        Some(&mine),
        Some(json!({"subscription": variant})),
    )
    .await;
    let status = a.status;
    // Whatever it answered, u-1's events must not reach u-2's device.
    let a2 = call(
        &app,
        Method::POST,
        "/v1/events",
        Some("tok-backend"),
        Some(json!({"id": "evt-for-u1", "topic": "parking.exit", "user": "u-1", "notification": {"title": "for u-1 only"}})),
    )
    .await;
    assert_eq!(a2.status, 202, "{}", a2.body);
    app.step().await;
    let reached = app.delivered_to(&their_sink);
    assert!(
        status == 409 && !reached.contains(&"evt-for-u1".to_string()),
        "variant registration answered {status} {}; u-2's device received {reached:?}",
        a.body
    );
}

#[tokio::test]
async fn a_refused_batch_does_not_spend_the_event_budget() {
    let app = TestApp::start_with(|s| {
        with_credentials(s);
        s.api.max_batch = 10;
        s.api.limits.token_events = Rate {
            per_second: 1,
            burst: 10,
        };
    })
    .await;
    // Ten events, one invalid: 422, nothing written.
    let mut batch: Vec<Value> = (0..9)
        .map(|i| json!({"id": format!("e-{i}"), "topic": "t", "user": "u", "notification": {"title": "t"}}))
        .collect();
    batch.push(json!({"id": "bad", "topic": "", "user": "u", "notification": {"title": "t"}}));
    let a = call(
        &app,
        Method::POST,
        "/v1/events",
        Some("tok-publisher"),
        Some(Value::Array(batch)),
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.body);
    // The corrected single event is now 429 for ~9 s.
    let a = call(
        &app,
        Method::POST,
        "/v1/events",
        Some("tok-publisher"),
        Some(json!({"id": "e-fixed", "topic": "t", "user": "u", "notification": {"title": "t"}})),
    )
    .await;
    assert_eq!(a.status, 202, "{} retry-after {:?}", a.body, a.retry_after);
}

#[tokio::test]
async fn a_subscriber_never_takes_over_a_device_registered_concurrently_to_another_user() {
    let app = TestApp::start_with(|s| {
        with_credentials(s);
        s.api.limits.subscriber_requests = Rate {
            per_second: 0,
            burst: 0,
        };
        s.api.limits.token_requests = Rate {
            per_second: 0,
            burst: 0,
        };
        s.api.max_subscriptions_per_user = 0;
    })
    .await;
    let mine = for_user("u-1");
    let mut taken = 0;
    let trials = 100;
    for _ in 0..trials {
        let (_, device) = app.sink.new_subscription();
        let (victim, attacker) = tokio::join!(
            call(
                &app,
                Method::POST,
                "/v1/subscriptions",
                Some("tok-backend"),
                Some(json!({"user": "u-2", "subscription": device.clone()}))
            ),
            call(
                &app,
                Method::POST,
                "/v1/subscriptions",
                Some(&mine),
                Some(json!({"subscription": device.clone()}))
            ),
        );
        // The backend created it for u-2 and the subscriber then *updated* it (200),
        // i.e. moved u-2's existing device to u-1 without the 409.
        if victim.status == 201 && attacker.status == 200 {
            taken += 1;
        }
    }
    let owned = |user: &'static str| {
        let app = &app;
        async move {
            let a = call(
                app,
                Method::GET,
                &format!("/v1/subscriptions?user={user}"),
                Some("tok-backend"),
                None,
            )
            .await;
            a.body["subscriptions"]
                .as_array()
                .map(|v| v.len())
                .unwrap_or(0)
        }
    };
    let (u1, u2) = (owned("u-1").await, owned("u-2").await);
    assert_eq!(taken, 0, "{taken} of {trials} concurrent registrations moved u-2's device to u-1 (now u-1 owns {u1}, u-2 owns {u2})");
}

/// A key or secret file that group or others may read stops the role that
/// reads it at start, through the real start-up (the API's binding, the
/// `herald api` role), saying how to fix it.
#[tokio::test]
async fn key_and_secret_files_others_may_read_stop_the_roles_that_read_them() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let readable = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        path
    };

    let mut settings = app.settings.clone();
    settings.api.listen = "127.0.0.1:0".parse().expect("address");
    settings.api.subscriber_tokens.secret_file = readable("jwt-secret", SECRET);
    let db = herald::shared::db::Db::connect(&settings)
        .await
        .expect("redis");
    let refused = herald::intake::api::Api::bind(&settings, db, "key".into())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        refused.contains("secret_file") && refused.contains("chmod 600"),
        "{refused}"
    );
    assert!(
        !refused.contains(SECRET),
        "the secret is not quoted: {refused}"
    );

    let (_, key) = herald::deliver::push::vapid::VapidKey::generate();
    let mut settings = app.settings.clone();
    settings.api.listen = "127.0.0.1:0".parse().expect("address");
    settings.push.vapid_private_key_file = readable("vapid", &key);
    let started = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        herald::operate::roles::api(settings, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("herald api stops at once");
    let refused = format!("{:#}", started.expect_err("refused"));
    assert!(refused.contains("chmod 600"), "{refused}");
    assert!(!refused.contains(&key), "the key is not quoted: {refused}");
}
