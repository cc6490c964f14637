//! The `herald` Redis Function library (`library.lua`): publishing, in one
//! place for herald and for producers that call `FCALL herald_publish`
//! themselves. Its limits come from herald's settings, written into the code;
//! every role loads it at start, replacing a loaded copy whose code differs
//! (an older herald's, or other settings'), and again whenever Redis answers
//! that it has no such function (a restart without persistence, a flush).
//! Roles that do not publish (worker, reclaimer) go on without it when their
//! Redis user may not load functions (README, "Redis ACLs per role").

use super::PublishOutcome;
use crate::shared::config::Settings;
use crate::shared::db::{Conn, Db};
use crate::shared::event::{ENTRY_VERSION, MAX_DELAY_DAYS, MAX_PAYLOAD_BYTES, MAX_TTL};

/// The library's name in `FUNCTION LIST`.
pub const NAME: &str = "herald";

/// The library's code with `settings` written in.
pub fn code(settings: &Settings) -> String {
    let events = &settings.events;
    include_str!("library.lua")
        .replace(
            "__DEDUP_WINDOW_MS__",
            &events.dedup_window.as_millis().max(1).to_string(),
        )
        .replace(
            "__MAX_CLOCK_SKEW_MS__",
            &events.max_clock_skew.as_millis().to_string(),
        )
        .replace("__MAX_TTL__", &MAX_TTL.to_string())
        .replace("__MAX_DELAY_DAYS__", &MAX_DELAY_DAYS.to_string())
        .replace("__MAX_PAYLOAD_BYTES__", &MAX_PAYLOAD_BYTES.to_string())
        .replace("__ENTRY_VERSION__", ENTRY_VERSION)
}

/// Loads the library with `settings` written in, unless the same code is loaded already.
pub async fn load(db: &Db, settings: &Settings) -> anyhow::Result<()> {
    load_code(db, &code(settings)).await
}

async fn load_code(db: &Db, code: &str) -> anyhow::Result<()> {
    let mut conn = db.conn();
    if db.is_cluster() {
        // Sent to every master (each has its own functions); a listing would
        // come from one node only.
        return load_replace(&mut conn, code).await;
    }
    let listed: redis::Value = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg(NAME)
        .arg("WITHCODE")
        .query_async(&mut conn)
        .await
        .map_err(|e| {
            anyhow::Error::new(e)
                .context("cannot list Redis Functions (herald needs Redis 7 or later)")
        })?;
    if loaded_code(&listed).as_deref() == Some(code) {
        return Ok(());
    }
    load_replace(&mut conn, code).await
}

async fn load_replace(conn: &mut crate::shared::db::Conn, code: &str) -> anyhow::Result<()> {
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(code)
        .query_async(conn)
        .await
        .map_err(|e| {
            anyhow::Error::new(e).context("cannot load herald's Redis Function library")
        })?;
    tracing::info!("loaded the herald function library (FCALL herald_publish)");
    Ok(())
}

/// The code of our library in a `FUNCTION LIST ... WITHCODE` reply.
fn loaded_code(listed: &redis::Value) -> Option<String> {
    let redis::Value::Array(libraries) = listed else {
        return None;
    };
    libraries.iter().find_map(|library| {
        let pairs: Vec<(String, redis::Value)> = match library {
            redis::Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|kv| {
                    Some((
                        redis::from_redis_value(kv.first()?.clone()).ok()?,
                        kv.get(1)?.clone(),
                    ))
                })
                .collect(),
            redis::Value::Map(map) => map
                .iter()
                .filter_map(|(k, v)| Some((redis::from_redis_value(k.clone()).ok()?, v.clone())))
                .collect(),
            _ => return None,
        };
        pairs
            .into_iter()
            .find(|(k, _)| k == "library_code")
            .and_then(|(_, v)| redis::from_redis_value(v).ok())
    })
}

/// Runs a pipeline of `FCALL`s (read by the caller: `{text, text}`, or one
/// such pair or error per event of a `herald_publish_batch`) and the `WAIT`s
/// among them; each reply is its value or the error it raised. When Redis has
/// no such function
/// (it restarted without persistence, or was flushed), the library is loaded
/// with the settings of this process and the pipeline sent once more.
pub(super) async fn call(
    db: &Db,
    code: &str,
    conn: &mut Conn,
    pipe: &redis::Pipeline,
) -> anyhow::Result<Vec<Result<redis::Value, redis::RedisError>>> {
    if pipe.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = pipe.clone();
    pipe.ignore_errors();
    for attempt in 0..2 {
        let replies: Vec<redis::RedisResult<redis::Value>> = pipe.query_async(conn).await?;
        let missing = replies.iter().any(|r| {
            r.as_ref()
                .is_err_and(|e| e.to_string().contains("Function not found"))
        });
        if !missing || attempt == 1 {
            return Ok(replies);
        }
        load_code(db, code).await?;
    }
    unreachable!("the loop returns on its second attempt")
}

/// What a refusal by the function means for one event: a conflict or an
/// invalid field; any other error is Redis's, and fails the whole publish.
pub(super) fn refused(id: String, e: &redis::RedisError) -> anyhow::Result<PublishOutcome> {
    let detail = e.detail().unwrap_or_default();
    match e.code() {
        Some("CONFLICT") => {
            let stream_id = detail
                .rsplit_once("(entry ")
                .map(|(_, at)| at.trim_end_matches(')').to_string())
                .unwrap_or_default();
            Ok(PublishOutcome::Conflict { id, stream_id })
        }
        Some("INVALID") => Ok(PublishOutcome::Invalid {
            id,
            error: detail.to_string(),
        }),
        _ => Err(anyhow::anyhow!("herald's function library failed: {e}")),
    }
}
