//! Redis connections: a few shared multiplexed connections for ordinary
//! commands (every command goes straight out, nothing is checked on the way),
//! dedicated connections for blocking reads (whose response timeout must outlast
//! their `BLOCK`), and one multiplexed connection of its own for heartbeats, which
//! ordinary traffic cannot hold up. Also the creation of consumer groups.
//!
//! A dropped connection reconnects on its next command (redis-rs's
//! `ConnectionManager`, one connection attempt each time). Nothing is checked on
//! the way of a busy connection: when one dies, the commands in flight on it, or
//! sent before its death is noticed, fail and are not sent again (they may have
//! run), and their callers retry as after any Redis error. A shared connection
//! that answered nothing for 200 ms gets one `PING` before its next command (the
//! commands that arrive meanwhile wait for that one), so a server restarted
//! while it was idle costs no failed command. A connection whose command timed
//! out (a server gone silent behind a dead route, a black-holed failover) is
//! replaced by a fresh one at once: a silent socket would otherwise time out
//! every command until the kernel gives up on it, many minutes later.
//!
//! Not a pool: deadpool-redis, which the design card names, sends `UNWATCH` and
//! `PING` on every checkout with no way to turn that off (deadpool-rs/deadpool
//! issue 307); that was 10 of 21 Redis commands per event (BENCHMARKS.md).
//!
//! How long one command can take when Redis is unreachable: at most about twice
//! `redis.command_timeout` (a check, then the command); a refused connection
//! fails at once.
//!
//! **TLS**: a `rediss://` `redis.url` is spoken over TLS (rustls), trusting
//! `redis.tls_ca_file` when set, the system's certificate store otherwise, and
//! presenting `redis.tls_cert_file` to a server that asks for a client
//! certificate. Not with Cluster or Sentinel: validation refuses it there.
//!
//! **Redis Cluster** (`redis.cluster_nodes`): the same handles over redis-rs's
//! cluster client, which learns the topology from any reachable node, sends
//! each command to the master of its key's slot and follows `MOVED`/`ASK` and
//! failovers. A pipeline whose commands fall in several slots is split into one
//! pipeline per slot, sent at once, and its replies put back in order (a
//! `MULTI` must stay in one slot). Every script's keys must share a slot; debug
//! builds (every test) check each call.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Value};

use crate::shared::config::Settings;
use crate::shared::keys::{slot_of, Keys};
use crate::shared::retry::RetryPolicy;

/// Handles to one Redis deployment, shared by every role in a process.
#[derive(Clone)]
pub struct Db {
    pub keys: Keys,
    backend: Backend,
    command_timeout: Duration,
    next: Arc<AtomicUsize>,
}

/// One Redis (or a primary that a failover replaces behind one address), or a Redis Cluster.
#[derive(Clone)]
enum Backend {
    Single {
        source: Source,
        /// The ordinary connections, handed out in turn.
        shared: Arc<[Arc<Slot>]>,
        /// Publishes' own, with `redis.wait_replicas` (a `WAIT` holds up its connection).
        publishing: Arc<[Arc<Slot>]>,
        /// Heartbeats' own connection.
        side: Arc<Slot>,
    },
    Cluster {
        /// Seed nodes, for the clients of blocking reads.
        nodes: Arc<[String]>,
        shared: Arc<[Arc<ClusterSlot>]>,
        publishing: Arc<[Arc<ClusterSlot>]>,
        side: Arc<ClusterSlot>,
    },
}

/// Where one cluster connection lives, so one whose command timed out can be
/// replaced: redis-rs retries a timed-out command on the same sockets without
/// reconnecting, so a node gone silent (a failover behind a dead route) would
/// time out every command sent to it until the kernel gives up on the socket.
struct ClusterSlot {
    client: ClusterClient,
    config: ClusterConfig,
    current: Mutex<(u64, ClusterConnection)>,
    /// When it was last replaced: a new cluster connection learns the whole
    /// topology again, so a slow cluster (rather than a silent node) must not
    /// make every timeout start that over.
    replaced: Mutex<Instant>,
    /// At most one replacement per this long.
    calm: Duration,
}

impl ClusterSlot {
    fn new(
        client: ClusterClient,
        config: ClusterConfig,
        first: ClusterConnection,
        calm: Duration,
    ) -> ClusterSlot {
        ClusterSlot {
            client,
            config,
            current: Mutex::new((0, first)),
            replaced: Mutex::new(Instant::now()),
            calm,
        }
    }

    fn conn(self: &Arc<ClusterSlot>) -> Conn {
        let (generation, conn) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Conn(Link::Cluster(Clustered {
            conn,
            replace: Some((generation, self.clone())),
        }))
    }

    /// Replaces the connection of `generation` by one that connects afresh
    /// (learning the topology again) on its first command.
    fn replace(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.0 != generation {
            return;
        }
        let mut replaced = self.replaced.lock().unwrap_or_else(|e| e.into_inner());
        if replaced.elapsed() < self.calm {
            return;
        }
        *replaced = Instant::now();
        let fresh = self
            .client
            .get_pending_async_connection_with_config(self.config.clone());
        tracing::warn!(
            "a Redis Cluster command timed out; opening new connections in case a node went silent"
        );
        *current = (generation + 1, fresh);
    }
}

