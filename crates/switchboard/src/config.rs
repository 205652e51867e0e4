//! Typed settings of each role, filled from flags or `SWITCHBOARD_*`
//! environment variables, validated before anything starts.

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use switchboard_auth::Authenticator;
use switchboard_core::CoreConfig;
use switchboard_gateway::Limits;

use crate::StartError;

/// Parses `250ms`, `30s`, `2m`, `24h` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 2m, 24h"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (ms, s, m, h, d)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|err| format!("{text:?}: {err}"))
}

/// Parses a byte size: `1048576`, `64MB`, `64MiB`, `1GiB`, `512k`. Units
/// are powers of 1024 whether written KB or KiB, as nats-server reads its
/// `max_file_store`, so the same text means the same size in both places.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 1048576, 64MB or 1GiB"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (B, KB, MB, GB, TB or KiB, MiB, GiB, TiB)"
            ));
        }
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Authentication flags (spec §7).
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// HS256 secret; when set (or a public key is), every request needs a JWT.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Path of an RS256 or ES256 public key (PEM) to verify JWTs with.
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Accepted `aud` values, comma-separated: a token must carry one.
    #[arg(long, env = "SWITCHBOARD_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,
    /// Accepted `iss` values, comma-separated: a token must carry one.
    #[arg(long, env = "SWITCHBOARD_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf` (connections close at
    /// `exp` + leeway).
    #[arg(long, env = "SWITCHBOARD_JWT_LEEWAY", default_value = "0s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,
    /// URL (http or https) of an identity provider's JWKS: its RSA, EC
    /// and Ed25519 keys verify JWTs, each with its own algorithm.
    #[arg(long, env = "SWITCHBOARD_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// Shortest time between two JWKS fetches caused by tokens naming an
    /// unknown `kid` (a rotation): more such tokens are refused meanwhile.
    #[arg(long, env = "SWITCHBOARD_JWT_JWKS_REFETCH", default_value = "30s", value_parser = parse_duration)]
    pub jwt_jwks_refetch: Duration,
    /// The JWKS is also refreshed this often, so withdrawn keys stop
    /// being accepted.
    #[arg(long, env = "SWITCHBOARD_JWT_JWKS_REFRESH", default_value = "5m", value_parser = parse_duration)]
    pub jwt_jwks_refresh: Duration,
}

impl AuthArgs {
    /// The configured authenticator; with a JWKS URL its keys are fetched
    /// first (a provider that does not answer is logged, and its keys are
    /// fetched again on the first token and then periodically).
    pub async fn authenticator(&self) -> Result<Authenticator, StartError> {
        let rules = switchboard_auth::JwtRules {
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
            leeway: self.jwt_leeway,
        };
        let keyed = match &self.jwt_jwks_url {
            Some(url) => self.jwks_authenticator(url).await?,
            None => self.key_authenticator()?,
        };
        if !keyed.requires_token() && (!rules.audience.is_empty() || !rules.issuer.is_empty()) {
            return Err(StartError::Config(
                "--jwt-audience and --jwt-issuer need --jwt-secret, --jwt-public-key or --jwt-jwks-url"
                    .into(),
            ));
        }
        Ok(keyed.with_rules(&rules))
    }

    async fn jwks_authenticator(&self, url: &str) -> Result<Authenticator, StartError> {
        if self.jwt_secret.is_some() || self.jwt_public_key.is_some() {
            return Err(StartError::Config(
                "set one of --jwt-secret, --jwt-public-key and --jwt-jwks-url".into(),
            ));
        }
        if self.jwt_jwks_refetch.is_zero() || self.jwt_jwks_refresh.is_zero() {
            return Err(StartError::Config(
                "--jwt-jwks-refetch and --jwt-jwks-refresh must be positive".into(),
            ));
        }
        let jwks = std::sync::Arc::new(
            switchboard_auth::Jwks::new(url, self.jwt_jwks_refetch)
                .map_err(|err| StartError::Config(err.to_string()))?,
        );
        match jwks.fetch().await {
            Ok(0) => tracing::error!(url, "the JWKS holds no usable key: every token is refused"),
            Ok(_) => {}
            Err(err) => tracing::error!(
                %err,
                "the JWKS could not be fetched: tokens are refused until it can"
            ),
        }
        jwks.spawn_refresh(self.jwt_jwks_refresh);
        Ok(Authenticator::jwks(jwks))
    }

