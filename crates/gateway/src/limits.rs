use std::time::Duration;

/// Per-connection limits (spec §6). Every transport enforces the same ones.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest message text, bytes.
    pub max_text_bytes: usize,
    /// Largest WebSocket frame / HTTP body / gRPC message, bytes.
    pub max_frame_bytes: usize,
    /// Rooms one connection may be subscribed to at once.
    pub max_rooms_per_connection: usize,
    /// Sustained publishes per second per connection.
    pub publish_rate: f64,
    /// Publishes allowed in a burst before the rate applies.
    pub publish_burst: f64,
    /// Events queued for one connection before it counts as a slow consumer.
    pub outbound_queue: usize,
    /// Kernel send buffer of each client socket, bytes as Linux counts them
    /// (`None`: the kernel autotunes it, up to `tcp_wmem`'s maximum). With
    /// it bounded, a client that stops reading fills its socket after this
    /// many bytes; then the outbound queue, and the slow-consumer close,
    /// come soon after rather than megabytes later.
    pub socket_send_buffer: Option<usize>,
    /// WebSocket ping interval; a peer silent for `ping_timeout` is dropped.
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// SSE heartbeat interval (the spec requires ≤ 15 s).
    pub sse_heartbeat: Duration,
    /// A new HTTP connection's first request head must arrive within this.
    pub handshake_timeout: Duration,
    /// History events and presence users a connection may read per second
    /// (and an HTTP client address): replies are charged by their size, so
    /// a small frame cannot pull megabytes at the frame rate.
    pub read_rate: f64,
    pub read_burst: f64,
    /// Anonymous publishes per second per client address, over all its
    /// connections and transports: self-chosen user names are free.
    pub ip_publish_rate: f64,
    pub ip_publish_burst: f64,
    /// Client connections (WebSocket, SSE, gRPC streams) per process.
    pub max_connections: usize,
    /// Client connections per client address.
    pub max_connections_per_ip: usize,
    /// Peers whose `X-Forwarded-For` names the client (its left-most
    /// entry); from anyone else the header is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_bytes: 4 * 1024,
            max_frame_bytes: 64 * 1024,
            max_rooms_per_connection: 100,
            publish_rate: 50.0,
            publish_burst: 100.0,
            outbound_queue: 1024,
            socket_send_buffer: Some(256 * 1024),
            ping_interval: Duration::from_secs(20),
            ping_timeout: Duration::from_secs(45),
            sse_heartbeat: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            read_rate: 1000.0,
            read_burst: 5000.0,
            ip_publish_rate: 200.0,
            ip_publish_burst: 400.0,
            max_connections: 100_000,
            max_connections_per_ip: 1000,
            trusted_proxies: Vec::new(),
        }
    }
}
