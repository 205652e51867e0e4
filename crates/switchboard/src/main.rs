//! The `switchboard` binary: a screen of flags and a call into the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchboard::bench::BenchArgs;
use switchboard::config::ServeArgs;
use switchboard::server::{self, Role};
use switchboard::tools::{ChatArgs, PublishArgs, TailArgs};
use switchboard_bench::OutputFormat;
use switchboard_telemetry::{LogFormat, Telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Real-time messaging over WebSocket, SSE and gRPC",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Flags of `standalone`, the default when no subcommand is given.
    #[command(flatten)]
    standalone: ServeArgs,
    /// Log format: human or json. Filter with RUST_LOG.
    #[arg(
        long,
        env = "SWITCHBOARD_LOG_FORMAT",
        default_value = "human",
        global = true
    )]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Core, WebSocket + SSE gateways, HTTP and gRPC APIs in one process,
    /// on the in-memory bus, or on NATS with --nats-url (the default role).
    Standalone(ServeArgs),
    /// The core: the one writer of the JetStream room logs and presence,
    /// answering gateways over NATS; serves the gRPC API and ops endpoints.
    Core(ServeArgs),
    /// The WebSocket gateway (and the HTTP API), talking to the core over NATS.
    WsGateway(ServeArgs),
    /// The SSE gateway (and the HTTP API), talking to the core over NATS.
    SseGateway(ServeArgs),
    /// Load generator against a running deployment (a client tool: no
    /// server flags): fanout, publish, idle or connect; JSON results.
    Bench(BenchArgs),
    /// Interactive terminal chat in one room over WebSocket (a client
    /// tool): lines typed are published, reconnects resume.
    Chat(ChatArgs),
    /// A room's events as JSON lines on stdout, for scripts (a client tool).
    Tail(TailArgs),
    /// Publish one message through the HTTP API (a client tool).
    Publish(PublishArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (role, args) = match cli.command {
        Some(Command::Standalone(args)) => (Role::Standalone, args),
        Some(Command::Core(args)) => (Role::Core, args),
        Some(Command::WsGateway(args)) => (Role::WsGateway, args),
        Some(Command::SseGateway(args)) => (Role::SseGateway, args),
        Some(Command::Bench(args)) => return bench(&args),
        Some(Command::Chat(args)) => {
            return tool(async move { switchboard_cli::chat(args.options()?).await });
        }
        Some(Command::Tail(args)) => {
            return tool(async move { switchboard_cli::tail(args.options()?).await });
        }
        Some(Command::Publish(args)) => {
            return tool(async move {
                let answer = switchboard_cli::publish(args.options()?).await?;
                println!("{answer}");
                Ok(())
            });
        }
        None => (Role::Standalone, cli.standalone),
    };
    cap_malloc_arenas();
    tokio::runtime::Runtime::new()
        .context("starting the Tokio runtime")?
        .block_on(run(role, args, cli.log_format))
}

/// Runs a terminal tool on a single-threaded runtime (one connection needs
/// no more). Its error is printed as one line (no backtrace: it is the
/// user's input or the server's answer, not a bug) with exit status 1.
fn tool(
    run: impl std::future::Future<Output = Result<(), switchboard_cli::CliError>>,
) -> anyhow::Result<()> {
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?
        .block_on(run);
    if let Err(err) = outcome {
        eprintln!("switchboard: {err}");
        std::process::exit(1);
    }
    Ok(())
}

/// Runs one benchmark and prints its report: the JSON line on stdout and/or
/// the human summary (stderr when both are printed, so stdout stays JSON).
fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let report = tokio::runtime::Runtime::new()
        .context("starting the Tokio runtime")?
        .block_on(switchboard_bench::run(&config))?;
    match args.format {
        OutputFormat::Both => {
            println!("{}", report.json());
            eprint!("{}", report.human());
        }
        OutputFormat::Json => println!("{}", report.json()),
        OutputFormat::Human => print!("{}", report.human()),
    }
    Ok(())
}

async fn run(role: Role, args: ServeArgs, log_format: LogFormat) -> anyhow::Result<()> {
    // Inside the runtime: the OTLP exporter needs it.
    let telemetry = Telemetry::init(role.name(), log_format, "info");
    log_config(role, &args, telemetry.exporting());
    raise_open_files(args.limits.max_connections);
    let outcome = serve(role, &args).await;
    if let Err(err) = &outcome {
        tracing::error!(%err, "switchboard stopped");
    }
    telemetry.shutdown();
    outcome
}

async fn serve(role: Role, args: &ServeArgs) -> anyhow::Result<()> {
    let server = server::start(role, args).await?;
    shutdown_signal().await;
    tracing::info!(grace = ?args.shutdown_grace, "shutting down");
    if !server.shutdown(args.shutdown_grace).await {
        tracing::warn!("grace period over; exiting with connections still open");
    }
    Ok(())
}

/// Re-executes the server once with `MALLOC_ARENA_MAX` set (to the cores
/// it may use, at least 2), unless the environment already sets it.
///
/// glibc gives threads that contend for `malloc` arenas of their own, up
/// to 8 per core, and rarely hands their free pages back: under connection
/// churn with slow consumers the soak (`scripts/soak.sh`) saw RSS grow
/// ~0.4 MB/s and stay there after every client had gone. It was
/// fragmentation, not a leak: with the arenas capped, RSS stayed within
/// 3 % of its baseline. glibc reads the cap only from the environment
/// before the first allocation, hence the exec (same PID, same arguments).
/// If it fails, the server runs on uncapped.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        use std::os::unix::process::CommandExt;
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let arenas = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("MALLOC_ARENA_MAX", arenas.to_string())
            .exec();
        eprintln!("could not re-execute with MALLOC_ARENA_MAX set ({err}); running uncapped");
    }
}

/// Raises the soft open-files limit to the hard one and logs both: at the
/// soft limit accepts fail and new clients hang until they time out, so
/// the connection caps must be reached first.
fn raise_open_files(max_connections: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current != before.maximum {
        let raised = Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(%err, "could not raise the open-files soft limit");
        }
    }
    let now = getrlimit(Resource::Nofile);
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
    tracing::info!(
        soft = %show(now.current),
        hard = %show(now.maximum),
        was = %show(before.current),
        "open-files limit"
    );
    if let Some(soft) = now.current
        && usize::try_from(soft).is_ok_and(|soft| soft < max_connections)
    {
        tracing::warn!(
            soft,
            max_connections,
            "open-files limit below --max-connections: clients beyond it hang instead of \
             being refused; raise the hard limit (ulimit -Hn, LimitNOFILE) or lower the cap"
        );
    }
}

/// Prints the effective settings with secrets redacted.
fn log_config(role: Role, args: &ServeArgs, exporting_traces: bool) {
    let auth = match (&args.auth.jwt_secret, &args.auth.jwt_public_key) {
        (Some(_), _) => "jwt-hs256 (secret redacted)".to_owned(),
        (None, Some(path)) => format!("jwt-public-key {}", path.display()),
        (None, None) => "anonymous".to_owned(),
    };
    tracing::info!(
        role = role.name(),
        exporting_traces,
        nats_url = args.nats.nats_url.as_deref().unwrap_or("(memory bus)"),
        nats_prefix = %args.nats.nats_prefix,
        http_addr = %args.http_addr,
        grpc_addr = %args.grpc_addr,
        auth,
        limits = ?args.limits,
        retention = ?args.retention,
        "configuration"
    );
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