/// A cluster connection as a command sees it.
#[derive(Clone)]
struct Clustered {
    conn: ClusterConnection,
    /// The slot to replace it in after a timeout; `None` for a blocking read's
    /// own connection, which its reader replaces after any failure.
    replace: Option<(u64, Arc<ClusterSlot>)>,
}

impl Clustered {
    fn observe<T>(&self, result: &redis::RedisResult<T>) {
        if let (Err(e), Some((generation, slot))) = (result, &self.replace) {
            if e.is_timeout() {
                slot.replace(*generation);
            }
        }
    }

    async fn command(&mut self, cmd: &Cmd) -> redis::RedisResult<Value> {
        let result = self.conn.req_packed_command(cmd).await;
        self.observe(&result);
        result
    }

    async fn commands(
        &mut self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        let result = cluster_pipeline(&mut self.conn, pipeline, offset, count).await;
        self.observe(&result);
        result
    }
}

/// A connection as a command sees it: cheap to clone, used by many tasks at once.
#[derive(Clone)]
pub struct Conn(Link);

#[derive(Clone)]
enum Link {
    /// One of the shared connections to a single Redis.
    Managed(Managed),
    /// A dedicated connection for blocking reads from a single Redis.
    Direct(MultiplexedConnection),
    /// Connections to every master of a cluster.
    Cluster(Clustered),
}

/// One of the shared connections to a single Redis.
#[derive(Clone)]
struct Managed {
    manager: ConnectionManager,
    generation: u64,
    slot: Arc<Slot>,
}

/// Where one multiplexed connection lives, so a silent one can be replaced.
struct Slot {
    source: Source,
    /// The primary's place ([`Primary`]'s count of moves) the connection was made for.
    made_for: AtomicU64,
    config: ConnectionManagerConfig,
    current: Mutex<(u64, ConnectionManager)>,
    /// Check the connection before a command when it has answered nothing for
    /// this long; `None` never checks.
    check_after_idle: Option<Duration>,
    /// When the connection last answered, or was last checked, in ms since `born`.
    fresh_ms: AtomicU64,
    /// One check at a time: the commands that arrive meanwhile wait for it.
    checking: tokio::sync::Mutex<()>,
    born: Instant,
}

/// A shared connection that answered nothing for this long gets a `PING` before
/// its next command: a server restarted meanwhile has closed it, and the command
/// would fail on the dead socket. Busy connections are never checked.
const CHECK_AFTER_IDLE: Duration = Duration::from_millis(200);

/// Where one Redis is: a fixed address, or the primary Redis Sentinel names.
#[derive(Clone)]
enum Source {
    /// Boxed: a client with TLS settings is several times the size of the other variant.
    Fixed(Box<redis::Client>),
    Sentinel(Arc<Primary>),
}

impl Source {
    /// The client to connect with now, and for Sentinel how many times the primary moved.
    fn client(&self) -> (u64, redis::Client) {
        match self {
            Source::Fixed(client) => (0, client.as_ref().clone()),
            Source::Sentinel(primary) => primary.client(),
        }
    }

    /// After an error a failover would explain: with Sentinel, ask where the primary is.
    fn suspect(&self) {
        if let Source::Sentinel(primary) = self {
            primary.suspect();
        }
    }
}

/// The primary of a Sentinel-watched Redis, shared by every connection of a
/// process. Asked at start, then again (in the background, one question at a
/// time) whenever a command fails as a failover would make it fail: refused,
/// dropped, timed out, or `READONLY` from a primary demoted to replica.
/// Connections made for an earlier primary are replaced before their next command.
struct Primary {
    sentinel: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    /// How many times the primary moved, and a client for it.
    current: Mutex<(u64, redis::Client)>,
    asking: std::sync::atomic::AtomicBool,
    /// When the sentinels last answered: a reader reconnecting within a
    /// moment of that uses their answer instead of asking again.
    answered: Mutex<Option<Instant>>,
}

impl Primary {
    async fn locate(settings: &Settings) -> anyhow::Result<Arc<Primary>> {
        let sentinel = &settings.redis.sentinel;
        let nodes: Vec<&str> = sentinel.nodes.iter().map(|n| n.expose()).collect();
        let mut data = redis::RedisConnectionInfo::default();
        if !sentinel.username.is_empty() {
            data = data.set_username(&sentinel.username);
        }
        if !sentinel.password.is_empty() {
            data = data.set_password(sentinel.password.expose());
        }
        let mut client = redis::sentinel::SentinelClient::build(
            nodes,
            sentinel.master.clone(),
            Some(
                redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(data),
            ),
            redis::sentinel::SentinelServerType::Master,
        )
        .context("redis.sentinel.nodes holds an address that is not a Redis URL")?;
        let found = tokio::time::timeout(settings.redis.command_timeout, client.async_get_client())
            .await
            .map_err(|_| anyhow::anyhow!("no sentinel answered within redis.command_timeout"))?
            .with_context(|| {
                format!(
                    "cannot reach the primary the sentinels (redis.sentinel.nodes) name for {:?}, or they name none (a password the primary needs goes in redis.sentinel.password)",
                    sentinel.master
                )
            })?;
        tracing::info!(primary = %found.get_connection_info().addr(), master = %sentinel.master, "Sentinel names the primary");
        Ok(Arc::new(Primary {
            sentinel: tokio::sync::Mutex::new(client),
            current: Mutex::new((0, found)),
            asking: Default::default(),
            answered: Mutex::new(Some(Instant::now())),
        }))
    }

