//! Real processes for distributed tests: `nats-server` (single node or a
//! JetStream cluster) and `switchboard` roles, each on free loopback ports.
//! Every wait is bounded; processes are killed when dropped.

use super::WAIT;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How many of a service's last log lines a failed wait prints, so a CI
/// failure shows why (a flake at start cannot be rerun with logs on).
const KEPT_LOG_LINES: usize = 30;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `NATS_SERVER_BIN`, else `nats-server` on `PATH` (the test script
/// installs it there).
pub fn nats_server_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .expect("nats-server not found: run ./scripts/test.sh, or set NATS_SERVER_BIN")
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `nats-server` with JetStream and file storage.
pub struct Nats {
    pub port: u16,
    pub cluster_port: u16,
    store: PathBuf,
    routes: Vec<u16>,
    name: String,
    /// Port of the monitoring endpoints (`/jsz`), if served.
    pub monitor_port: Option<u16>,
    max_file_store: Option<String>,
    /// `sync_interval: always`, as the shipped configs run JetStream.
    sync_always: bool,
    /// Clients learn no other cluster member than the URL they were given
    /// (so a proxy in front of a node stays the only way to it).
    no_advertise: bool,
    child: Option<Child>,
}

/// Settings of a single test server beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Serve the monitoring endpoints on a free port.
    pub monitor: bool,
    /// JetStream `max_file_store`, e.g. `"4MB"` (nats-server's units).
    pub max_file_store: Option<String>,
}

impl Nats {
    pub fn start(store: &Path) -> Self {
        Self::start_node("n0", store, free_port(), free_port(), Vec::new())
    }

    /// One node with `options`.
    pub fn start_with(store: &Path, options: NatsOptions) -> Self {
        let mut nats = Self {
            port: free_port(),
            cluster_port: free_port(),
            store: store.to_path_buf(),
            routes: Vec::new(),
            name: "n0".to_owned(),
            monitor_port: options.monitor.then(free_port),
            max_file_store: options.max_file_store,
            sync_always: false,
            no_advertise: false,
            child: None,
        };
        nats.run();
        nats
    }

    /// `http://127.0.0.1:<monitor port><path>`; panics without monitoring.
    pub fn monitor_url(&self, path: &str) -> String {
        let port = self.monitor_port.expect("started with monitoring");
        format!("http://127.0.0.1:{port}{path}")
    }

    /// Consumers of `stream` (e.g. `SB_ROOMS`), from `/jsz`.
    pub async fn consumer_count(&self, stream: &str) -> u64 {
        let url = self.monitor_url("/jsz?accounts=true&streams=true");
        let response = tokio::time::timeout(WAIT, reqwest::get(url))
            .await
            .expect("/jsz answers in time")
            .expect("/jsz reachable");
        let jsz: serde_json::Value = response.json().await.expect("/jsz JSON");
        jsz["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
            .find(|detail| detail["name"] == stream)
            .and_then(|detail| detail["state"]["consumer_count"].as_u64())
            .unwrap_or_else(|| panic!("/jsz lists no stream {stream}"))
    }

    fn start_node(
        name: &str,
        store: &Path,
        port: u16,
        cluster_port: u16,
        routes: Vec<u16>,
    ) -> Self {
        Self::start_node_with(
            name,
            store,
            port,
            cluster_port,
            routes,
            ClusterOptions::default(),
        )
    }

    fn start_node_with(
        name: &str,
        store: &Path,
        port: u16,
        cluster_port: u16,
        routes: Vec<u16>,
        options: ClusterOptions,
    ) -> Self {
        let mut nats = Self {
            port,
            cluster_port,
            store: store.to_path_buf(),
            routes,
            name: name.to_owned(),
            monitor_port: None,
            max_file_store: None,
            sync_always: options.sync_always,
            no_advertise: options.no_advertise,
            child: None,
        };
        nats.run();
        nats
    }

    fn run(&mut self) {
        std::fs::create_dir_all(&self.store).expect("store dir");
        let mut command = Command::new(nats_server_bin());
        command
            .args(["-js", "-a", "127.0.0.1", "-n", &self.name])
            .args(["-p", &self.port.to_string()])
            .arg("-sd")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(port) = self.monitor_port {
            command.args(["-m", &port.to_string()]);
        }
        // Not command-line flags: a config file holds them.
        let mut jetstream = Vec::new();
        if let Some(max) = &self.max_file_store {
            jetstream.push(format!("max_file_store: {max}"));
        }
        if self.sync_always {
            jetstream.push("sync_interval: always".to_owned());
        }
        if !jetstream.is_empty() {
            let config = self.store.join("limits.conf");
            std::fs::write(
                &config,
                format!("jetstream {{ {} }}\n", jetstream.join(", ")),
            )
            .expect("config written");
            command.arg("-c").arg(config);
        }
        if !self.routes.is_empty() {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            command
                .args(["--cluster_name", "sbtest"])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", self.cluster_port),
                ])
                .args(["--routes", &routes.join(",")]);
            if self.no_advertise {
                command.arg("--no_advertise");
            }
        }
        self.child = Some(command.spawn().expect("nats-server starts"));
        wait_for_port(self.port, "nats-server");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// One monitoring endpoint as JSON, e.g. `/subsz`.
    pub async fn monitor(&self, path: &str) -> serde_json::Value {
        let url = self.monitor_url(path);
        tokio::time::timeout(WAIT, async { reqwest::get(&url).await?.json().await })
            .await
            .expect("monitoring answers in time")
            .expect("monitoring JSON")
    }

