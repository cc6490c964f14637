//! The binary's configuration surface: environment overrides, flags, errors
//! that name the key and where its value came from.

mod helpers;

use std::process::Command;

use helpers::herald_bin;

fn herald(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(herald_bin());
    cmd.args(args)
        .current_dir(dir.path())
        .env_remove("REDIS_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run herald");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn environment_variables_override_the_file_and_flags_override_both() {
    let (ok, out, err) = herald(
        &["config", "print"],
        &[
            ("HERALD_API__LISTEN", "0.0.0.0:9000"),
            ("HERALD_WORKER__BLOCK", "500ms"),
            ("HERALD_DATA_DIR", "/var/lib/herald"),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("listen = \"0.0.0.0:9000\""), "{out}");
    assert!(out.contains("block = \"500ms\""), "{out}");
    assert!(out.contains("data_dir = \"/var/lib/herald\""), "{out}");

    let (ok, out, _) = herald(
        &["config", "print", "--listen", "127.0.0.1:7000"],
        &[("HERALD_API__LISTEN", "0.0.0.0:9000")],
    );
    assert!(ok);
    assert!(out.contains("listen = \"127.0.0.1:7000\""), "{out}");
}

#[test]
fn redis_url_is_honoured_and_never_printed() {
    let (ok, out, err) = herald(
        &["config", "print"],
        &[("REDIS_URL", "redis://:hunter2@db:6379/0")],
    );
    assert!(ok, "{err}");
    assert!(out.contains("url = \"[redacted]\""), "{out}");
    assert!(!out.contains("hunter2"));
    // HERALD_REDIS__URL wins over REDIS_URL.
    let (ok, _, err) = herald(
        &["config", "check"],
        &[
            ("REDIS_URL", "redis://db:6379"),
            ("HERALD_REDIS__URL", "not a url"),
        ],
    );
    assert!(!ok);
    assert!(err.contains("redis.url"), "{err}");
}

#[test]
fn a_bad_value_fails_naming_the_key_and_its_source() {
    let (ok, _, err) = herald(&["config", "check"], &[("HERALD_WORKER__BLOCK", "soon")]);
    assert!(!ok);
    assert!(err.to_lowercase().contains("worker.block"), "{err}");
    assert!(err.contains("HERALD_"), "{err}");

    let (ok, _, err) = herald(&["config", "check"], &[("HERALD_REDIS__CONNECTIONS", "0")]);
    assert!(!ok);
    assert!(
        err.contains("redis.connections") && err.contains("HERALD_"),
        "{err}"
    );

    let (ok, _, err) = herald(&["config", "check"], &[("HERALD_API__NO_SUCH_KEY", "1")]);
    assert!(!ok);
    assert!(err.contains("no_such_key"), "{err}");

    let (ok, _, err) = herald(
        &["--config", "/nonexistent/herald.toml", "config", "check"],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("/nonexistent/herald.toml"), "{err}");
}

#[test]
fn roles_without_a_redis_url_say_what_to_do() {
    let (ok, _, err) = herald(&["worker"], &[]);
    assert!(!ok);
    assert!(
        err.contains("redis.url is empty") && err.contains("herald up"),
        "{err}"
    );
}

#[test]
fn vapid_generate_writes_a_private_key_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vapid");
    let (ok, out, err) = herald(
        &["vapid", "generate", "--out", path.to_str().expect("utf-8")],
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.contains("public key"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).expect("file").permissions().mode() & 0o777,
        0o600
    );
    // Never overwrites an existing key.
    let (ok, _, err) = herald(
        &["vapid", "generate", "--out", path.to_str().expect("utf-8")],
        &[],
    );
    assert!(!ok, "{err}");
}

#[test]
fn a_redis_that_can_lose_events_is_refused_when_durability_is_required() {
    let volatile = helpers::TestRedis::start();
    let (ok, _, err) = herald(
        &["worker"],
        &[
            ("HERALD_REDIS__URL", &volatile.url()),
            ("HERALD_REDIS__REQUIRE_DURABLE", "true"),
        ],
    );
    assert!(!ok);
    assert!(err.contains("appendonly is not yes"), "{err}");
}

#[test]
fn a_durable_redis_is_accepted_when_durability_is_required() {
    let durable = helpers::TestRedis::start_durable();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = helpers::Proc(
        Command::new(herald_bin())
            .arg("worker")
            .current_dir(dir.path())
            .env_remove("REDIS_URL")
            .env("HERALD_REDIS__URL", durable.url())
            .env("HERALD_REDIS__REQUIRE_DURABLE", "true")
            .env("HERALD_PUSH__CREATE_VAPID_KEY", "true")
            // Not the default port: another test's process may hold it.
            .env("HERALD_ADMIN__LISTEN", "127.0.0.1:0")
            .env("HERALD_DATA_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the worker"),
    );
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the worker keeps running"
    );
    let status = helpers::terminate(&mut child, std::time::Duration::from_secs(10));
    assert!(status.success(), "{status}");
}