    fn client(&self) -> (u64, redis::Client) {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn suspect(self: &Arc<Primary>) {
        if self.asking.swap(true, Ordering::AcqRel) {
            return;
        }
        let primary = self.clone();
        tokio::spawn(async move {
            if let Err(e) = primary.ask().await {
                tracing::warn!(error = %format!("{e:#}"), "cannot ask the sentinels where the primary is; will ask again");
            }
            // At most a few questions a second, however many commands fail.
            tokio::time::sleep(Duration::from_millis(200)).await;
            primary.asking.store(false, Ordering::Release);
        });
    }

    /// Asks unless the sentinels answered within `fresh` (the asks of many
    /// readers reconnecting at once are one question).
    async fn ask_unless_fresh(&self, fresh: Duration) -> anyhow::Result<()> {
        let recent = |answered: &Mutex<Option<Instant>>| {
            answered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|at| at.elapsed() < fresh)
        };
        if recent(&self.answered) {
            return Ok(());
        }
        let mut sentinel = self.sentinel.lock().await;
        // Another reader may have asked while this one waited for the lock.
        if recent(&self.answered) {
            return Ok(());
        }
        self.ask_with(&mut sentinel).await
    }

    async fn ask(&self) -> anyhow::Result<()> {
        let mut sentinel = self.sentinel.lock().await;
        self.ask_with(&mut sentinel).await
    }

    async fn ask_with(&self, sentinel: &mut redis::sentinel::SentinelClient) -> anyhow::Result<()> {
        let found = {
            tokio::time::timeout(Duration::from_secs(2), sentinel.async_get_client())
                .await
                .map_err(|_| anyhow::anyhow!("no sentinel answered within 2 s"))??
        };
        *self.answered.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let now = found.get_connection_info().addr().to_string();
        if now != current.1.get_connection_info().addr().to_string() {
            tracing::warn!(primary = %now, "Sentinel names a new primary; reconnecting to it");
            *current = (current.0 + 1, found);
        }
        Ok(())
    }
}

impl Slot {
    fn new(
        source: &Source,
        connect_timeout: Duration,
        response_timeout: Duration,
        check_after_idle: Option<Duration>,
    ) -> anyhow::Result<Slot> {
        // One connection attempt per reconnection, no pauses: how long a command
        // can wait is bounded by the timeouts alone.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(0);
        let (made_for, client) = source.client();
        let manager = ConnectionManager::new_lazy_with_config(client, config.clone())
            .context("cannot set up a Redis connection")?;
        Ok(Slot {
            source: source.clone(),
            made_for: AtomicU64::new(made_for),
            config,
            current: Mutex::new((0, manager)),
            check_after_idle,
            fresh_ms: AtomicU64::new(0),
            checking: tokio::sync::Mutex::new(()),
            born: Instant::now(),
        })
    }

    fn conn(self: &Arc<Slot>) -> Conn {
        let (generation, manager) = self.current();
        Conn(Link::Managed(Managed {
            manager,
            generation,
            slot: self.clone(),
        }))
    }