    fn key_authenticator(&self) -> Result<Authenticator, StartError> {
        match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(_), Some(_)) => Err(StartError::Config(
                "set one of --jwt-secret, --jwt-public-key and --jwt-jwks-url".into(),
            )),
            (Some(secret), None) => Authenticator::hs256(secret.as_bytes())
                .map_err(|err| StartError::Config(err.to_string())),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|err| {
                    StartError::Config(format!("cannot read {}: {err}", path.display()))
                })?;
                Authenticator::public_key_pem(&pem)
                    .map_err(|err| StartError::Config(err.to_string()))
            }
            (None, None) => Ok(Authenticator::Anonymous),
        }
    }
}

/// Limits of every gateway (spec §6).
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Longest message text, bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_TEXT_BYTES", default_value_t = 4096)]
    pub max_text_bytes: usize,
    /// Largest WebSocket frame, HTTP body or gRPC message, bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_BYTES", default_value_t = 65536)]
    pub max_frame_bytes: usize,
    /// Rooms one connection may join.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_ROOMS_PER_CONNECTION",
        default_value_t = 100
    )]
    pub max_rooms_per_connection: usize,
    /// Sustained publishes per second per connection (per user on HTTP/gRPC unary).
    #[arg(long, env = "SWITCHBOARD_PUBLISH_RATE", default_value_t = 50.0)]
    pub publish_rate: f64,
    /// Publish burst before the rate applies.
    #[arg(long, env = "SWITCHBOARD_PUBLISH_BURST", default_value_t = 100.0)]
    pub publish_burst: f64,
    /// Events queued per connection before it is dropped as a slow consumer.
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,
    /// Kernel send buffer of every client socket (HTTP, WebSocket, SSE,
    /// gRPC), as Linux counts it; 0 leaves the kernel's autotuning, which
    /// lets a client that stops reading hold ~4 MiB and hide from the
    /// outbound queue for minutes. Below ~128 KiB, loopback (a proxy on
    /// the same host) gets one 64 KiB segment per delayed ACK: 1.6 MB/s.
    #[arg(long, env = "SWITCHBOARD_SOCKET_SEND_BUFFER", default_value = "256KiB", value_parser = parse_bytes)]
    pub socket_send_buffer: u64,
    /// WebSocket ping interval.
    #[arg(long, env = "SWITCHBOARD_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// A WebSocket peer silent this long is dropped.
    #[arg(long, env = "SWITCHBOARD_PING_TIMEOUT", default_value = "45s", value_parser = parse_duration)]
    pub ping_timeout: Duration,
    /// A new HTTP connection must send its first request head within this
    /// (slowloris); it holds nothing but its socket until then.
    #[arg(long, env = "SWITCHBOARD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// SSE heartbeat interval (at most 15 s).
    #[arg(long, env = "SWITCHBOARD_SSE_HEARTBEAT", default_value = "15s", value_parser = parse_duration)]
    pub sse_heartbeat: Duration,
    /// History events plus presence users one connection (or one HTTP
    /// client address) may read per second; replies are charged by size.
    #[arg(long, env = "SWITCHBOARD_HISTORY_RATE", default_value_t = 1000.0)]
    pub history_rate: f64,
    /// History/presence read burst before the rate applies.
    #[arg(long, env = "SWITCHBOARD_HISTORY_BURST", default_value_t = 5000.0)]
    pub history_burst: f64,
    /// Anonymous publishes per second per client address, over all its
    /// connections and transports (anonymous users pick their own names).
    /// Default: 4 × --publish-rate, at least 200.
    #[arg(long, env = "SWITCHBOARD_IP_PUBLISH_RATE")]
    pub ip_publish_rate: Option<f64>,
    /// Anonymous publish burst per client address. Default: 4 ×
    /// --publish-burst, at least 400.
    #[arg(long, env = "SWITCHBOARD_IP_PUBLISH_BURST")]
    pub ip_publish_burst: Option<f64>,
    /// Client connections (WebSocket, SSE, gRPC streams) this process
    /// holds at most; more are refused with 503 before any upgrade.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Client connections one client address holds at most.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IP",
        default_value_t = 1000
    )]
    pub max_connections_per_ip: usize,
    /// Proxies (CIDRs or addresses, comma-separated) whose left-most
    /// `X-Forwarded-For` entry is taken as the client address for the
    /// per-address limits; from anyone else the header is ignored.
    #[arg(long, env = "SWITCHBOARD_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Allowed browser origins for WebSocket and CORS, comma-separated; empty allows any.
    #[arg(long, env = "SWITCHBOARD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
}

