//! The `herald` binary: parse arguments, set up logging, load settings, and
//! call into the library. Nothing here is worth testing on its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use herald::config::{Overrides, Settings, Source};
use herald::telemetry::{self, LogFormat};

/// herald: Redis Streams in, Web Push out, nothing lost on the way.
#[derive(Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    /// Config file (default: ./config.toml when it exists).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    log_format: LogFormat,
    #[command(flatten)]
    overrides: OverrideArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags that override config.toml and the environment.
#[derive(Args)]
struct OverrideArgs {
    /// Redis URL (overrides redis.url).
    #[arg(long, global = true, value_name = "URL")]
    redis_url: Option<String>,
    /// API listen address (overrides api.listen).
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Data directory (overrides data_dir).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Accept http:// and loopback endpoints, as the sink uses (overrides push.allow_insecure_endpoints).
    #[arg(long, global = true)]
    allow_insecure_endpoints: bool,
    /// Consumer name (overrides worker.consumer).
    #[arg(long, global = true, value_name = "NAME")]
    consumer: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process; starts its own redis-server when redis.url is empty.
    Up,
    /// The HTTP ingest API.
    Api,
    /// A consumer in the group: read, route, push, ack.
    Worker,
    /// Retries pending entries with backoff; dead-letters what keeps failing.
    Reclaimer,
    /// Inspect and handle dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// A local push service that verifies and decrypts like a browser.
    Sink(SinkArgs),
    /// Streams, groups, consumers, pending, lag, dead letters, spool depth.
    Stats {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Refresh every this many seconds until Ctrl-C.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
        /// Only this consumer group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Publish events from the shell, straight into the stream.
    Publish(PublishArgs),
    /// Write every event as a JSON line, from a consumer group of its own (audit.group).
    Audit {
        /// The audit's consumer group (overrides audit.group).
        #[arg(long)]
        group: Option<String>,
        /// Append to this file instead of stdout (overrides audit.out; `-` is stdout).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Process history still in the streams again.
    Replay {
        /// First entry: a stream id (1700000000000-0), an RFC 3339 time, or a duration ago (2h).
        #[arg(long, value_name = "TIME|ID")]
        from: String,
        /// Last entry (inclusive), same forms; default: the newest entry when the replay starts.
        #[arg(long, value_name = "TIME|ID")]
        to: Option<String>,
        /// Only events whose topic matches this pattern (`*` one word, `#` any words).
        #[arg(long, value_name = "PATTERN")]
        topic: Option<String>,
        /// Push again to devices that received an event already.
        #[arg(long)]
        force: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// VAPID keys.
    Vapid {
        #[command(subcommand)]
        command: VapidCommand,
    },
    /// Check or show the effective configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Args)]
struct SinkArgs {
    /// Address to listen on (`sink_listen`, so it does not clash with the API's --listen).
    #[arg(long = "sink-listen", default_value = "127.0.0.1:8090")]
    sink_listen: SocketAddr,
    /// Skip VAPID checks and decryption (for benchmarks).
    #[arg(long)]
    fast: bool,
    /// Append arrivals as JSON lines to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Register this many new subscriptions with herald's API at start.
    #[arg(long, value_name = "N", default_value_t = 0)]
    register: usize,
    /// The user the registered subscriptions belong to.
    #[arg(long, default_value = "u-42")]
    user: String,
    /// herald's API, for --register.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Bearer token for herald's API.
    #[arg(long, env = "HERALD_API_TOKEN")]
    token: Option<String>,
    /// Answer the next pushes (to any subscription) with these statuses first, e.g. `--fail 503 --fail 429:2`
    /// (status, then optionally `:` and a Retry-After value).
    #[arg(long, value_name = "STATUS[:RETRY_AFTER]")]
    fail: Vec<String>,
}

#[derive(Args)]
struct PublishArgs {
    #[arg(long, default_value = "herald.test")]
    topic: String,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    key: Option<String>,
    #[arg(long, default_value = "Hello from herald")]
    title: String,
    #[arg(long)]
    body: Option<String>,
    /// How many events (each gets its own id).
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Events per second; 0 means as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Events sent to Redis in one pipeline.
    #[arg(long, default_value_t = 100)]
    batch: u64,
}

/// Which dead letters: any combination; all must match.
#[derive(Args, Clone, Default)]
struct DlqFilter {
    /// Only this reason (e.g. max_deliveries, push_bad_request, undecodable).
    #[arg(long)]
    reason: Option<String>,
    /// Only events of this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only events for this user.
    #[arg(long)]
    user: Option<String>,
    /// Only dead since this time (RFC 3339, or a duration ago such as 2h).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only dead before this time (RFC 3339, or a duration ago such as 30m).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

impl DlqFilter {
    fn build(
        &self,
        older_than: Option<&str>,
    ) -> anyhow::Result<(herald::dead_letter::Filter, bool)> {
        use herald::dead_letter::cli::parse_when;
        let mut until = self.until.as_deref().map(parse_when).transpose()?;
        if let Some(age) = older_than {
            let cut = parse_when(age)?;
            until = Some(until.map_or(cut, |u| u.min(cut)));
        }
        let filter = herald::dead_letter::Filter {
            reason: self.reason.clone(),
            topic: self.topic.clone(),
            user: self.user.clone(),
            since: self.since.as_deref().map(parse_when).transpose()?,
            until,
        };
        let narrowed = filter.reason.is_some()
            || filter.topic.is_some()
            || filter.user.is_some()
            || filter.since.is_some()
            || filter.until.is_some();
        Ok((filter, narrowed))
    }
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: DlqFilter,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Every field of one dead letter.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back into their stream (event id kept) for another try.
    Replay {
        /// Dead letter ids; or use filters, or --all.
        ids: Vec<String>,
        #[command(flatten)]
        filter: DlqFilter,
        #[arg(long)]
        all: bool,
        /// At most this many replays per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        #[arg(long)]
        json: bool,
    },
    /// Delete dead letters for good.
    Purge {
        /// Dead letter ids; or use filters, --older-than, or --all.
        ids: Vec<String>,
        #[command(flatten)]
        filter: DlqFilter,
        /// Only those dead longer than this (e.g. 7days).
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
        #[arg(long)]
        all: bool,
        /// Really delete (without it, only says what would be deleted).
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum VapidCommand {
    /// Create a new VAPID key pair and print the public key.
    Generate {
        /// Where to write the private key (default: push.vapid_private_key_file or <data_dir>/vapid_private_key).
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration; exit 1 with the problem when it is not valid.
    Check,
    /// Print the effective configuration as TOML, secrets redacted.
    Print,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    telemetry::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let source = Source::discover(cli.config.as_deref())?;
    let o = &cli.overrides;
    let overrides = Overrides {
        redis_url: o.redis_url.clone(),
        api_listen: o.listen,
        data_dir: o.data_dir.clone(),
        allow_insecure_endpoints: o.allow_insecure_endpoints.then_some(true),
        consumer: o.consumer.clone(),
    };
    let settings = Settings::load(&source, &overrides)?;
    let shutdown = CancellationToken::new();
    match cli.command {
        Command::Up => {
            herald::shutdown::on_signals(shutdown.clone())?;
            herald::up::up(settings, shutdown).await
        }
        Command::Api => {
            herald::shutdown::on_signals(shutdown.clone())?;
            herald::up::api(settings, shutdown).await
        }
        Command::Worker => {
            herald::shutdown::on_signals(shutdown.clone())?;
            herald::up::worker(settings, shutdown).await
        }
        Command::Reclaimer => {
            herald::shutdown::on_signals(shutdown.clone())?;
            herald::up::reclaimer(settings, shutdown).await
        }
        Command::Dlq { command } => dlq(settings, command).await,
        Command::Sink(args) => {
            herald::shutdown::on_signals(shutdown.clone())?;
            run_sink(args, shutdown).await
        }
        Command::Publish(args) => publish(settings, args).await,
        Command::Stats { json, watch, group } => stats(settings, json, watch, group).await,
        Command::Audit { group, out } => {
            herald::shutdown::on_signals(shutdown.clone())?;
            herald::up::audit(settings, group, out, shutdown).await
        }
        Command::Replay {
            from,
            to,
            topic,
            force,
            json,
        } => replay(settings, from, to, topic, force, json).await,
        Command::Vapid {
            command: VapidCommand::Generate { out },
        } => {
            let path = out.unwrap_or_else(|| settings.vapid_key_path());
            let (key, private) = herald::push::vapid::VapidKey::generate();
            herald::push::vapid::write_private(&path, &private)?;
            println!("wrote the private key to {} (mode 0600)", path.display());
            println!("public key (applicationServerKey): {}", key.public_key);
            Ok(())
        }
        Command::Config { command } => {
            match command {
                ConfigCommand::Check => println!(
                    "configuration is valid ({})",
                    source
                        .file
                        .as_ref()
                        .map(|f| format!("{} + environment", f.display()))
                        .unwrap_or_else(|| "defaults + environment".into())
                ),
                ConfigCommand::Print => print!("{}", settings.to_redacted_toml()),
            }
            Ok(())
        }
    }
}

async fn dlq(settings: Settings, command: DlqCommand) -> anyhow::Result<()> {
    use herald::dead_letter::{cli, DeadLetters};
    let db = herald::db::Db::connect(&settings).await?;
    let horizon = herald::retry::RetryPolicy::from_settings(&settings.retry).horizon();
    let dl = DeadLetters::new(db, &settings.worker.group, Default::default(), horizon);
    match command {
        DlqCommand::List {
            filter,
            limit,
            json,
        } => {
            let (filter, _) = filter.build(None)?;
            let entries = dl.list(&filter, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", cli::table(&entries));
            }
        }
        DlqCommand::Show { id, json } => {
            let entry = dl.show(&id).await?.ok_or_else(|| {
                anyhow::anyhow!("no dead letter has id {id} (see `herald dlq list`)")
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entry)?);
            } else {
                print!("{}", cli::details(&entry));
            }
        }
        DlqCommand::Replay {
            ids,
            filter,
            all,
            rate,
            json,
        } => {
            let (filter, narrowed) = filter.build(None)?;
            let entries = cli::select(&dl, &ids, &filter, narrowed, all).await?;
            let results = cli::replay_all(&dl, &entries, rate).await;
            let failed = results.iter().filter(|(_, r)| r.is_err()).count();
            if json {
                let rows: Vec<_> = results
                    .iter()
                    .map(|(id, r)| match r {
                        Ok(stream_id) => serde_json::json!({"id": id, "stream_id": stream_id}),
                        Err(e) => serde_json::json!({"id": id, "error": e}),
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for (id, r) in &results {
                    match r {
                        Ok(stream_id) => println!("replayed {id} as {stream_id}"),
                        Err(e) => println!("could not replay {id}: {e}"),
                    }
                }
                println!("{} replayed, {failed} failed", results.len() - failed);
            }
            anyhow::ensure!(failed == 0, "{failed} dead letter(s) could not be replayed");
        }
        DlqCommand::Purge {
            ids,
            filter,
            older_than,
            all,
            yes,
            json,
        } => {
            let (filter, narrowed) = filter.build(older_than.as_deref())?;
            let entries = cli::select(&dl, &ids, &filter, narrowed, all).await?;
            if !yes {
                print!("{}", cli::table(&entries));
                anyhow::bail!(
                    "nothing deleted: add --yes to delete these {} dead letter(s)",
                    entries.len()
                );
            }
            let deleted = dl.purge(&entries).await?;
            if json {
                println!("{}", serde_json::json!({"deleted": deleted}));
            } else {
                println!("deleted {deleted} dead letter(s)");
            }
        }
    }
    Ok(())
}

async fn replay(
    settings: Settings,
    from: String,
    to: Option<String>,
    topic: Option<String>,
    force: bool,
    json: bool,
) -> anyhow::Result<()> {
    use herald::replay::{Bound, Plan, Replayer};
    use std::io::IsTerminal;
    let plan = Plan {
        from: Bound::parse(&from, false).map_err(|e| anyhow::anyhow!("--from: {e}"))?,
        to: to
            .map(|t| Bound::parse(&t, true))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--to: {e}"))?,
        topic,
        force,
    };
    let db = herald::db::Db::connect(&settings).await?;
    let replayer = Replayer::new(db);
    let bar = if std::io::stderr().is_terminal() {
        let total = replayer.count(&plan).await?;
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "replaying {bar:40} {pos}/{len} events ({elapsed} so far, {eta} left)",
            )
            .expect("a valid template"),
        );
        Some(bar)
    } else {
        None
    };
    let summary = replayer
        .run(&plan, |n| {
            if let Some(bar) = &bar {
                bar.inc(n);
            }
        })
        .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "replayed {} event(s); skipped {} of other topics and {} copies of earlier replays",
            summary.replayed, summary.skipped_topic, summary.skipped_copies
        );
        match &summary.run {
            Some(run) => println!("--force: every device gets them again (replay run {run})"),
            None => println!(
                "devices that received an event already are skipped; --force pushes to them again"
            ),
        }
    }
    Ok(())
}

async fn stats(
    settings: Settings,
    json: bool,
    watch: Option<u64>,
    group: Option<String>,
) -> anyhow::Result<()> {
    let db = herald::db::Db::connect(&settings).await?;
    let spool_dir = settings.spool_dir();
    loop {
        let stats = herald::stats::collect(&db, group.as_deref(), Some(&spool_dir)).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&stats)?);
        } else {
            if watch.is_some() {
                // Clear the screen and go home, like watch(1).
                print!("\x1b[2J\x1b[H");
                println!(
                    "herald stats, {} (every {}s, Ctrl-C to stop)\n",
                    herald::event::format_time(chrono::Utc::now()),
                    watch.unwrap_or(0)
                );
            }
            print!("{}", herald::stats::table(&stats));
        }
        match watch {
            Some(secs) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    _ = tokio::time::sleep(std::time::Duration::from_secs(secs.max(1))) => {}
                }
            }
            None => return Ok(()),
        }
    }
}

