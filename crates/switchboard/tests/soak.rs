//! The soak (issue 9, not in CI: `scripts/soak.sh` runs it, 30 minutes by
//! default). A standalone server (memory bus) under churn:
//!
//! * `SOAK_CONNECTIONS` (5,000) WebSocket clients over `SOAK_ROOMS` (50)
//!   rooms, each living `SOAK_LIFETIME_MIN`..`SOAK_LIFETIME_MAX` seconds
//!   (10-60), dropped without a close frame, then back, resuming from the
//!   last cursor it got;
//! * one client in ten publishes every 2 s;
//! * one in twenty is a slow consumer: a small receive buffer, and it
//!   stops reading (for up to `SOAK_STALL_SECONDS`, 240) while it still
//!   sends a ping frame every 10 s, so it is alive but does not keep up
//!   (it also takes the live traffic of `SOAK_SLOW_ROOMS` - 1 (9) other
//!   rooms, so that takes seconds rather than minutes):
//!   the server must close it as a slow consumer (4008) once its socket
//!   buffer and its outbound queue of `SOAK_QUEUE` (256) events are full;
//! * one in twenty stalls silently for 60 s, past `--ping-timeout`: the
//!   liveness check must drop it;
//! * both then resume like the others; everyone else reads as fast as it
//!   can, as a real client does, and the server's queue must absorb their
//!   bursts (a resume's replay arriving with live traffic);
//! * every client checks that the events of its room reach it with no gap,
//!   duplicate or step back across all its resumes (offsets of a room are
//!   consecutive on the memory bus), and that every resume is recovered.
//!
//! After the churn every client closes; the server's RSS and open file
//! descriptors must come back to within 10 % of where they were before
//! the churn started (after a warm-up round that sizes the allocator's
//! pools and fills every room's history to its bound, since history is
//! memory the server is meant to keep). The figures go to
//! `docs/RELIABILITY.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::UNTHROTTLED;
use common::procs::Service;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const SLOW_DROPS: &str = "switchboard_slow_consumer_drops_total";
const PING_FAILURES: &str = "switchboard_ping_failures_total";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The soft open-files limit raised to the hard one: this process holds
/// one socket per client.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let _ = setrlimit(Resource::Nofile, raised);
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    sessions: AtomicU64,
    events: AtomicU64,
    acked: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    unrecovered: AtomicU64,
    connect_failures: AtomicU64,
    /// Clients that kept reading and were still closed with 4008.
    readers_closed_slow: AtomicU64,
    /// Stalls of slow clients ended by the server (their pings refused)
    /// and by the stall's own bound, with their total length.
    stalls_ended_by_server: AtomicU64,
    stalls_ended_by_bound: AtomicU64,
    stall_ms: AtomicU64,
    running: AtomicUsize,
}

impl Tally {
    fn summary(&self) -> String {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        format!(
            "sessions {} events {} acked {} lost {} duplicated {} unrecovered {} connect-failures {} readers-closed-4008 {} stalls ended by the server {} by their bound {} ({:.1} s on average)",
            get(&self.sessions),
            get(&self.events),
            get(&self.acked),
            get(&self.lost),
            get(&self.duplicated),
            get(&self.unrecovered),
            get(&self.connect_failures),
            get(&self.readers_closed_slow),
            get(&self.stalls_ended_by_server),
            get(&self.stalls_ended_by_bound),
            get(&self.stall_ms) as f64
                / 1000.0
                / (get(&self.stalls_ended_by_server) + get(&self.stalls_ended_by_bound)).max(1)
                    as f64,
        )
    }
}

fn offset(cursor: &str) -> u64 {
    cursor
        .rsplit_once(':')
        .and_then(|(_, o)| o.parse().ok())
        .unwrap_or(0)
}