impl LimitArgs {
    pub fn limits(&self) -> Result<Limits, StartError> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(StartError::Config(what.to_owned()))
            }
        };
        check(self.max_text_bytes > 0, "--max-text-bytes must be positive")?;
        check(
            self.max_frame_bytes >= self.max_text_bytes,
            "--max-frame-bytes must be at least --max-text-bytes",
        )?;
        check(
            self.max_rooms_per_connection > 0,
            "--max-rooms-per-connection must be positive",
        )?;
        check(
            self.publish_rate > 0.0 && self.publish_burst >= 1.0,
            "--publish-rate must be positive and --publish-burst at least 1",
        )?;
        check(self.outbound_queue > 0, "--outbound-queue must be positive")?;
        check(
            self.ping_interval > Duration::ZERO && self.ping_timeout > self.ping_interval,
            "--ping-timeout must be longer than a positive --ping-interval",
        )?;
        check(
            self.handshake_timeout > Duration::ZERO,
            "--handshake-timeout must be positive",
        )?;
        check(
            self.sse_heartbeat > Duration::ZERO && self.sse_heartbeat <= Duration::from_secs(15),
            "--sse-heartbeat must be within (0, 15s]",
        )?;
        check(
            self.history_rate > 0.0 && self.history_burst >= 1.0,
            "--history-rate must be positive and --history-burst at least 1",
        )?;
        // An address is a few connections at least, so its default allowance
        // follows the per-connection one.
        let ip_publish_rate = self
            .ip_publish_rate
            .unwrap_or((4.0 * self.publish_rate).max(200.0));
        let ip_publish_burst = self
            .ip_publish_burst
            .unwrap_or((4.0 * self.publish_burst).max(400.0));
        check(
            ip_publish_rate > 0.0 && ip_publish_burst >= 1.0,
            "--ip-publish-rate must be positive and --ip-publish-burst at least 1",
        )?;
        check(
            self.max_connections > 0 && self.max_connections_per_ip > 0,
            "--max-connections and --max-connections-per-ip must be positive",
        )?;
        Ok(Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            trusted_proxies: self.trusted_proxies.clone(),
            max_text_bytes: self.max_text_bytes,
            max_frame_bytes: self.max_frame_bytes,
            max_rooms_per_connection: self.max_rooms_per_connection,
            publish_rate: self.publish_rate,
            publish_burst: self.publish_burst,
            outbound_queue: self.outbound_queue,
            socket_send_buffer: usize::try_from(self.socket_send_buffer)
                .ok()
                .filter(|&bytes| bytes > 0),
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            sse_heartbeat: self.sse_heartbeat,
            handshake_timeout: self.handshake_timeout,
            read_rate: self.history_rate,
            read_burst: self.history_burst,
            ip_publish_rate,
            ip_publish_burst,
        })
    }
}