async fn run_sink(args: SinkArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    use herald::sink::{Fault, Sink, SinkOptions, SinkRecord};
    let record = match args.out {
        Some(path) => SinkRecord::File(path),
        None => SinkRecord::Stdout,
    };
    let sink = Sink::bind(SinkOptions {
        listen: args.sink_listen,
        fast: args.fast,
        record: Some(Box::new(record)),
    })
    .await?;
    let handle = sink.handle();
    let mut faults = Vec::new();
    for spec in &args.fail {
        let (status, retry_after) = match spec.split_once(':') {
            Some((s, r)) => (s, Some(r.to_string())),
            None => (spec.as_str(), None),
        };
        let status: u16 = status
            .parse()
            .ok()
            .filter(|s| (100..=599).contains(s))
            .ok_or_else(|| {
                anyhow::anyhow!("--fail {spec:?}: expected an HTTP status like 503 or 429:2")
            })?;
        faults.push(Fault {
            status,
            retry_after,
            delay_ms: None,
        });
    }
    handle.add_faults("*", faults);
    eprintln!(
        "herald sink listening on {} (arrivals as JSON lines)",
        handle.base_url()
    );
    let server = tokio::spawn(sink.run(shutdown.clone()));
    if args.register > 0 {
        let ids = herald::sink::register(
            &handle,
            &args.api,
            args.token.as_deref(),
            &args.user,
            args.register,
        )
        .await;
        match ids {
            Ok(ids) => eprintln!(
                "registered {} subscription(s) for user {}: {}",
                ids.len(),
                args.user,
                ids.join(", ")
            ),
            Err(e) => {
                shutdown.cancel();
                let _ = server.await;
                return Err(e);
            }
        }
    }
    server.await??;
    Ok(())
}

