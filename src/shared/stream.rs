//! Stream entries as herald reads them, and the small facts about Redis
//! streams that several stages need: replies of `XREADGROUP`/`XCLAIM` parsed
//! into [`Entry`], stream ids as times and as ordered pairs, the `XINFO`
//! replies as maps, and the error of a missing consumer group.

use std::cmp::Ordering;
use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use redis::Value;

/// The field a replay copy carries: the stream id of the original entry.
pub const REPLAY_OF: &str = "replay_of";
/// The field a forced replay copy carries: the run, under which devices are tracked afresh.
pub const REPLAY_RUN: &str = "replay_run";
/// The field a dead-letter replay carries when only one device of the event is to be tried again.
pub const REPLAY_ONLY: &str = "replay_only";

/// One entry as read from a stream.
#[derive(Debug, Clone)]
pub struct Entry {
    pub stream: String,
    pub id: String,
    /// `None` when the entry was deleted or trimmed while pending.
    pub fields: Option<HashMap<String, String>>,
    /// Counted attempts at this entry, this one included (the group's delivery count).
    pub deliveries: u64,
    /// When it was read (parsed from Redis's reply): every subscription change
    /// made before its event was published had been made by then.
    pub read_at: std::time::Instant,
}

impl Entry {
    /// When the entry entered its stream: the time part of its id.
    pub fn added_at(&self) -> Option<DateTime<Utc>> {
        id_time(&self.id)
    }
}

/// The time part of a stream id (`<ms>-<seq>`), when it has one.
pub fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let ms = id.split('-').next()?.parse::<i64>().ok()?;
    Utc.timestamp_millis_opt(ms).single()
}

/// The milliseconds part of a stream id; 0 when it does not parse.
pub fn id_ms(id: &str) -> u64 {
    id_parts(id).0
}

/// A stream id as `(ms, seq)`.
pub fn id_parts(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Stream ids compare as `(ms, seq)` numbers, not as text.
pub fn compare_ids(a: &str, b: &str) -> Ordering {
    id_parts(a).cmp(&id_parts(b))
}

/// The smallest id after `id`.
pub fn successor(id: &str) -> String {
    let (ms, seq) = id_parts(id);
    match seq.checked_add(1) {
        Some(next) => format!("{ms}-{next}"),
        None => format!("{}-0", ms.saturating_add(1)),
    }
}

/// Whether a text is a stream id (`1700000000000-0`) or its time part alone.
pub fn is_id(text: &str) -> bool {
    let mut parts = text.splitn(2, '-');
    let ms = parts.next().unwrap_or("");
    let seq = parts.next();
    !ms.is_empty()
        && ms.chars().all(|c| c.is_ascii_digit())
        && seq.is_none_or(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
}

/// Whether the entry `id` is still in `stream` (an `XRANGE` of that one id).
pub async fn entry_exists(
    conn: &mut crate::shared::db::Conn,
    stream: &str,
    id: &str,
) -> anyhow::Result<bool> {
    let found: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg(id)
        .arg(id)
        .query_async(conn)
        .await?;
    Ok(!found.is_empty())
}

/// Whether an error is Redis's `NOGROUP` (the consumer group or the stream is missing).
pub fn is_nogroup(e: &anyhow::Error) -> bool {
    e.downcast_ref::<redis::RedisError>()
        .is_some_and(|e| e.code() == Some("NOGROUP"))
}

/// One element of an `XINFO GROUPS` or `XINFO CONSUMERS` reply.
pub type Info = HashMap<String, Value>;

/// A field of an `XINFO` element as text.
pub fn info_text(info: &Info, key: &str) -> Option<String> {
    info.get(key)
        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
}

/// A field of an `XINFO` element as a number.
pub fn info_number(info: &Info, key: &str) -> Option<u64> {
    info_text(info, key).and_then(|t| t.parse().ok())
}

/// Parses an `XREADGROUP` reply: `[[stream, [[id, [field, value, ...] | nil], ...]], ...]`
/// (RESP2), or the same as a map (RESP3). A nil reply (BLOCK timed out) is no entries.
pub fn parse_entries(reply: Value, deliveries: u64) -> anyhow::Result<Vec<Entry>> {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let entries = pair.pop().expect("len 2");
                    let name = pair.pop().expect("len 2");
                    Ok((name, entries))
                }
                other => anyhow::bail!("unexpected XREADGROUP stream element: {other:?}"),
            })
            .collect::<anyhow::Result<_>>()?,
        Value::Map(pairs) => pairs,
        other => anyhow::bail!("unexpected XREADGROUP reply: {other:?}"),
    };
    let mut out = Vec::new();
    for (name, entries) in streams {
        let stream: String = redis::from_redis_value(name)?;
        out.extend(parse_entry_list(&stream, entries, deliveries)?);
    }
    Ok(out)
}