    /// The connection, replaced first when Sentinel named a new primary since it was made.
    fn current(&self) -> (u64, ConnectionManager) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Source::Sentinel(primary) = &self.source {
            let (moves, client) = primary.client();
            if moves != self.made_for.load(Ordering::Relaxed) {
                if let Ok(manager) =
                    ConnectionManager::new_lazy_with_config(client, self.config.clone())
                {
                    *current = (current.0 + 1, manager);
                    self.made_for.store(moves, Ordering::Relaxed);
                }
            }
        }
        current.clone()
    }

    /// Replaces the connection of `generation` after one of its commands timed
    /// out; commands already sent on it finish (or time out) on their own.
    fn replace(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.0 != generation {
            return; // another timeout on it did this already
        }
        let (made_for, client) = self.source.client();
        match ConnectionManager::new_lazy_with_config(client, self.config.clone()) {
            Ok(manager) => {
                self.made_for.store(made_for, Ordering::Relaxed);
                tracing::warn!("a Redis command timed out; opening a new connection in case this one went silent");
                *current = (generation + 1, manager);
            }
            Err(e) => tracing::warn!(error = %e, "cannot set up a replacement Redis connection"),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn mark_fresh(&self) {
        self.fresh_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn is_fresh(&self, idle: Duration) -> bool {
        let since = self
            .now_ms()
            .saturating_sub(self.fresh_ms.load(Ordering::Relaxed));
        u128::from(since) < idle.as_millis()
    }
}

impl Managed {
    /// Before a command on a connection idle for a while: one `PING`, so a dead
    /// connection is reconnected (the manager does, on the failed `PING`) before
    /// the command goes out. When the check shows Redis unreachable (refused, or
    /// no answer within `redis.command_timeout`), its error is the command's, and
    /// the command is not sent.
    async fn check_if_idle(&mut self) -> redis::RedisResult<()> {
        let Some(idle) = self.slot.check_after_idle else {
            return Ok(());
        };
        if self.slot.is_fresh(idle) {
            return Ok(());
        }
        let slot = self.slot.clone();
        let _one_check = slot.checking.lock().await;
        (self.generation, self.manager) = self.slot.current();
        if self.slot.is_fresh(idle) {
            return Ok(()); // checked by a command that came first
        }
        let mut checked = self.ping().await;
        if matches!(&checked, Err(e) if e.is_io_error() && !e.is_timeout()) {
            // A dead socket, or a reconnection that failed while Redis was away:
            // the manager has begun a new one; the second `PING` waits for it.
            checked = self.ping().await;
        }
        // Checked, well or not: the commands that waited go out without another check.
        self.slot.mark_fresh();
        checked
    }

    async fn ping(&mut self) -> redis::RedisResult<()> {
        let result = self.manager.send_packed_command(&redis::cmd("PING")).await;
        self.observe(&result);
        (self.generation, self.manager) = self.slot.current();
        result.map(drop)
    }

    /// After a command: an answer (even an error reply) shows the connection
    /// alive; a timeout replaces it. With Sentinel, a failure a failover would
    /// explain sends a question to the sentinels.
    fn observe<T>(&self, result: &redis::RedisResult<T>) {
        if let Err(e) = result {
            if unreachable(e) {
                self.slot.source.suspect();
            }
        }
        match result {
            Err(e) if e.is_timeout() => self.slot.replace(self.generation),
            Err(e) if e.is_io_error() => {}
            _ => self.slot.mark_fresh(),
        }
    }
}

impl Managed {
    async fn command(&mut self, cmd: &Cmd) -> redis::RedisResult<Value> {
        self.check_if_idle().await?;
        let result = self.manager.send_packed_command(cmd).await;
        self.observe(&result);
        result
    }

    async fn commands(
        &mut self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        self.check_if_idle().await?;
        let result = self
            .manager
            .send_packed_commands(pipeline, offset, count)
            .await;
        self.observe(&result);
        // A pipeline's error replies come back as values: one that a failover
        // explains (READONLY from a demoted primary) must reach Sentinel too.
        if let Ok(values) = &result {
            let failover = values.iter().any(|v| {
                matches!(v, Value::ServerError(e) if matches!(
                    e.kind(),
                    Some(redis::ServerErrorKind::ReadOnly | redis::ServerErrorKind::MasterDown)
                ))
            });
            if failover {
                self.slot.source.suspect();
            }
        }
        result
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        #[cfg(debug_assertions)]
        if let Err(e) = check_script_slot(cmd) {
            return Box::pin(async move { Err(e) });
        }
        match &mut self.0 {
            Link::Managed(managed) => Box::pin(managed.command(cmd)),
            Link::Direct(conn) => conn.req_packed_command(cmd),
            Link::Cluster(clustered) => Box::pin(clustered.command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        #[cfg(debug_assertions)]
        if let Some(e) = pipeline
            .cmd_iter()
            .find_map(|cmd| check_script_slot(cmd).err())
        {
            return Box::pin(async move { Err(e) });
        }
        match &mut self.0 {
            Link::Managed(managed) => Box::pin(managed.commands(pipeline, offset, count)),
            Link::Direct(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Cluster(clustered) => Box::pin(clustered.commands(pipeline, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Link::Managed(managed) => managed.manager.get_db(),
            Link::Direct(conn) => conn.get_db(),
            Link::Cluster(clustered) => clustered.conn.get_db(),
        }
    }
}

/// A pipeline on a cluster: as one when its commands share a slot (or a
/// `MULTI`, which must), otherwise one pipeline per slot, all sent at once,
/// the replies put back in the order of the commands.
async fn cluster_pipeline(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> redis::RedisResult<Vec<Value>> {
    let mut groups: Vec<(Option<u16>, Vec<usize>)> = Vec::new();
    let mut previous = None;
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        // A command without a key (a `WAIT` after writes) goes where the one before it went.
        let slot = keys_of(cmd).first().map(|key| slot_of(key)).or(previous);
        previous = slot;
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, members)) => members.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    if pipeline.is_transaction() || groups.len() <= 1 {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let commands: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let sent = groups.iter().map(|(_, members)| {
        let mut part = redis::pipe();
        for &i in members {
            part.add_command(commands[i].clone());
        }
        let mut conn = conn.clone();
        async move { conn.req_packed_commands(&part, 0, part.len()).await }
    });
    let answers = futures::future::try_join_all(sent).await?;
    let mut replies = vec![Value::Nil; commands.len()];
    for ((_, members), values) in groups.iter().zip(answers) {
        if values.len() != members.len() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "a pipeline split by slot got a reply of the wrong length",
            )));
        }
        for (&i, value) in members.iter().zip(values) {
            replies[i] = value;
        }
    }
    Ok(replies)
}

/// A script's or function's keys must share one slot (Redis Cluster refuses
/// anything else): checked on every call in debug builds, so every test checks
/// every script it runs, on one Redis as on a cluster.
#[cfg(debug_assertions)]
fn check_script_slot(cmd: &Cmd) -> redis::RedisResult<()> {
    let name = cmd.args_iter().next().map(arg_bytes).unwrap_or_default();
    let script = [&b"EVALSHA"[..], b"EVAL", b"FCALL", b"FCALL_RO"];
    if !script.iter().any(|s| s.eq_ignore_ascii_case(name)) {
        return Ok(());
    }
    let keys = keys_of(cmd);
    if keys
        .windows(2)
        .any(|pair| slot_of(pair[0]) != slot_of(pair[1]))
    {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "a script was called with keys in different slots (Redis Cluster would refuse it)",
        )));
    }
    Ok(())
}

