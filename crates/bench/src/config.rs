//! What a run is asked to do, and the endpoints derived from the base URL.

use crate::BenchError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::Duration;

/// The scenario of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Subscribers in one or more rooms, publishers into them: deliveries/s,
    /// loss and end-to-end latency.
    Fanout,
    /// Acknowledged publishes/s (subscribers optional, none by default).
    Publish,
    /// Connections held open and subscribed: memory per connection.
    Idle,
    /// New connections + subscribe per second, each closed after `subscribed`.
    Connect,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Fanout => "fanout",
            Self::Publish => "publish",
            Self::Idle => "idle",
            Self::Connect => "connect",
        }
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "fanout" => Ok(Self::Fanout),
            "publish" => Ok(Self::Publish),
            "idle" => Ok(Self::Idle),
            "connect" => Ok(Self::Connect),
            _ => Err(format!(
                "unknown scenario {text:?} (fanout, publish, idle, connect)"
            )),
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How subscribers receive: WebSocket, SSE or the gRPC `Subscribe` stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubTransport {
    Ws,
    Sse,
    Grpc,
}

impl SubTransport {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Sse => "sse",
            Self::Grpc => "grpc",
        }
    }
}

impl FromStr for SubTransport {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "ws" => Ok(Self::Ws),
            "sse" => Ok(Self::Sse),
            "grpc" => Ok(Self::Grpc),
            _ => Err(format!(
                "unknown subscriber transport {text:?} (ws, sse, grpc)"
            )),
        }
    }
}

/// How publishers publish: HTTP `POST`, WebSocket frames or gRPC `Publish`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubTransport {
    Http,
    Ws,
    Grpc,
}

impl PubTransport {
    pub fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Ws => "ws",
            Self::Grpc => "grpc",
        }
    }
}

impl FromStr for PubTransport {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "http" => Ok(Self::Http),
            "ws" => Ok(Self::Ws),
            "grpc" => Ok(Self::Grpc),
            _ => Err(format!(
                "unknown publisher transport {text:?} (http, ws, grpc)"
            )),
        }
    }
}

/// The wire protocol spoken to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// Switchboard's own (§3, §4, §5): subscribe frames, `subscribed`
    /// confirmations, JSON events, acknowledged publishes.
    Switchboard,
    /// A bare pub/sub endpoint pair, so the same generator can drive other
    /// servers (nginx + Nchan, a Node `ws` broadcast, FastAPI …): publish is
    /// `POST` of the payload as the body (any 2xx is the acknowledgement),
    /// every WebSocket text frame or SSE `data:` event is one payload
    /// verbatim, and a subscriber counts as subscribed once the upgrade (or
    /// the SSE response head) arrived.
    Raw(RawPaths),
}

impl Protocol {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Switchboard => "switchboard",
            Self::Raw(_) => "raw",
        }
    }

    pub fn is_raw(&self) -> bool {
        matches!(self, Self::Raw(_))
    }
}

/// Path templates of the raw protocol; `{room}` is replaced by the room
/// name. The defaults mirror Nchan's usual pub/sub locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPaths {
    /// `POST` target of a publish (default `/pub/{room}`).
    pub publish: String,
    /// WebSocket upgrade and SSE `GET` target (default `/sub/{room}`): the
    /// peers tell the two apart by the `Upgrade` and `Accept` headers.
    pub subscribe: String,
}

impl Default for RawPaths {
    fn default() -> Self {
        Self {
            publish: "/pub/{room}".to_owned(),
            subscribe: "/sub/{room}".to_owned(),
        }
    }
}

impl RawPaths {
    fn validate(&self) -> Result<(), BenchError> {
        for (flag, template) in [
            ("--raw-pub-path", &self.publish),
            ("--raw-sub-path", &self.subscribe),
        ] {
            if !template.starts_with('/') || !template.contains("{room}") {
                return Err(BenchError::Config(format!(
                    "{flag} {template:?}: a path starting with / that contains {{room}}"
                )));
            }
        }
        Ok(())
    }
}