/// A tiny xorshift, so lifetimes vary without a dependency.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket whose receive buffer is `rcvbuf` bytes when given: a slow
/// client's kernel buffer is what a phone on a bad link has, not the
/// megabytes loopback autotunes to (which would hide the server's queue
/// behind the kernel for minutes).
async fn connect(addr: std::net::SocketAddr, url: &str, rcvbuf: Option<u32>) -> Option<Socket> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).ok()?;
    }
    let stream = socket.connect(addr).await.ok()?;
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.ok()?;
    Some(ws)
}

async fn client(
    i: usize,
    server: (std::net::SocketAddr, String),
    until: Instant,
    tally: Arc<Tally>,
) {
    let (addr, url) = server;
    let rooms = usize::try_from(env("SOAK_ROOMS", 50)).expect("count");
    let room = format!("soak-{}", i % rooms);
    // `SOAK_PUBLISHERS=0` / `SOAK_SLOW=0` leave either kind out (to
    // isolate what a figure depends on).
    let publisher = env("SOAK_PUBLISHERS", 1) > 0 && i.is_multiple_of(10);
    let slow = env("SOAK_SLOW", 1) > 0 && i % 20 == 5;
    let silent = env("SOAK_SLOW", 1) > 0 && i % 20 == 15;
    let stall_for = Duration::from_secs(env("SOAK_STALL_SECONDS", 240));
    let (min_life, max_life) = (
        env("SOAK_LIFETIME_MIN", 10) * 1000,
        env("SOAK_LIFETIME_MAX", 60) * 1000,
    );
    let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1);
    let mut last: Option<String> = None;
    let mut published = 0u64;
    tally.running.fetch_add(1, Ordering::Relaxed);
    // Spread the first connects over the shortest lifetime, as clients of
    // a running service are, rather than one thundering herd.
    let start_in = next_random(&mut seed) % min_life.max(1);
    tokio::time::sleep(Duration::from_millis(start_in).min(until - Instant::now())).await;
    while Instant::now() < until {
        let user_url = format!("{url}?user=c{i}");
        let rcvbuf = slow.then_some(4096);
        let Ok(Some(mut ws)) =
            tokio::time::timeout(Duration::from_secs(10), connect(addr, &user_url, rcvbuf)).await
        else {
            tally.connect_failures.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        tally.sessions.fetch_add(1, Ordering::Relaxed);
        let mut subscribe = json!({"type":"subscribe","room":room});
        if let Some(cursor) = &last {
            subscribe["since"] = json!(cursor);
        }
        if ws.send(Message::text(subscribe.to_string())).await.is_err() {
            continue;
        }
        if slow {
            // Live traffic of more rooms than its own (checked only in
            // its own), so its buffers fill in seconds, not minutes.
            for other in 1..env("SOAK_SLOW_ROOMS", 10) {
                let other = format!("soak-{}", (i + other as usize) % rooms);
                let frame = json!({"type":"subscribe","room":other});
                if ws.send(Message::text(frame.to_string())).await.is_err() {
                    break;
                }
            }
        }
        let lifetime =
            Duration::from_millis(min_life + next_random(&mut seed) % (max_life - min_life).max(1));
        let ends = (Instant::now() + lifetime).min(until);
        let mut next_publish = Instant::now() + Duration::from_secs(2);
        let mut stalled = false;
        // The room's head when this session subscribed: a stalling client
        // first reads its resume's replay up to there, as a real one would
        // (one that stalled again straight away would resume from the same
        // cursor every session, until history no longer covered it).
        let mut head: Option<u64> = None;
        loop {
            let caught_up = head.is_some_and(|head| last.as_deref().map_or(0, offset) >= head);
            if (slow || silent) && !stalled && caught_up {
                stalled = true;
                if slow {
                    // Alive but not reading: a ping frame every 10 s until
                    // the server, having closed us, refuses them. Bounded:
                    // a stall that outlives the soak just ends.
                    let stalled_at = Instant::now();
                    let stall_ends = (stalled_at + stall_for).min(until);
                    let mut refused = false;
                    while Instant::now() < stall_ends {
                        let ping = Message::text(json!({"type":"ping"}).to_string());
                        if ws.send(ping).await.is_err() {
                            refused = true;
                            break;
                        }
                        let rest = stall_ends.saturating_duration_since(Instant::now());
                        tokio::time::sleep(Duration::from_secs(10).min(rest)).await;
                    }
                    let ended = if refused {
                        &tally.stalls_ended_by_server
                    } else {
                        &tally.stalls_ended_by_bound
                    };
                    ended.fetch_add(1, Ordering::Relaxed);
                    let waited = u64::try_from(stalled_at.elapsed().as_millis()).unwrap_or(0);
                    tally.stall_ms.fetch_add(waited, Ordering::Relaxed);
                } else {
                    let rest = until.saturating_duration_since(Instant::now());
                    tokio::time::sleep(Duration::from_secs(60).min(rest)).await;
                }
            } else if Instant::now() >= ends {
                break;
            }
            if publisher && Instant::now() >= next_publish {
                next_publish += Duration::from_secs(2);
                published += 1;
                let frame = json!({"type":"publish","room":room,"text":"soak","id":format!("c{i}-{published}")});
                if ws.send(Message::text(frame.to_string())).await.is_err() {
                    break;
                }
            }
            let frame = match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(Message::Text(text)))) => {
                    serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)
                }
                Ok(Some(Ok(Message::Close(close)))) => {
                    if !slow && !silent && close.is_some_and(|c| u16::from(c.code) == 4008) {
                        tally.readers_closed_slow.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => break,
            };
            match frame["type"].as_str() {
                Some("subscribed") if frame["room"] == room.as_str() => {
                    head = frame["cursor"].as_str().map(offset);
                    if last.is_some() && frame["recovered"] != true {
                        // Announced: the gap is the server's honest answer,
                        // counted here, not again as lost events.
                        tally.unrecovered.fetch_add(1, Ordering::Relaxed);
                        last = frame["cursor"].as_str().map(str::to_owned);
                    } else if last.is_none() {
                        last = frame["cursor"].as_str().map(str::to_owned);
                    }
                }
                Some("message" | "join" | "leave") if frame["room"] == room.as_str() => {
                    let Some(cursor) = frame["cursor"].as_str() else {
                        continue;
                    };
                    let at = offset(cursor);
                    let before = last.as_deref().map_or(0, offset);
                    tally.events.fetch_add(1, Ordering::Relaxed);
                    if at <= before {
                        tally.duplicated.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if at > before + 1 {
                        tally.lost.fetch_add(at - before - 1, Ordering::Relaxed);
                    }
                    last = Some(cursor.to_owned());
                }
                Some("ack") => {
                    tally.acked.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        // Dropped without a close frame, as a phone going away would.
        drop(ws);
    }
    tally.running.fetch_sub(1, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a long soak: scripts/soak.sh runs it"]
async fn soak_churn_returns_to_baseline_and_loses_nothing() {
    let seconds = env("SOAK_SECONDS", 1800);
    let connections = usize::try_from(env("SOAK_CONNECTIONS", 5000)).expect("count");
    let rooms = env("SOAK_ROOMS", 50);
    let queue = env("SOAK_QUEUE", 256).to_string();
    raise_fd_limit();
    let mut args = UNTHROTTLED.to_vec();
    args.extend([
        "--history-rate",
        "1000000",
        "--history-burst",
        "1000000",
        "--max-connections-per-ip",
        "100000",
        "--outbound-queue",
        &queue,
        // ~11 events/s per room at the defaults (a join and a leave per
        // session, a publish every 20 s per client): 2,000 cover three
        // minutes of absence, more than a slow or silent client's, and
        // the warm-up (200 s) fills them, so history is at its bound
        // before the baseline.
        "--retention-count",
        "2000",
    ]);
    let server = Service::standalone(&args);
    server.wait_ready(true).await;
    let target = (server.http, server.ws_url("/ws"));
    let pid = server.pid();
    let rss_fresh = server.rss_bytes();

    // Warm-up: a round at full size, so the baseline includes the
    // allocator's pools, the runtime's threads and full room histories.
    let warm = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(env("SOAK_WARMUP_SECONDS", 200));
    let tasks: Vec<_> = (0..connections)
        .map(|i| tokio::spawn(client(i, target.clone(), until, warm.clone())))
        .collect();
    for task in tasks {
        task.await.expect("client");
    }
    eprintln!("warm-up: {}", warm.summary());
    let settle = async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        (server.rss_bytes(), open_fds(pid))
    };
    let (rss_before, fds_before) = settle.await;
    eprintln!(
        "baseline after warm-up: RSS {:.1} MiB (fresh: {:.1} MiB), {fds_before} fds",
        rss_before as f64 / 1048576.0,
        rss_fresh as f64 / 1048576.0
    );

    // The server's own counts of the drops the slow and silent clients
    // must cause (a client that does not read cannot see its close frame).
    let drops = async || {
        (
            server.metric(SLOW_DROPS).await,
            server.metric(PING_FAILURES).await,
        )
    };
    let drops_before = drops().await;
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|i| tokio::spawn(client(i, target.clone(), until, tally.clone())))
        .collect();
    let mut peak_rss = 0;
    let mut peak_fds = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (rss, fds) = (server.rss_bytes(), open_fds(pid));
        peak_rss = peak_rss.max(rss);
        peak_fds = peak_fds.max(fds);
        let held = server.metric("switchboard_memory_bytes").await;
        eprintln!(
            "t={:>5}s RSS {:.1} MiB (memory bus holds {:.1} MiB) fds {fds} {} server drops {:?}",
            started.elapsed().as_secs(),
            rss as f64 / 1048576.0,
            held / 1048576.0,
            tally.summary(),
            drops().await,
        );
    }
    for task in tasks {
        task.await.expect("client");
    }
    let (rss_after, fds_after) = settle_after(&server, pid).await;
    let drops_after = drops().await;
    let slow_drops = drops_after.0 - drops_before.0;
    let silent_drops = drops_after.1 - drops_before.1;
    eprintln!(
        "SOAK {seconds}s {connections} connections {rooms} rooms, queue {queue}: {}; dropped as slow consumers {slow_drops}, by the ping timeout {silent_drops}; RSS {:.1} -> peak {:.1} -> {:.1} MiB; fds {fds_before} -> peak {peak_fds} -> {fds_after}",
        tally.summary(),
        rss_before as f64 / 1048576.0,
        peak_rss as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
    );
    assert_eq!(tally.lost.load(Ordering::Relaxed), 0, "lost events");
    assert_eq!(
        tally.duplicated.load(Ordering::Relaxed),
        0,
        "duplicated events"
    );
    assert_eq!(
        tally.unrecovered.load(Ordering::Relaxed),
        0,
        "unrecovered resumes"
    );
    // A slow client fills ~256 KiB of socket buffer and its queue in ~3
    // minutes at the default rates; the silent ones go in 45 s.
    if seconds >= 300 {
        assert!(slow_drops > 0.0, "slow consumers were closed (4008)");
    }
    if seconds >= 120 {
        assert!(silent_drops > 0.0, "silent clients were dropped");
    }
    assert!(
        (rss_after as f64) <= rss_before as f64 * 1.10,
        "RSS back within 10 %: {rss_before} -> {rss_after}"
    );
    assert!(
        (fds_after as f64) <= fds_before as f64 * 1.10,
        "fds back within 10 %: {fds_before} -> {fds_after}"
    );
}

/// RSS and fds once every connection is gone (bounded wait).
async fn settle_after(server: &Service, pid: u32) -> (u64, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = server
            .metric("switchboard_connections{transport=\"websocket\"}")
            .await;
        if open == 0.0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    (server.rss_bytes(), open_fds(pid))
}