fn arg_bytes(arg: redis::Arg<&[u8]>) -> &[u8] {
    match arg {
        redis::Arg::Simple(bytes) => bytes,
        _ => &[],
    }
}

/// The keys of the commands herald sends, as a cluster routes them: a
/// script's declared keys, the streams of `XREADGROUP`, the key of `XGROUP` and
/// `XINFO`, none for server commands, otherwise the first argument.
fn keys_of(cmd: &Cmd) -> Vec<&[u8]> {
    let args: Vec<&[u8]> = cmd.args_iter().map(arg_bytes).collect();
    let Some(name) = args.first().map(|n| n.to_ascii_uppercase()) else {
        return Vec::new();
    };
    match &name[..] {
        b"EVALSHA" | b"EVAL" | b"FCALL" | b"FCALL_RO" | b"EVALSHA_RO" | b"EVAL_RO" => {
            let count = args
                .get(2)
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
            args.iter().skip(3).take(count).copied().collect()
        }
        b"XREADGROUP" | b"XREAD" => {
            let streams = args.iter().position(|a| a.eq_ignore_ascii_case(b"STREAMS"));
            match streams {
                // Half of what follows are streams, half their ids.
                Some(i) => {
                    let rest = &args[i + 1..];
                    rest[..rest.len() / 2].to_vec()
                }
                None => Vec::new(),
            }
        }
        b"XGROUP" | b"XINFO" => args.get(2).copied().into_iter().collect(),
        b"PING" | b"CONFIG" | b"FUNCTION" | b"SCRIPT" | b"INFO" | b"TIME" | b"CLUSTER"
        | b"CLIENT" | b"WAIT" | b"DBSIZE" | b"MULTI" | b"EXEC" | b"COMMAND" => Vec::new(),
        _ => args.get(1).copied().into_iter().collect(),
    }
}