/// Where the report goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// The JSON line on stdout and the human summary on stderr.
    Both,
    /// Only the JSON line on stdout.
    Json,
    /// Only the human summary, on stdout.
    Human,
}

impl FromStr for OutputFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "both" => Ok(Self::Both),
            "json" => Ok(Self::Json),
            "human" => Ok(Self::Human),
            _ => Err(format!("unknown format {text:?} (both, json, human)")),
        }
    }
}

/// Local addresses client sockets bind to, round-robin. One source address
/// gives about 28k ephemeral ports towards one server address; more source
/// addresses (127.0.0.x on loopback) allow more connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceAddrs(pub Vec<IpAddr>);

impl FromStr for SourceAddrs {
    type Err = String;
    /// `127.0.0.1-127.0.0.20` (an IPv4 range), `127.0.0.2,127.0.0.3` (a
    /// list), or `20` (that many loopback addresses from 127.0.0.1).
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(count) = text.parse::<u32>() {
            if count == 0 || count > 65_000 {
                return Err(format!("{count} source addresses: use 1..=65000"));
            }
            let base = u32::from(Ipv4Addr::new(127, 0, 0, 1));
            return Ok(Self(
                (0..count)
                    .map(|i| IpAddr::V4(Ipv4Addr::from(base + i)))
                    .collect(),
            ));
        }
        if let Some((from, to)) = text.split_once('-') {
            let parse = |t: &str| {
                t.trim()
                    .parse::<Ipv4Addr>()
                    .map_err(|_| format!("{t:?} is not an IPv4 address"))
            };
            let (from, to) = (u32::from(parse(from)?), u32::from(parse(to)?));
            if to < from || to - from >= 65_000 {
                return Err(format!(
                    "{text:?}: the range must go upwards, at most 65000 addresses"
                ));
            }
            return Ok(Self(
                (from..=to).map(|a| IpAddr::V4(Ipv4Addr::from(a))).collect(),
            ));
        }
        text.split(',')
            .map(|t| {
                t.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| format!("{t:?} is not an IP address, a range or a count"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

/// The server as the base URL names it, with the paths of §14 derived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` as written (for `Host` headers and URLs).
    pub authority: String,
    /// `host` without brackets, for resolving.
    pub host: String,
    pub port: u16,
    /// A path prefix the deployment is mounted under (`""` usually).
    pub prefix: String,
}

impl Target {
    /// `http://host:8080`, `http://host:8080/prefix`, or `ws://host:8080/ws`
    /// (the `/ws` is dropped: every path is derived from the base). TLS is
    /// not spoken: point the bench at the plain port behind the terminator.
    pub fn parse(text: &str) -> Result<Self, BenchError> {
        let url = reqwest::Url::parse(text.trim())
            .map_err(|err| BenchError::Config(format!("URL {text:?}: {err}")))?;
        match url.scheme() {
            "http" | "ws" => {}
            "https" | "wss" => {
                return Err(BenchError::Config(format!(
                    "{text:?}: TLS is not supported by the bench; use the plain http:// port"
                )));
            }
            other => {
                return Err(BenchError::Config(format!(
                    "{text:?}: scheme {other:?} (use http://host:port or ws://host:port/ws)"
                )));
            }
        }
        let host = url
            .host_str()
            .ok_or_else(|| BenchError::Config(format!("{text:?} has no host")))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let mut prefix = url.path().trim_end_matches('/').to_owned();
        for suffix in ["/ws/chat", "/ws"] {
            if let Some(stripped) = prefix.strip_suffix(suffix) {
                prefix = stripped.to_owned();
                break;
            }
        }
        Ok(Self {
            authority: format!("{host}:{port}"),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            prefix,
        })
    }

    pub fn ws_url(&self, user: &str) -> String {
        format!("ws://{}{}/ws?user={user}", self.authority, self.prefix)
    }

    pub fn sse_path(&self, room: &str, user: &str) -> String {
        format!("{}/sse/rooms/{room}?user={user}", self.prefix)
    }

    pub fn publish_url(&self, room: &str, user: &str) -> String {
        format!(
            "http://{}{}/api/rooms/{room}/messages?user={user}",
            self.authority, self.prefix
        )
    }

    /// `template` (a [`RawPaths`] path) for `room`, under the prefix.
    pub fn raw_path(&self, template: &str, room: &str) -> String {
        format!("{}{}", self.prefix, template.replace("{room}", room))
    }

    pub fn raw_ws_url(&self, template: &str, room: &str) -> String {
        format!("ws://{}{}", self.authority, self.raw_path(template, room))
    }

    pub fn raw_http_url(&self, template: &str, room: &str) -> String {
        format!("http://{}{}", self.authority, self.raw_path(template, room))
    }
}

/// The gRPC address (`host:50051` or `http://host:50051`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTarget {
    pub uri: String,
    pub host: String,
    pub port: u16,
}

impl GrpcTarget {
    pub fn parse(text: &str) -> Result<Self, BenchError> {
        let text = text.trim();
        let with_scheme = if text.contains("://") {
            text.to_owned()
        } else {
            format!("http://{text}")
        };
        let url = reqwest::Url::parse(&with_scheme)
            .map_err(|err| BenchError::Config(format!("gRPC address {text:?}: {err}")))?;
        if url.scheme() != "http" {
            return Err(BenchError::Config(format!(
                "gRPC address {text:?}: only plaintext http:// is supported"
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| BenchError::Config(format!("gRPC address {text:?} has no host")))?;
        let port = url.port().unwrap_or(50051);
        Ok(Self {
            uri: format!("http://{host}:{port}"),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
        })
    }
}

/// A validated run description. Every run is bounded: by `duration` and
/// `messages` (publishers stop at whichever comes first), `setup_timeout`
/// for opening connections and `drain_timeout` for the last deliveries.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub protocol: Protocol,
    pub grpc: Option<GrpcTarget>,
    pub scenario: Scenario,
    pub subscribe: SubTransport,
    pub publish: PubTransport,
    /// Subscribers (fanout, publish) or connections (idle, connect).
    pub connections: usize,
    pub publishers: usize,
    pub rooms: usize,
    /// Total publishes per second over all publishers; `None`: as fast as
    /// the window allows.
    pub rate: Option<f64>,
    /// Publishes in flight per publisher: pipelined frames on one WebSocket,
    /// or that many concurrent request loops over HTTP / gRPC.
    pub window: usize,
    pub duration: Duration,
    /// Publish attempts over all publishers.
    pub messages: u64,
    pub drain_timeout: Duration,
    pub setup_timeout: Duration,
    /// Fan-out: a pause after every subscriber is in and before publishing
    /// starts, for servers whose "subscribed" signal (raw: the upgrade or
    /// response head) may come just before the subscription takes effect.
    pub settle: Duration,
    /// Connections being opened at once.
    pub concurrency: usize,
    pub payload_bytes: usize,
    pub server_pid: Option<u32>,
    pub source_addrs: SourceAddrs,
    /// Room names are `<prefix>-<i>`; by default a fresh prefix per run, so
    /// runs never see each other's messages.
    pub room_prefix: Option<String>,
    pub user_prefix: String,
}

impl Config {
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Config(m));
        if self.rooms == 0 {
            return bad("--rooms must be at least 1".into());
        }
        if self.window == 0 {
            return bad("--window must be at least 1".into());
        }
        if self.concurrency == 0 {
            return bad("--concurrency must be at least 1".into());
        }
        if matches!(self.scenario, Scenario::Fanout | Scenario::Publish) && self.publishers == 0 {
            return bad("--publishers must be at least 1".into());
        }
        if matches!(self.scenario, Scenario::Idle | Scenario::Connect) && self.connections == 0 {
            return bad("--connections must be at least 1".into());
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return bad(format!("--rate {rate}: must be a positive number"));
        }
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 48
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if let Some(prefix) = &self.room_prefix
            && !valid(prefix)
        {
            return bad(format!(
                "--room-prefix {prefix:?}: 1-48 characters of A-Z a-z 0-9 _ -"
            ));
        }
        if !valid(&self.user_prefix) {
            return bad(format!(
                "--user-prefix {:?}: 1-48 characters of A-Z a-z 0-9 _ -",
                self.user_prefix
            ));
        }
        let wants_grpc = self.subscribe == SubTransport::Grpc
            || (matches!(self.scenario, Scenario::Fanout | Scenario::Publish)
                && self.publish == PubTransport::Grpc);
        if let Protocol::Raw(paths) = &self.protocol {
            paths.validate()?;
            if self.subscribe == SubTransport::Grpc {
                return bad("--protocol raw subscribes over ws or sse, not grpc".into());
            }
            if matches!(self.scenario, Scenario::Fanout | Scenario::Publish)
                && self.publish != PubTransport::Http
            {
                return bad(format!(
                    "--protocol raw publishes over http (POST to --raw-pub-path), not {}",
                    self.publish.name()
                ));
            }
        }
        if wants_grpc && self.grpc.is_none() {
            return bad(
                "gRPC transport chosen: give the gRPC address with --grpc host:port".into(),
            );
        }
        Ok(())
    }

    /// Independent publish sequences (streams of sequence numbers) per
    /// publisher: a WebSocket pipelines its window on one ordered
    /// connection; HTTP and gRPC run `window` request loops, each in order.
    pub fn lanes_per_publisher(&self) -> usize {
        match self.publish {
            PubTransport::Ws => 1,
            PubTransport::Http | PubTransport::Grpc => self.window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_derive_every_path() {
        let t = Target::parse("ws://example.com:8080/ws").expect("parses");
        assert_eq!(t.ws_url("u"), "ws://example.com:8080/ws?user=u");
        assert_eq!(t.sse_path("r", "u"), "/sse/rooms/r?user=u");
        let t = Target::parse("http://10.0.0.1:9000/chat/").expect("parses");
        assert_eq!(
            t.publish_url("r", "u"),
            "http://10.0.0.1:9000/chat/api/rooms/r/messages?user=u"
        );
        assert!(Target::parse("https://x").is_err());
        assert!(Target::parse("ftp://x").is_err());
    }

    #[test]
    fn raw_paths_fill_in_the_room_under_the_prefix() {
        let t = Target::parse("http://127.0.0.1:9000/nchan").expect("parses");
        let paths = RawPaths::default();
        assert_eq!(
            t.raw_ws_url(&paths.subscribe, "r-1"),
            "ws://127.0.0.1:9000/nchan/sub/r-1"
        );
        assert_eq!(t.raw_path(&paths.subscribe, "r-1"), "/nchan/sub/r-1");
        assert_eq!(
            t.raw_http_url("/rooms/{room}/pub", "r"),
            "http://127.0.0.1:9000/nchan/rooms/r/pub"
        );
        assert!(paths.validate().is_ok());
        let no_room = RawPaths {
            publish: "/pub".into(),
            ..RawPaths::default()
        };
        assert!(no_room.validate().is_err());
    }

    #[test]
    fn source_addresses_as_range_list_or_count() {
        let r: SourceAddrs = "127.0.0.1-127.0.0.3".parse().expect("range");
        assert_eq!(r.0.len(), 3);
        let c: SourceAddrs = "20".parse().expect("count");
        assert_eq!(
            c.0.last().map(ToString::to_string).as_deref(),
            Some("127.0.0.20")
        );
        let l: SourceAddrs = "127.0.0.2,::1".parse().expect("list");
        assert_eq!(l.0.len(), 2);
        assert!("127.0.0.9-127.0.0.1".parse::<SourceAddrs>().is_err());
        assert!("nope".parse::<SourceAddrs>().is_err());
    }

    #[test]
    fn grpc_addresses_with_or_without_scheme() {
        let g = GrpcTarget::parse("127.0.0.1:50051").expect("parses");
        assert_eq!(g.uri, "http://127.0.0.1:50051");
        assert!(GrpcTarget::parse("https://h:1").is_err());
    }
}