/// Room log settings of the core (spec §2).
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Events kept per room.
    #[arg(long, env = "SWITCHBOARD_RETENTION_COUNT", default_value_t = 1000)]
    pub retention_count: usize,
    /// Events older than this are dropped.
    #[arg(long, env = "SWITCHBOARD_RETENTION_AGE", default_value = "24h", value_parser = parse_duration)]
    pub retention_age: Duration,
    /// How long a publish id is remembered for de-duplication.
    #[arg(long, env = "SWITCHBOARD_DEDUP_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub dedup_window: Duration,
    /// Rooms the in-memory bus holds at most (standalone without NATS);
    /// the oldest unattended rooms are evicted beyond it.
    #[arg(
        long,
        env = "SWITCHBOARD_MEMORY_MAX_ROOMS",
        default_value_t = 1_000_000
    )]
    pub memory_max_rooms: usize,
    /// Estimated bytes of rooms and events the in-memory bus holds at most.
    #[arg(long, env = "SWITCHBOARD_MEMORY_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub memory_max_bytes: u64,
}

impl RetentionArgs {
    pub fn core_config(&self, max_text_bytes: usize) -> Result<CoreConfig, StartError> {
        if self.retention_count == 0 {
            return Err(StartError::Config(
                "--retention-count must be positive".into(),
            ));
        }
        if self.memory_max_rooms == 0 || self.memory_max_bytes == 0 {
            return Err(StartError::Config(
                "--memory-max-rooms and --memory-max-bytes must be positive".into(),
            ));
        }
        Ok(CoreConfig {
            retention_count: self.retention_count,
            retention_age: self.retention_age,
            dedup_window: self.dedup_window,
            max_text_bytes,
            max_rooms: self.memory_max_rooms,
            max_bytes: usize::try_from(self.memory_max_bytes).unwrap_or(usize::MAX),
            ..CoreConfig::default()
        })
    }
}

/// NATS connection and JetStream layout (distributed mode).
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated. Required by core and the
    /// gateways; with `standalone` it replaces the in-memory bus.
    #[arg(long, env = "SWITCHBOARD_NATS_URL")]
    pub nats_url: Option<String>,
    /// Prefix of every subject, stream and bucket name.
    #[arg(long, env = "SWITCHBOARD_NATS_PREFIX", default_value = "sb")]
    pub nats_prefix: String,
    /// Bound of each request from a gateway to the core.
    #[arg(long, env = "SWITCHBOARD_NATS_REQUEST_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub nats_request_timeout: Duration,
    /// A connection whose gateway stops refreshing it leaves after this.
    #[arg(long, env = "SWITCHBOARD_PRESENCE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub presence_ttl: Duration,
    /// JetStream storage of room logs and presence: file or memory (core).
    #[arg(long, env = "SWITCHBOARD_JETSTREAM_STORAGE", default_value = "file")]
    pub jetstream_storage: switchboard_nats::StorageKind,
    /// JetStream replicas of the stream and bucket: 3 in a cluster (core).
    #[arg(long, env = "SWITCHBOARD_JETSTREAM_REPLICAS", default_value_t = 1)]
    pub jetstream_replicas: usize,
    /// Bound of the room-log stream (core): when full, the oldest events
    /// are discarded, so one flooding client cannot make every publish
    /// fail. Keep it below the NATS server's `max_file_store`.
    #[arg(long, env = "SWITCHBOARD_JETSTREAM_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub jetstream_max_bytes: u64,
    /// Send the appends queued for a room while one is in flight as one
    /// JetStream atomic batch, one round trip (core; ADR 0011). Needs
    /// nats-server 2.12 or later; older servers are detected and get one
    /// round trip per append.
    #[arg(long, env = "SWITCHBOARD_JETSTREAM_BATCHES", default_value_t = true, action = clap::ArgAction::Set)]
    pub jetstream_batches: bool,
}