impl Db {
    /// Creates a consumer group on every event stream where it is missing, starting
    /// at `start`: a stream id (`0` for everything), or `$` for new entries only.
    pub async fn ensure_group(&self, group: &str, start: &str) -> anyhow::Result<()> {
        let mut conn = self.conn();
        for stream in self.keys.streams() {
            let created: redis::RedisResult<String> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(group)
                .arg(start)
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Ok(_) => tracing::info!(stream, group, start, "created consumer group"),
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Heartbeats' connection of its own: however many commands queue on the
    /// shared connections under load, a heartbeat is not behind them, so an
    /// entry's lease does not lapse because the worker is busy.
    pub fn side_conn(&self) -> Conn {
        match &self.backend {
            Backend::Single { side, .. } => side.conn(),
            Backend::Cluster { side, .. } => side.conn(),
        }
    }

    /// Connects to `redis.cluster_nodes` when set, otherwise to `redis.url`
    /// (which must be set by now), and checks the server answers.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Db> {
        let timeout = settings.redis.command_timeout;
        // A heartbeat's answer is due within its interval (after that it is
        // abandoned, see `deliver::claim`), so its connection times out sooner
        // and a silent one is replaced before the next heartbeat.
        let heartbeat = RetryPolicy::from_settings(&settings.retry).heartbeat();
        let side_timeout = (heartbeat * 3 / 4).min(timeout);
        let cluster = !settings.redis.cluster_nodes.is_empty();
        let backend = if cluster {
            Self::cluster(settings, side_timeout).await?
        } else {
            Self::single(settings, side_timeout).await?
        };
        let db = Db {
            keys: Keys::new(
                &settings.redis.key_prefix,
                settings.redis.partitions,
                cluster,
            ),
            backend,
            command_timeout: timeout,
            next: Default::default(),
        };
        let place = match cluster {
            true => format!(
                "the Redis Cluster of {}",
                settings
                    .redis
                    .cluster_nodes
                    .iter()
                    .map(|n| redacted_url(n.expose()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            false if settings.redis.sentinel.is_set() => format!(
                "the primary the sentinels name {:?}",
                settings.redis.sentinel.master
            ),
            false => redacted_url(settings.redis.url.expose()),
        };
        let tls = !cluster
            && !settings.redis.sentinel.is_set()
            && url::Url::parse(settings.redis.url.expose())
                .is_ok_and(|u| matches!(u.scheme(), "rediss" | "valkeys"));
        // A refused handshake names only what TLS saw: say which settings decide it.
        let hint = match tls {
            true => " (over TLS: redis.tls_ca_file must hold the CA that signed the server's certificate unless the system trusts it, and a server with tls-auth-clients yes needs redis.tls_cert_file and redis.tls_key_file)",
            false => "",
        };
        db.ping()
            .await
            .with_context(|| format!("cannot reach Redis at {place}{hint}"))?;
        let replicated = cluster || settings.redis.sentinel.is_set();
        if replicated && settings.redis.wait_replicas == 0 {
            tracing::warn!("redis.wait_replicas is 0: a failover can lose events a primary accepted but had not yet passed to its replica; set it to 1 (README, Guarantees)");
        }
        Ok(db)
    }

    async fn single(settings: &Settings, side_timeout: Duration) -> anyhow::Result<Backend> {
        let source = if settings.redis.sentinel.is_set() {
            Source::Sentinel(Primary::locate(settings).await?)
        } else {
            let url = settings.redis.url.expose();
            anyhow::ensure!(
                !url.is_empty(),
                "redis.url is empty: set it (or redis.cluster_nodes, or redis.sentinel), or run `herald up` to start an embedded redis-server"
            );
            Source::Fixed(Box::new(client(settings)?))
        };
        let timeout = settings.redis.command_timeout;
        let shared = (0..settings.redis.connections)
            .map(|_| Slot::new(&source, timeout, timeout, Some(CHECK_AFTER_IDLE)).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let publishing = (0..publishing_connections(settings))
            .map(|_| Slot::new(&source, timeout, timeout, Some(CHECK_AFTER_IDLE)).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // No idle check: a heartbeat that fails on a dead socket reconnects it for the next.
        let side = Slot::new(&source, timeout, side_timeout, None)?;
        Ok(Backend::Single {
            source,
            shared: shared.into(),
            publishing: publishing.into(),
            side: Arc::new(side),
        })
    }

    /// The cluster client: it learns the topology from the first seed that
    /// answers, and follows `MOVED`/`ASK` and failovers by itself. A command
    /// retries a few times within `redis.command_timeout` (a redirection, a
    /// master being replaced); after that its caller retries as after any
    /// Redis error.
    async fn cluster(settings: &Settings, side_timeout: Duration) -> anyhow::Result<Backend> {
        let nodes: Arc<[String]> = settings
            .redis
            .cluster_nodes
            .iter()
            .map(|n| n.expose().to_string())
            .collect();
        let timeout = settings.redis.command_timeout;
        let slot = |response: Duration| {
            let nodes = nodes.clone();
            async move {
                let client = cluster_client(&nodes, timeout, response)?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(response);
                let first = client
                    .get_async_connection_with_config(config.clone())
                    .await
                    .context("cannot connect to the Redis Cluster (redis.cluster_nodes)")?;
                // A silent node is given up on after a few commands' worth of time.
                let calm = (timeout * 2).max(Duration::from_secs(5));
                anyhow::Ok(Arc::new(ClusterSlot::new(client, config, first, calm)))
            }
        };
        let mut shared = Vec::new();
        for _ in 0..settings.redis.connections {
            shared.push(slot(timeout).await?);
        }
        let mut publishing = Vec::new();
        for _ in 0..publishing_connections(settings) {
            publishing.push(slot(timeout).await?);
        }
        let side = slot(side_timeout).await?;
        Ok(Backend::Cluster {
            nodes: nodes.clone(),
            shared: shared.into(),
            publishing: publishing.into(),
            side,
        })
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    /// A shared connection for ordinary (non-blocking) commands; the shared
    /// connections are handed out in turn.
    pub fn conn(&self) -> Conn {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        match &self.backend {
            Backend::Single { shared, .. } => shared[turn % shared.len()].conn(),
            Backend::Cluster { shared, .. } => shared[turn % shared.len()].conn(),
        }
    }

    /// A connection for publishing: with `redis.wait_replicas`, one of the
    /// publishes' own, since a `WAIT` holds up every command behind it on its
    /// connection; otherwise a shared one.
    pub fn publish_conn(&self) -> Conn {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        match &self.backend {
            Backend::Single { publishing, .. } if !publishing.is_empty() => {
                publishing[turn % publishing.len()].conn()
            }
            Backend::Cluster { publishing, .. } if !publishing.is_empty() => {
                publishing[turn % publishing.len()].conn()
            }
            _ => self.conn(),
        }
    }

    /// A connection of its own for `XREADGROUP ... BLOCK`: its response timeout
    /// exceeds the block, so a quiet stream is never mistaken for a dead server.
    pub async fn blocking_conn(&self, block: Duration) -> anyhow::Result<Conn> {
        let timeout = self.command_timeout;
        let link = match &self.backend {
            Backend::Single { source, .. } => {
                // A reader opens one at start and after a failed read: with
                // Sentinel, ask where the primary is first.
                if let Source::Sentinel(primary) = source {
                    if let Err(e) = primary.ask_unless_fresh(Duration::from_secs(1)).await {
                        tracing::warn!(error = %format!("{e:#}"), "cannot ask the sentinels where the primary is");
                    }
                }
                let (_, client) = source.client();
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(block + timeout));
                Link::Direct(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .context("cannot open a dedicated Redis connection for blocking reads")?,
                )
            }
            Backend::Cluster { nodes, .. } => {
                // A client of its own: the cluster client's overall limit on a
                // command is set when the client is built, and must outlast the block.
                let conn = cluster_client(nodes, timeout, block + timeout)?
                    .get_async_connection()
                    .await
                    .context(
                        "cannot open dedicated Redis Cluster connections for blocking reads",
                    )?;
                Link::Cluster(Clustered {
                    conn,
                    replace: None,
                })
            }
        };
        Ok(Conn(link))
    }

    /// Reads Redis's persistence and eviction settings and says what they risk.
    /// With `require`, a setting that can lose accepted events refuses the start.
    pub async fn check_durability(&self, require: bool) -> anyhow::Result<Durability> {
        let read = match &self.backend {
            Backend::Single { .. } => read_durability(&mut self.conn(), None).await,
            Backend::Cluster { shared, .. } => cluster_durability(&shared[0].conn()).await,
        };
        let durability = match read {
            Ok(durability) => durability,
            Err(e) => {
                let message = format!(
                    "cannot read Redis's persistence settings (CONFIG GET: {e}); make sure it runs with appendonly yes and maxmemory-policy noeviction"
                );
                anyhow::ensure!(!require, "{message} (redis.require_durable = true)");
                tracing::warn!("{message}");
                return Ok(Durability::Unknown);
            }
        };
        if let Durability::Risky(problems) = &durability {
            let message = problems.join("; ");
            anyhow::ensure!(
                !require,
                "Redis may lose accepted events: {message}; fix its configuration or set redis.require_durable = false"
            );
            tracing::warn!(problems = %message, "REDIS MAY LOSE ACCEPTED EVENTS: fix its configuration (see README, Guarantees)");
        }
        Ok(durability)
    }

    /// Checks every shared connection answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Single { shared, .. } => {
                for slot in shared.iter() {
                    let _: String = redis::cmd("PING").query_async(&mut slot.conn()).await?;
                }
            }
            Backend::Cluster { shared, .. } => {
                for slot in shared.iter() {
                    // Routed to every master: each must answer.
                    let _: String = redis::cmd("PING").query_async(&mut slot.conn()).await?;
                }
            }
        }
        Ok(())
    }
}

/// `appendonly`, `appendfsync` and `maxmemory-policy` of one Redis; on a
/// cluster, of the master at `node` (`host`, `port`).
async fn read_durability(
    conn: &mut Conn,
    node: Option<(&str, u16)>,
) -> redis::RedisResult<Durability> {
    let mut pipe = redis::pipe();
    for name in ["appendonly", "appendfsync", "maxmemory-policy"] {
        pipe.cmd("CONFIG").arg("GET").arg(name);
    }
    let values = match (node, &mut conn.0) {
        (Some((host, port)), Link::Cluster(clustered)) => {
            let route = redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                host: host.to_string(),
                port,
            };
            clustered
                .conn
                .route_pipeline(pipe.clone(), 0, 3, route)
                .await?
        }
        _ => conn.req_packed_commands(&pipe, 0, 3).await?,
    };
    let values: Vec<Vec<String>> = values
        .into_iter()
        .map(|v| redis::from_redis_value(v).map_err(redis::RedisError::from))
        .collect::<redis::RedisResult<_>>()?;
    let second = |i: usize| values.get(i).and_then(|v| v.get(1)).map(String::as_str);
    Ok(Durability::from_config(second(0), second(1), second(2)))
}

/// Every master's durability (`CLUSTER SLOTS` says which nodes are masters),
/// the problems of each named by its address: one master without AOF loses
/// the partitions it holds.
async fn cluster_durability(conn: &Conn) -> redis::RedisResult<Durability> {
    let slots: Vec<Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn.clone())
        .await?;
    let mut masters: Vec<(String, u16)> = Vec::new();
    for range in slots {
        let Value::Array(parts) = range else { continue };
        let Some(Value::Array(master)) = parts.get(2) else {
            continue;
        };
        let host = master
            .first()
            .and_then(|h| redis::from_redis_value::<String>(h.clone()).ok());
        let port = master
            .get(1)
            .and_then(|p| redis::from_redis_value::<u16>(p.clone()).ok());
        // A master without a usable address ('', '?', NULL) is one the
        // cluster client does not know either: said, not guessed.
        if let (Some(host), Some(port)) = (host, port) {
            if !host.is_empty() && host != "?" && !masters.contains(&(host.clone(), port)) {
                masters.push((host, port));
            }
        }
    }
    let mut problems = Vec::new();
    for (host, port) in &masters {
        match read_durability(&mut conn.clone(), Some((host, *port))).await {
            Ok(Durability::Risky(found)) => problems.extend(
                found
                    .into_iter()
                    .map(|p| format!("master {host}:{port}: {p}")),
            ),
            Ok(_) => {}
            // One master that cannot be asked (failing over) neither hides the
            // others nor stops a start: said, and the others judged.
            Err(e) => {
                tracing::warn!(master = %format!("{host}:{port}"), error = %e, "cannot read a master's persistence settings")
            }
        }
    }
    Ok(match problems.is_empty() {
        true => Durability::Durable,
        false => Durability::Risky(problems),
    })
}

/// The client for `redis.url`: with `redis.tls_ca_file` (and a client
/// certificate) when set, so a `rediss://` server signed by a private CA is
/// trusted; otherwise a `rediss://` URL trusts the system's certificate store.
fn client(settings: &Settings) -> anyhow::Result<redis::Client> {
    let redis = &settings.redis;
    let url = redis.url.expose();
    if !redis.has_tls_files() {
        return redis::Client::open(url).context("redis.url is not a valid Redis URL");
    }
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {key} {}", path.display()))
    };
    let root_cert = match redis.tls_ca_file.as_os_str().is_empty() {
        true => None,
        false => Some(read("redis.tls_ca_file", &redis.tls_ca_file)?),
    };
    let client_tls = match redis.tls_cert_file.as_os_str().is_empty() {
        true => None,
        false => Some(redis::ClientTlsConfig {
            client_cert: read("redis.tls_cert_file", &redis.tls_cert_file)?,
            client_key: read("redis.tls_key_file", &redis.tls_key_file)?,
        }),
    };
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .context("cannot set up TLS for redis.url with redis.tls_ca_file, redis.tls_cert_file and redis.tls_key_file")
}

