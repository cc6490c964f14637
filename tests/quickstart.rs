//! The README's quickstart as real processes: `herald up` on its embedded
//! Redis, `herald sink --register`, one event, a graceful stop, and a second
//! start that finds its keys and its data again.

mod helpers;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use helpers::herald_bin;
use serde_json::{json, Value};

/// A `herald up` process and what its banner said.
struct Up {
    child: Child,
    redis_url: String,
    api: String,
}

impl Up {
    fn start(data: &std::path::Path, port: u16) -> Up {
        let mut child = Command::new(herald_bin())
            .args(["up", "--allow-insecure-endpoints", "--log-format", "json"])
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .current_dir(data)
            .env("RUST_LOG", "info")
            .env_remove("REDIS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start herald up");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut redis_url = None;
        while redis_url.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("herald up prints its banner");
            if let Some(url) = line.trim().strip_prefix("redis") {
                redis_url = Some(url.trim().to_string());
            }
        }
        Up {
            child,
            redis_url: redis_url.expect("found above"),
            api: format!("http://127.0.0.1:{port}"),
        }
    }

    /// SIGTERM, then the exit status within 30 s.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "herald up did not stop within 30s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_ready(http: &reqwest::Client, api: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{api}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "herald up did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_up_with_the_sink_delivers_a_first_event_and_stops_cleanly() {
    let data = tempfile::tempdir().expect("temp dir");
    let port = herald::operate::embedded_redis::free_port().expect("port");
    let sink_port = herald::operate::embedded_redis::free_port().expect("port");
    let arrivals = data.path().join("arrivals.jsonl");
    let http = reqwest::Client::new();

    let up = Up::start(data.path(), port);
    wait_ready(&http, &up.api).await;

    // The VAPID key was created, private to its owner.
    use std::os::unix::fs::PermissionsExt;
    let key_file = data.path().join("vapid_private_key");
    let mode = std::fs::metadata(&key_file)
        .expect("key file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let key: Value = http
        .get(format!("{}/v1/vapid-public-key", up.api))
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("json");

    let mut sink = helpers::Proc(
        Command::new(herald_bin())
            .args([
                "sink",
                "--register",
                "1",
                "--user",
                "u-42",
                "--api",
                &up.api,
            ])
            .args(["--sink-listen", &format!("127.0.0.1:{sink_port}")])
            .arg("--out")
            .arg(&arrivals)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start herald sink"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list: Value = http
            .get(format!("{}/v1/subscriptions?user=u-42", up.api))
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        if list["subscriptions"]
            .as_array()
            .is_some_and(|s| s.len() == 1)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink did not register its subscription"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let event = json!({"topic": "parking.lot-7.entry", "user": "u-42", "notification": {"title": "Entry", "body": "12가3456 entered lot 7"}});
    let r = http
        .post(format!("{}/v1/events", up.api))
        .json(&event)
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 202);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = read_lines(&arrivals);
        if let Some(line) = lines.iter().find(|l| l["status"] == 201) {
            assert_eq!(line["plaintext"]["title"], "Entry");
            assert_eq!(line["plaintext"]["body"], "12가3456 entered lot 7");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no decrypted arrival in the sink's output: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A push still in flight at SIGTERM finishes and is acknowledged before herald exits.
    let sink_admin = format!("http://127.0.0.1:{sink_port}/admin/faults/*");
    let r = http
        .post(&sink_admin)
        .json(&json!([{"status": 201, "delay_ms": 1500}]))
        .send()
        .await
        .expect("script the sink");
    assert_eq!(r.status(), 204);
    let r = http
        .post(format!("{}/v1/events", up.api))
        .json(&event)
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 202);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let redis_url = up.redis_url.clone();
    let status = up.stop();
    assert!(
        status.success(),
        "herald up exits 0 on SIGTERM, got {status}"
    );
    assert_eq!(
        read_lines(&arrivals).len(),
        2,
        "the slow push was allowed to finish"
    );

    // Its redis-server was stopped with it.
    let client = redis::Client::open(redis_url.as_str()).expect("url");
    assert!(
        client.get_connection().is_err(),
        "the embedded redis-server is stopped"
    );

    // Second run: same VAPID key, the data survived (AOF), nothing left pending.
    let up = Up::start(data.path(), port);
    wait_ready(&http, &up.api).await;
    let again: Value = http
        .get(format!("{}/v1/vapid-public-key", up.api))
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("json");
    assert_eq!(again["public_key"], key["public_key"], "the key is reused");
    let mut conn = redis::Client::open(up.redis_url.as_str())
        .expect("url")
        .get_connection()
        .expect("connect to the embedded redis");
    let keys = herald::shared::keys::Keys::new("herald", 1, false);
    let len: u64 = redis::cmd("XLEN")
        .arg(keys.stream(0))
        .query(&mut conn)
        .expect("XLEN");
    assert_eq!(
        len, 2,
        "both events are still in the stream after a restart"
    );
    let pending: helpers::PendingSummary = redis::cmd("XPENDING")
        .arg(keys.stream(0))
        .arg("herald")
        .query(&mut conn)
        .expect("XPENDING");
    assert_eq!(pending.0, 0, "nothing was left pending by the stop");
    let aof: String = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query::<Vec<String>>(&mut conn)
        .expect("CONFIG GET")
        .pop()
        .expect("a value");
    assert_eq!(aof, "yes");
    assert!(up.stop().success());
    let _ = sink.kill();
    let _ = sink.wait();
}