impl NatsArgs {
    /// The NATS settings, if a URL was given. `max_frame_bytes` bounds each
    /// stored event (see [`switchboard_nats::STORED_OVERHEAD_BYTES`]).
    pub fn config(
        &self,
        role: &str,
        max_frame_bytes: usize,
    ) -> Result<Option<switchboard_nats::NatsConfig>, StartError> {
        let Some(url) = &self.nats_url else {
            return Ok(None);
        };
        let mut config = switchboard_nats::NatsConfig::new(
            url,
            &self.nats_prefix,
            &format!("switchboard-{role}"),
        )
        .map_err(|err| StartError::Config(err.to_string()))?;
        if self.presence_ttl < Duration::from_millis(300) {
            return Err(StartError::Config(
                "--presence-ttl must be at least 300ms".into(),
            ));
        }
        if !(1..=5).contains(&self.jetstream_replicas) {
            return Err(StartError::Config(
                "--jetstream-replicas must be 1 to 5".into(),
            ));
        }
        config.request_timeout = self.nats_request_timeout;
        config.presence_ttl = self.presence_ttl;
        config.storage = self.jetstream_storage;
        // Below this the stream could not hold a single largest event.
        let max_message_bytes =
            max_frame_bytes.saturating_add(switchboard_nats::STORED_OVERHEAD_BYTES);
        if self.jetstream_max_bytes < max_message_bytes as u64 {
            return Err(StartError::Config(format!(
                "--jetstream-max-bytes must be at least {max_message_bytes} (one largest event)"
            )));
        }
        config.replicas = self.jetstream_replicas;
        config.max_bytes = self.jetstream_max_bytes;
        config.max_message_bytes = max_message_bytes;
        config.atomic_batches = self.jetstream_batches;
        Ok(Some(config))
    }
}

/// Everything a role needs; each role uses its part (a gateway ignores
/// `--grpc-addr` and retention, the core serves only ops over HTTP).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of HTTP (WebSocket, SSE, API, demo page, ops endpoints).
    #[arg(long, env = "SWITCHBOARD_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Address of the gRPC API.
    #[arg(long, env = "SWITCHBOARD_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// A gRPC connection without any call for this long is closed.
    #[arg(long, env = "SWITCHBOARD_GRPC_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub grpc_idle_timeout: Duration,
    /// The gRPC server pings every HTTP/2 connection this often.
    #[arg(long, env = "SWITCHBOARD_GRPC_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub grpc_keepalive_interval: Duration,
    /// A gRPC peer that does not answer a ping within this is dropped.
    #[arg(long, env = "SWITCHBOARD_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub grpc_keepalive_timeout: Duration,
    /// How long a graceful shutdown may take before the process exits anyway.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// The name the standalone role has always had.
pub type StandaloneArgs = ServeArgs;

/// A CIDR (`10.0.0.0/8`) or a single address (`10.1.2.3`).
fn parse_net(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is neither a CIDR (10.0.0.0/8) nor an address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1048576"), Ok(1_048_576));
        assert_eq!(parse_bytes("64MB"), Ok(64 << 20));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512k"), Ok(512 << 10));
        assert_eq!(parse_bytes("2 GB"), Ok(2 << 30));
        assert!(parse_bytes("1.5GB").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("99999999999TB").is_err());
    }

    #[test]
    fn trusted_proxies_take_cidrs_and_addresses() {
        assert!(parse_net("10.0.0.0/8").is_ok_and(|n| {
            n.contains(
                &"10.1.2.3"
                    .parse::<std::net::IpAddr>()
                    .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
            )
        }));
        assert!(parse_net(" 127.0.0.2 ").is_ok_and(|n| n.prefix_len() == 32));
        assert!(parse_net("::1").is_ok_and(|n| n.prefix_len() == 128));
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("proxy.local").is_err());
    }
}