/// Publishes get connections of their own only when they `WAIT`.
fn publishing_connections(settings: &Settings) -> usize {
    match settings.redis.wait_replicas {
        0 => 0,
        _ => settings.redis.connections,
    }
}

/// A cluster client whose commands (retries and redirections included) end
/// within `response`. Its retries follow `MOVED`/`ASK` and wait out a
/// failover; a command whose connection dropped after it was sent may be sent
/// again by them (README, "Redis Cluster").
fn cluster_client(
    nodes: &[String],
    connect: Duration,
    response: Duration,
) -> anyhow::Result<ClusterClient> {
    ClusterClient::builder(nodes.iter().map(String::as_str))
        .connection_timeout(connect)
        .response_timeout(response)
        .retries(6)
        .min_retry_wait(50)
        .max_retry_wait(1_000)
        .build()
        .context("redis.cluster_nodes holds an address that is not a Redis URL")
}

/// A Lua script compiled once per process (it is sent as EVALSHA after the first use).
pub fn script(
    cell: &'static std::sync::OnceLock<redis::Script>,
    source: &'static str,
) -> &'static redis::Script {
    cell.get_or_init(|| redis::Script::new(source))
}

/// What Redis's configuration means for accepted events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// AOF on, fsync every second or always, no eviction.
    Durable,
    /// Something can lose data; each entry says what.
    Risky(Vec<String>),
    /// `CONFIG GET` was refused (managed Redis services often do).
    Unknown,
}