    /// Subscriptions the server holds right now, over every client.
    pub async fn subscriptions(&self) -> u64 {
        self.monitor("/subsz").await["num_subscriptions"]
            .as_u64()
            .expect("num_subscriptions")
    }

    /// Stops the server at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: connections
    /// stay open, so clients see silence rather than a disconnect.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts it again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    /// Starts it again after [`Nats::kill`] (the process is gone).
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.run();
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How the nodes of a [`NatsCluster`] run.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterOptions {
    pub sync_always: bool,
    pub no_advertise: bool,
}

/// A 3-node JetStream cluster.
pub struct NatsCluster {
    pub nodes: Vec<Nats>,
}

impl NatsCluster {
    pub fn start(store: &Path) -> Self {
        Self::start_with(store, ClusterOptions::default())
    }

    pub fn start_with(store: &Path, options: ClusterOptions) -> Self {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (port, cluster))| {
                let routes = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, c))| *c)
                    .collect();
                Nats::start_node_with(
                    &format!("n{i}"),
                    &store.join(format!("n{i}")),
                    *port,
                    *cluster,
                    routes,
                    options,
                )
            })
            .collect();
        Self { nodes }
    }

    /// Every node's URL, for clients that fail over.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(Nats::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A `switchboard` process in one role.
pub struct Service {
    pub role: String,
    pub http: SocketAddr,
    pub grpc: Option<SocketAddr>,
    child: Child,
    recent_logs: Arc<Mutex<VecDeque<String>>>,
}

impl Service {
    /// Starts `switchboard <role> --nats-url <url> <extra…>` on free ports
    /// and waits for its "listening" log line.
    pub fn start(role: &str, nats_url: &str, extra: &[&str]) -> Self {
        Self::start_with_env(role, nats_url, extra, &[])
    }

    /// [`Service::start`] with extra environment variables.
    pub fn start_with_env(
        role: &str,
        nats_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(role, Some(nats_url), extra, env)
    }

    /// `switchboard standalone` on its in-memory bus, as a process of its
    /// own (so its memory and metrics are its alone).
    pub fn standalone(extra: &[&str]) -> Self {
        Self::spawn("standalone", None, extra, &[])
    }

    /// [`Service::start`] on a given HTTP address: a restart where the
    /// previous process listened, as a redeployed gateway would.
    pub fn start_at(role: &str, nats_url: &str, http: SocketAddr, extra: &[&str]) -> Self {
        Self::spawn_at(role, Some(nats_url), &http.to_string(), extra, &[])
    }

    fn spawn(role: &str, nats_url: Option<&str>, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_at(role, nats_url, "127.0.0.1:0", extra, env)
    }

    fn spawn_at(
        role: &str,
        nats_url: Option<&str>,
        http: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command.arg(role);
        if let Some(url) = nats_url {
            command.args(["--nats-url", url]);
        }
        let mut child = command
            .args(["--http-addr", http, "--grpc-addr", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "info")
            // nats-server's store limit follows the free disk; a test core
            // needs far less than the 1 GiB default bound to be ready (an
            // explicit --jetstream-max-bytes still wins over this).
            .env("SWITCHBOARD_JETSTREAM_MAX_BYTES", "64MB")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("switchboard starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let name = role.to_owned();
        let recent_logs = Arc::new(Mutex::new(VecDeque::with_capacity(KEPT_LOG_LINES)));
        let kept = recent_logs.clone();
        std::thread::spawn(move || {
            let mut announced = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !announced && line.contains("switchboard listening") {
                    announced = true;
                    let _ = tx.send(line.clone());
                }
                if std::env::var_os("SWITCHBOARD_TEST_LOGS").is_some() {
                    eprintln!("[{name}] {line}");
                }
                if let Ok(mut kept) = kept.lock() {
                    if kept.len() == KEPT_LOG_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            }
        });
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{role} did not start listening in time"));
        let log: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        let addr = |key: &str| {
            log.get(key)
                .and_then(|v| v.as_str())
                .map(|s| s.parse::<SocketAddr>().expect("address"))
        };
        Self {
            role: role.to_owned(),
            http: addr("http_addr").expect("http_addr"),
            grpc: addr("grpc_addr"),
            child,
            recent_logs,
        }
    }

    /// The service's last log lines, one per line, for a failure message.
    pub fn recent_logs(&self) -> String {
        self.recent_logs
            .lock()
            .map(|lines| lines.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.http)
    }

    /// The process id (for tools that read the server's `/proc` entry).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, bytes (from `/proc`).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("process status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    /// The value of one series of `/metrics`, e.g.
    /// `switchboard_connections{transport="grpc"}`; 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = tokio::time::timeout(WAIT, async {
            reqwest::get(self.url("/metrics")).await?.text().await
        })
        .await
        .expect("metrics in time")
        .expect("metrics text");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// Ends the process at once, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until `/readyz` answers `want` (true: 200).
    pub async fn wait_ready(&self, want: bool) {
        let deadline = tokio::time::Instant::now() + WAIT * 3;
        let client = reqwest::Client::new();
        loop {
            let ready = matches!(
                client.get(self.url("/readyz")).timeout(Duration::from_secs(1)).send().await,
                Ok(r) if r.status() == 200
            );
            if ready == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} readiness did not become {want}; its last log lines:\n{}",
                self.role,
                self.recent_logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A gRPC client of a service's API.
pub async fn grpc(
    service: &Service,
) -> switchboard_protocol::pb::chat_client::ChatClient<tonic::transport::Channel> {
    let addr = service.grpc.expect("service serves gRPC");
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("gRPC connects");
    switchboard_protocol::pb::chat_client::ChatClient::new(channel)
}
