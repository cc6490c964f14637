//! Many entries' script calls in one round trip. The claim and the settle
//! scripts are made of one call (`one` in `claim.lua`, `settle.lua`) and the
//! batch that runs many of them (`batch.lua`): while a batch is on its way to
//! Redis, the calls the other entries in flight make meanwhile gather, and go
//! together as the next one. A call alone goes at once; under load, one
//! round trip (and one script run) serves dozens of entries, which is most of
//! what Redis spends per event.
//!
//! Calls gather by stream: every key of one call shares its stream's hash tag,
//! so a batch's keys stay in one slot of a Redis Cluster.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use redis::{Script, Value};
use tokio::sync::oneshot;

use crate::shared::db::Db;

/// The claim script as the worker runs it: one call (`claim.lua`), run by the
/// batch (`batch.lua`).
pub const CLAIM_SCRIPT: &str = concat!(include_str!("claim.lua"), include_str!("batch.lua"));
/// The settle script as the worker runs it: one call (`settle.lua`), run by
/// the batch (`batch.lua`).
pub const SETTLE_SCRIPT: &str = concat!(include_str!("settle.lua"), include_str!("batch.lua"));

/// Most calls in one batch.
const MOST_CALLS: usize = 128;
/// Most arguments in one batch, past which a batch closes early (a fan-out's
/// settled states can be thousands per call).
const MOST_ARGS: usize = 50_000;

/// One call: its keys and arguments, as the single call's script numbers them.
#[derive(Debug, Default)]
pub struct Call {
    pub keys: Vec<String>,
    pub args: Vec<String>,
}

impl Call {
    pub fn key(&mut self, key: impl Into<String>) -> &mut Call {
        self.keys.push(key.into());
        self
    }

    pub fn arg(&mut self, arg: impl ToString) -> &mut Call {
        self.args.push(arg.to_string());
        self
    }
}

struct Waiting {
    call: Call,
    answer: oneshot::Sender<anyhow::Result<Value>>,
}

#[derive(Default)]
struct Queue {
    /// A batch of this stream is on its way: later calls wait for the next.
    sending: bool,
    waiting: Vec<Waiting>,
}

/// The calls of one script, gathered by stream.
pub(super) struct Batcher {
    script: Script,
    db: Db,
    queues: Mutex<HashMap<String, Queue>>,
}

impl Batcher {
    /// `source`: the single call's script followed by `batch.lua`.
    pub fn new(db: Db, source: &str) -> Arc<Batcher> {
        Arc::new(Batcher {
            script: Script::new(source),
            db,
            queues: Mutex::default(),
        })
    }

    /// Runs `call` (for an entry of `stream`) in the next batch of its stream,
    /// and answers with its own reply. An error of the round trip itself is a
    /// `redis::RedisError` (so `db::unreachable` can tell a Redis blip); one
    /// of the call alone is the script's message.
    pub async fn call(self: &Arc<Self>, stream: &str, call: Call) -> anyhow::Result<Value> {
        let (answer, reply) = oneshot::channel();
        let start = {
            let mut queues = self.queues.lock();
            if !queues.contains_key(stream) {
                queues.insert(stream.to_string(), Queue::default());
            }
            let queue = queues.get_mut(stream).expect("inserted above");
            queue.waiting.push(Waiting { call, answer });
            !std::mem::replace(&mut queue.sending, true)
        };
        if start {
            // Made before the task, so that even a task dropped unpolled (the
            // runtime shutting down) fails the stream's calls rather than
            // leaving them waiting.
            let done = Done {
                batcher: self.clone(),
                stream: stream.to_string(),
                finished: false,
            };
            tokio::spawn(self.clone().send_all(done));
        }
        reply
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the batch of this call was dropped")))
    }

    /// Sends the stream's waiting calls, batch after batch, until none is left.
    async fn send_all(self: Arc<Self>, mut done: Done) {
        let stream = done.stream.clone();
        while let Some(batch) = self.next_batch(&stream) {
            let replies = self.send(&batch).await;
            match replies {
                Ok(replies) => {
                    for (waiting, reply) in batch.into_iter().zip(replies) {
                        let _ = waiting.answer.send(reply);
                    }
                }
                Err(e) => {
                    for waiting in batch {
                        let _ = waiting.answer.send(Err(e.clone().into()));
                    }
                }
            }
        }
        // next_batch marked the stream idle: a call from now on starts a new task.
        done.finished = true;
    }

    /// The next calls to send, or none (and the stream is idle again).
    fn next_batch(&self, stream: &str) -> Option<Vec<Waiting>> {
        let mut queues = self.queues.lock();
        let queue = queues.get_mut(stream)?;
        if queue.waiting.is_empty() {
            queues.remove(stream);
            return None;
        }
        let mut args = 0;
        let mut take = 0;
        for waiting in &queue.waiting {
            if take == MOST_CALLS || (take > 0 && args + waiting.call.args.len() > MOST_ARGS) {
                break;
            }
            args += waiting.call.args.len();
            take += 1;
        }
        Some(queue.waiting.drain(..take).collect())
    }

    async fn send(&self, batch: &[Waiting]) -> redis::RedisResult<Vec<anyhow::Result<Value>>> {
        let invocation = invocation(&self.script, batch.iter().map(|w| &w.call));
        let mut conn = self.db.conn();
        let replies: Vec<Value> = invocation.invoke_async(&mut conn).await?;
        if replies.len() != batch.len() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "the batch script answered for another number of calls",
                format!("{} replies to {} calls", replies.len(), batch.len()),
            )));
        }
        Ok(replies.into_iter().map(own_reply).collect())
    }
}

/// A batch of `calls` of `script` (one of the scripts above), as `batch.lua`
/// takes it: the number of calls, then each call's number of keys, number of
/// arguments and arguments; every call's keys in order.
pub fn invocation<'s, 'c>(
    script: &'s Script,
    calls: impl ExactSizeIterator<Item = &'c Call>,
) -> redis::ScriptInvocation<'s> {
    let mut invocation = script.prepare_invoke();
    invocation.arg(calls.len());
    for call in calls {
        for key in &call.keys {
            invocation.key(key);
        }
        invocation.arg(call.keys.len()).arg(call.args.len());
        for arg in &call.args {
            invocation.arg(arg);
        }
    }
    invocation
}

/// A call's reply, or the error it alone met (`{'!error', message}`).
fn own_reply(reply: Value) -> anyhow::Result<Value> {
    if let Value::Array(items) = &reply {
        if let [Value::BulkString(marker), message] = items.as_slice() {
            if marker == b"!error" {
                let message: String =
                    redis::from_redis_value_ref(message).unwrap_or_else(|_| "(no message)".into());
                anyhow::bail!("{message}");
            }
        }
    }
    Ok(reply)
}

/// Fails a stream's waiting calls when its sending task ends without finishing
/// (a panic, or the runtime shutting down), rather than leaving them waiting
/// for a batch that never comes.
struct Done {
    batcher: Arc<Batcher>,
    stream: String,
    finished: bool,
}

impl Drop for Done {
    fn drop(&mut self) {
        if !self.finished {
            // Dropping the waiting calls' answers tells each of them.
            self.batcher.queues.lock().remove(&self.stream);
        }
    }
}
