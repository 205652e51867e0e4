//! Flags of `switchboard bench` (§14), turned into the load generator's
//! [`switchboard_bench::Config`]. Here rather than in the bench crate so
//! durations parse exactly as the server's flags do ([`parse_duration`]).

use crate::config::parse_duration;
use clap::Args;
use std::time::Duration;
use switchboard_bench::{
    BenchError, Config, GrpcTarget, OutputFormat, Protocol, PubTransport, RawPaths, Scenario,
    SourceAddrs, SubTransport, Target,
};

/// The wire protocol flag: Switchboard's own, or a peer's bare pub/sub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolArg {
    Switchboard,
    Raw,
}

/// Settle time of the raw protocol unless `--settle` says otherwise: its
/// "subscribed" is the upgrade or response head, which some servers send
/// just before the subscription is registered (uvicorn, for one).
const RAW_SETTLE: Duration = Duration::from_millis(250);

const EXAMPLES: &str = "\
Examples:
  # 1000 WebSocket subscribers in one room, as fast as 2 publishers x 16 in flight allow:
  switchboard bench http://localhost:8080 --subscribers 1000 --publishers 2 --window 16 --duration 10s

  # The same load against a peer's bare pub/sub endpoints (nginx + Nchan, Node ws, FastAPI):
  # POST /pub/{room} publishes the body, /sub/{room} is the WebSocket or SSE subscription.
  switchboard bench http://127.0.0.1:8090 --protocol raw --subscribe sse --subscribers 1000 --window 16

  # 10k idle subscribed connections and the server's RSS per connection:
  switchboard bench http://localhost:8080 --scenario idle --connections 10000 \\
      --source-addrs 127.0.0.1-127.0.0.4 --server-pid \"$(pgrep -n switchboard)\"

scripts/bench.sh runs the side-by-side comparison (README, Benchmarking).";

/// `switchboard bench URL [flags]`: a bounded load run against a deployment.
#[derive(Debug, Clone, Args)]
#[command(after_help = EXAMPLES)]
pub struct BenchArgs {
    /// Base URL of a gateway or standalone server: `http://host:8080`
    /// (`ws://host:8080/ws` is accepted too).
    pub url: String,
    /// switchboard (the server's own protocol) | raw (a peer's bare pub/sub:
    /// POST the payload to --raw-pub-path, receive it verbatim as WebSocket
    /// text frames or SSE data on --raw-sub-path; publishers over http).
    #[arg(long, value_enum, default_value = "switchboard")]
    pub protocol: ProtocolArg,
    /// Raw protocol: the publish path, `{room}` replaced by the room.
    #[arg(long, default_value = "/pub/{room}")]
    pub raw_pub_path: String,
    /// Raw protocol: the WebSocket and SSE subscribe path.
    #[arg(long, default_value = "/sub/{room}")]
    pub raw_sub_path: String,
    /// Pause between the last subscriber being in and the first publish
    /// (default: 0s; 250ms with --protocol raw, whose "subscribed" is only
    /// the upgrade or response head).
    #[arg(long, value_parser = parse_duration)]
    pub settle: Option<Duration>,
    /// fanout | publish | idle | connect.
    #[arg(long, default_value = "fanout")]
    pub scenario: Scenario,
    /// gRPC address (`host:50051`), needed for gRPC subscribers/publishers.
    #[arg(long)]
    pub grpc: Option<String>,
    /// Subscriber transport: ws | sse | grpc.
    #[arg(long = "subscribe", default_value = "ws")]
    pub subscribe: SubTransport,
    /// Publisher transport: http | ws | grpc (default ws; http with
    /// --protocol raw).
    #[arg(long = "publish")]
    pub publish: Option<PubTransport>,
    /// Subscribers (fanout: default 100; publish: default 0).
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Connections for idle and connect (default 1000).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Publishers, each its own connection (or HTTP client) and user.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Rooms; subscribers and publishes are spread round-robin over them.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Total publishes per second; without it, as fast as --window allows.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Publishes in flight per publisher.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// How long publishers publish (idle: how long connections are held).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Publish attempts over all publishers (the run stops at whichever of
    /// --duration and --messages comes first).
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// How long to wait for the last deliveries after publishing ends.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Bound on opening and subscribing each connection.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub setup_timeout: Duration,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Size of each message text (at least the sequence header).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Server process id (same machine): its RSS is read before and after.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Local addresses to bind client sockets to, round-robin:
    /// `127.0.0.1-127.0.0.20`, a list `a,b`, or a count from 127.0.0.1.
    #[arg(long)]
    pub source_addrs: Option<SourceAddrs>,
    /// Rooms are `<prefix>-<i>` (default: a fresh prefix per run).
    #[arg(long)]
    pub room_prefix: Option<String>,
    /// Subscribers are user `<prefix>-sub`, publisher i `<prefix>-pub<i>`.
    #[arg(long, default_value = "bench")]
    pub user_prefix: String,
    /// both (JSON on stdout, summary on stderr) | json | human.
    #[arg(long, default_value = "both")]
    pub format: OutputFormat,
}

impl BenchArgs {
    pub fn config(&self) -> Result<Config, BenchError> {
        let connections = match self.scenario {
            Scenario::Fanout => self.subscribers.unwrap_or(100),
            Scenario::Publish => self.subscribers.unwrap_or(0),
            Scenario::Idle | Scenario::Connect => {
                self.connections.or(self.subscribers).unwrap_or(1000)
            }
        };
        let protocol = match self.protocol {
            ProtocolArg::Switchboard => Protocol::Switchboard,
            ProtocolArg::Raw => Protocol::Raw(RawPaths {
                publish: self.raw_pub_path.clone(),
                subscribe: self.raw_sub_path.clone(),
            }),
        };
        let publish = self.publish.unwrap_or(if protocol.is_raw() {
            PubTransport::Http
        } else {
            PubTransport::Ws
        });
        let settle = self.settle.unwrap_or(if protocol.is_raw() {
            RAW_SETTLE
        } else {
            Duration::ZERO
        });
        Ok(Config {
            target: Target::parse(&self.url)?,
            protocol,
            settle,
            grpc: self.grpc.as_deref().map(GrpcTarget::parse).transpose()?,
            scenario: self.scenario,
            subscribe: self.subscribe,
            publish,
            connections,
            publishers: self.publishers,
            rooms: self.rooms,
            rate: self.rate,
            window: self.window,
            duration: self.duration,
            messages: self.messages,
            drain_timeout: self.drain_timeout,
            setup_timeout: self.setup_timeout,
            concurrency: self.concurrency,
            payload_bytes: self.payload_bytes,
            server_pid: self.server_pid,
            source_addrs: self.source_addrs.clone().unwrap_or_default(),
            room_prefix: self.room_prefix.clone(),
            user_prefix: self.user_prefix.clone(),
        })
    }
}
