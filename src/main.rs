//! The `herald` binary: parse arguments, set up logging, load settings, and
//! hand each command to the module that owns it. Nothing here is worth
//! testing on its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use herald::deliver::push::vapid;
use herald::intake::publish;
use herald::operate::{audit, dlq, replay, roles, sink, stats};
use herald::shared::config::{ConfigCommand, Overrides, Settings, Source};
use herald::shared::telemetry::{self, LogFormat};

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
        command: dlq::DlqCommand,
    },
    /// A local push service that verifies and decrypts like a browser.
    Sink(sink::SinkArgs),
    /// Streams, groups, consumers, pending, lag, dead letters, spool depth.
    Stats(stats::StatsArgs),
    /// Publish events from the shell, straight into the stream.
    Publish(publish::PublishArgs),
    /// Write every event as a JSON line, from a consumer group of its own (audit.group).
    Audit(audit::AuditArgs),
    /// Process history still in the streams again.
    Replay(replay::ReplayArgs),
    /// Service tokens for the API (api.tokens).
    Token {
        #[command(subcommand)]
        command: herald::intake::auth::TokenCommand,
    },
    /// VAPID keys.
    Vapid {
        #[command(subcommand)]
        command: vapid::VapidCommand,
    },
    /// Check or show the effective configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
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
    // Needs no configuration: it makes the entry a configuration will hold
    // (and works while an old api.tokens entry makes the rest refuse to load).
    if let Command::Token { command } = cli.command {
        return herald::intake::auth::run_cli(command);
    }
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
    // The long-running roles stop on SIGINT/SIGTERM; one-shot commands just run.
    let long_running = matches!(
        cli.command,
        Command::Up
            | Command::Api
            | Command::Worker
            | Command::Reclaimer
            | Command::Sink(_)
            | Command::Audit(_)
    );
    if long_running {
        herald::shared::shutdown::on_signals(shutdown.clone())?;
    }
    match cli.command {
        Command::Up => roles::up(settings, shutdown).await,
        Command::Api => roles::api(settings, shutdown).await,
        Command::Worker => roles::worker(settings, shutdown).await,
        Command::Reclaimer => roles::reclaimer(settings, shutdown).await,
        Command::Audit(args) => roles::audit(settings, args, shutdown).await,
        Command::Sink(args) => sink::run_cli(args, shutdown).await,
        Command::Dlq { command } => dlq::run(settings, command).await,
        Command::Stats(args) => stats::run_cli(settings, args).await,
        Command::Publish(args) => publish::run_cli(settings, args).await,
        Command::Replay(args) => replay::run_cli(settings, args).await,
        Command::Vapid { command } => vapid::run_cli(&settings, command),
        Command::Token { .. } => unreachable!("handled before the configuration is loaded"),
        Command::Config { command } => command.run(&source, &settings),
    }
}