impl Durability {
    pub fn from_config(
        appendonly: Option<&str>,
        appendfsync: Option<&str>,
        policy: Option<&str>,
    ) -> Durability {
        let mut problems = Vec::new();
        if appendonly != Some("yes") {
            problems.push(
                "appendonly is not yes: a Redis crash loses everything since the last RDB snapshot"
                    .to_string(),
            );
        } else if appendfsync == Some("no") {
            problems
                .push("appendfsync is no: the OS decides when writes reach the disk".to_string());
        }
        if policy != Some("noeviction") {
            problems.push(format!(
                "maxmemory-policy is {}: Redis may evict streams when memory is full (use noeviction)",
                policy.unwrap_or("unknown")
            ));
        }
        if problems.is_empty() {
            Durability::Durable
        } else {
            Durability::Risky(problems)
        }
    }
}

/// A Redis URL with any password replaced, for logs and messages.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("redacted"));
            }
            // `redis+unix:///path?pass=…` carries it in the query.
            if parsed.query_pairs().any(|(k, _)| k == "pass") {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| match k.as_ref() {
                        "pass" => (k.into_owned(), "redacted".to_string()),
                        _ => (k.into_owned(), v.into_owned()),
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Err(_) => "(unparsable url)".into(),
    }
}

/// Whether an error says Redis cannot be reached right now (or is failing
/// over, or loading its data), rather than refusing what was asked (out of
/// memory, a script error): only the first is worth waiting out.
pub fn unreachable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading
                    | redis::ServerErrorKind::TryAgain
                    | redis::ServerErrorKind::ClusterDown
                    | redis::ServerErrorKind::MasterDown
                    | redis::ServerErrorKind::ReadOnly
            )
        )
}

#[cfg(test)]
mod tests {
    use super::Durability;

    #[test]
    fn only_aof_without_eviction_is_durable() {
        assert_eq!(
            Durability::from_config(Some("yes"), Some("everysec"), Some("noeviction")),
            Durability::Durable
        );
        assert_eq!(
            Durability::from_config(Some("yes"), Some("always"), Some("noeviction")),
            Durability::Durable
        );
        for (aof, fsync, policy) in [
            ("no", "everysec", "noeviction"),
            ("yes", "no", "noeviction"),
            ("yes", "everysec", "allkeys-lru"),
        ] {
            assert!(matches!(
                Durability::from_config(Some(aof), Some(fsync), Some(policy)),
                Durability::Risky(_)
            ));
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redacted_url("redis://:s3cret@db:6379/0"),
            "redis://:redacted@db:6379/0"
        );
        assert_eq!(
            super::redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            super::redacted_url("redis+unix:///run/redis.sock?db=2&pass=hunter2"),
            "redis+unix:///run/redis.sock?db=2&pass=redacted"
        );
    }
}