async fn publish(settings: Settings, args: PublishArgs) -> anyhow::Result<()> {
    use herald::event::{EventDefaults, EventInput, Notification};
    use herald::publish::{PublishOutcome, Publisher, Ready};
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    let db = herald::db::Db::connect(&settings).await?;
    let publisher = Publisher::new(db, settings.events.dedup_window);
    let defaults = EventDefaults::from_settings(&settings.events);
    let per_batch = args.batch as f64;
    let interval =
        (args.rate > 0.0).then(|| std::time::Duration::from_secs_f64(per_batch / args.rate));
    let started = std::time::Instant::now();
    let mut sent: u64 = 0;
    let mut round: u32 = 0;
    while sent < args.count {
        let size = (args.count - sent).min(args.batch);
        let mut batch = Vec::with_capacity(size as usize);
        for _ in 0..size {
            let input = EventInput {
                id: None,
                topic: args.topic.clone(),
                user: args.user.clone(),
                key: args.key.clone(),
                headers: Default::default(),
                notification: Notification {
                    title: args.title.clone(),
                    body: args.body.clone(),
                    url: None,
                    icon: None,
                    tag: None,
                },
                publish_at: None,
                deliver_at: None,
                ttl: None,
                urgency: None,
            };
            let event = input
                .validate(defaults, chrono::Utc::now())
                .map_err(|e| anyhow::anyhow!("--{e}"))?;
            batch.push(Ready::new(&event, input.digest()));
        }
        for outcome in publisher.publish(&batch).await? {
            if let (PublishOutcome::Accepted(p), 1) = (outcome, args.count) {
                println!("{}", serde_json::to_string(&p)?);
            }
        }
        sent += size;
        round += 1;
        if let Some(interval) = interval {
            tokio::time::sleep_until((started + interval * round).into()).await;
        }
    }
    if args.count > 1 {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "published {} events in {secs:.2}s ({:.0}/s)",
            args.count,
            args.count as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}