/// Parses a list of entries, `[[id, [field, value, ...] | nil], ...]`, as
/// `XREADGROUP` gives per stream and `XCLAIM` and `XRANGE` give whole.
pub fn parse_entry_list(
    stream: &str,
    entries: Value,
    deliveries: u64,
) -> anyhow::Result<Vec<Entry>> {
    let entries = match entries {
        Value::Array(entries) => entries,
        Value::Nil => return Ok(Vec::new()),
        other => anyhow::bail!("unexpected entry list for {stream}: {other:?}"),
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        // XCLAIM may answer nil for an entry that no longer exists.
        let mut parts = match entry {
            Value::Array(parts) => parts,
            Value::Nil => continue,
            other => anyhow::bail!("unexpected entry in {stream}: {other:?}"),
        };
        anyhow::ensure!(parts.len() == 2, "unexpected entry shape in {stream}");
        let body = parts.pop().expect("len 2");
        let id: String = redis::from_redis_value(parts.pop().expect("len 2"))?;
        let fields = match body {
            Value::Nil => None,
            Value::Array(flat) => {
                let mut map = HashMap::with_capacity(flat.len() / 2);
                let mut not_utf8 = Vec::new();
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    // Non-UTF-8 text is kept as U+FFFD, and its field named, so
                    // that reading the entry as an event refuses it as poison.
                    let (k, k_ok) = lossy(k);
                    let (v, v_ok) = lossy(v);
                    if !(k_ok && v_ok) {
                        not_utf8.push(k.clone());
                    }
                    map.insert(k, v);
                }
                if !not_utf8.is_empty() {
                    map.insert(crate::shared::event::NOT_UTF8.into(), not_utf8.join(" "));
                }
                crate::shared::event::complete_entry(&id, &mut map);
                Some(map)
            }
            other => anyhow::bail!("unexpected fields of {stream} {id}: {other:?}"),
        };
        out.push(Entry {
            stream: stream.to_string(),
            id,
            fields,
            deliveries,
            read_at: std::time::Instant::now(),
        });
    }
    Ok(out)
}

/// A value as text, and whether it was UTF-8.
fn lossy(v: Value) -> (String, bool) {
    match v {
        Value::BulkString(bytes) => match String::from_utf8(bytes) {
            Ok(text) => (text, true),
            Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), false),
        },
        Value::SimpleString(s) => (s, true),
        Value::Int(i) => (i.to_string(), true),
        other => (format!("{other:?}"), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_compare_as_numbers_and_read_as_times() {
        assert_eq!(compare_ids("9-0", "10-0"), Ordering::Less);
        assert_eq!(compare_ids("10-2", "10-10"), Ordering::Less);
        assert_eq!(compare_ids("10-1", "10-1"), Ordering::Equal);
        assert_eq!(successor("10-1"), "10-2");
        assert_eq!(successor("0-0"), "0-1");
        assert_eq!(
            id_time("1763717000000-3").map(|t| t.timestamp_millis()),
            Some(1_763_717_000_000)
        );
        assert_eq!(id_time("garbage"), None);
        assert!(is_id("1700000000000-0") && is_id("17") && !is_id("17-") && !is_id("2h"));
    }
}
