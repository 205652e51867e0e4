//! The soak (issue 9, not in CI: `scripts/soak.sh` runs it, 30 minutes by
//! default). A standalone server (memory bus) under churn:
//!
//! * `SOAK_CONNECTIONS` (5,000) WebSocket clients over `SOAK_ROOMS` (50)
//!   rooms, each living 2-15 s, dropped without a close frame, then back,
//!   resuming from the last cursor it got;
//! * one client in ten publishes every 2 s; one in twenty is a slow
//!   consumer that stops reading for 20 s (the server, with
//!   `--outbound-queue 16`, closes it and it resumes like the others);
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
    slow_closed: AtomicU64,
    connect_failures: AtomicU64,
    running: AtomicUsize,
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

async fn client(i: usize, url: String, rooms: usize, until: Instant, tally: Arc<Tally>) {
    let room = format!("soak-{}", i % rooms);
    // `SOAK_PUBLISHERS=0` / `SOAK_SLOW=0` leave either kind out (to
    // isolate what a figure depends on).
    let publisher = env("SOAK_PUBLISHERS", 1) > 0 && i.is_multiple_of(10);
    let slow = env("SOAK_SLOW", 1) > 0 && i % 20 == 5;
    let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1);
    let mut last: Option<String> = None;
    let mut published = 0u64;
    tally.running.fetch_add(1, Ordering::Relaxed);
    while Instant::now() < until {
        let Ok(Ok((mut ws, _))) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(format!("{url}?user=c{i}")),
        )
        .await
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
        let lifetime = Duration::from_millis(2_000 + next_random(&mut seed) % 13_000);
        let ends = (Instant::now() + lifetime).min(until);
        let mut next_publish = Instant::now() + Duration::from_secs(2);
        let mut stalled = false;
        while Instant::now() < ends {
            if slow && !stalled && last.is_some() {
                // Stop reading: the server's queue for us fills up.
                stalled = true;
                tokio::time::sleep(Duration::from_secs(20).min(ends - Instant::now())).await;
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
                    if close.is_some_and(|c| u16::from(c.code) == 4008) {
                        tally.slow_closed.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => break,
            };
            match frame["type"].as_str() {
                Some("subscribed") => {
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
    let rooms = usize::try_from(env("SOAK_ROOMS", 50)).expect("count");
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
        "16",
        // ~12 events/s per room (joins and leaves included): 2,000 cover
        // almost three minutes of absence, and the warm-up fills them, so
        // history is at its bound before the baseline.
        "--retention-count",
        "2000",
    ]);
    let server = Service::standalone(&args);
    server.wait_ready(true).await;
    let url = server.ws_url("/ws");
    let pid = server.pid();

    // Warm-up: a round at full size, so the baseline includes the
    // allocator's pools, the runtime's threads and full room histories.
    let warm = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(env("SOAK_WARMUP_SECONDS", 200));
    let tasks: Vec<_> = (0..connections)
        .map(|i| tokio::spawn(client(i, url.clone(), rooms, until, warm.clone())))
        .collect();
    for task in tasks {
        task.await.expect("client");
    }
    let settle = async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        (server.rss_bytes(), open_fds(pid))
    };
    let (rss_before, fds_before) = settle.await;
    eprintln!(
        "baseline after warm-up: RSS {:.1} MiB, {fds_before} fds",
        rss_before as f64 / 1048576.0
    );

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|i| tokio::spawn(client(i, url.clone(), rooms, until, tally.clone())))
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
            "t={:>5}s RSS {:.1} MiB (memory bus holds {:.1} MiB) fds {fds} sessions {} events {} acked {} lost {} dup {} unrecovered {} slow-closed {} connect-failures {}",
            started.elapsed().as_secs(),
            rss as f64 / 1048576.0,
            held / 1048576.0,
            tally.sessions.load(Ordering::Relaxed),
            tally.events.load(Ordering::Relaxed),
            tally.acked.load(Ordering::Relaxed),
            tally.lost.load(Ordering::Relaxed),
            tally.duplicated.load(Ordering::Relaxed),
            tally.unrecovered.load(Ordering::Relaxed),
            tally.slow_closed.load(Ordering::Relaxed),
            tally.connect_failures.load(Ordering::Relaxed),
        );
    }
    for task in tasks {
        task.await.expect("client");
    }
    let (rss_after, fds_after) = settle_after(&server, pid).await;
    eprintln!(
        "SOAK {seconds}s {connections} connections {rooms} rooms: sessions {} events {} acked {} lost {} duplicated {} unrecovered {} slow-closed {} connect-failures {}; RSS {:.1} -> peak {:.1} -> {:.1} MiB; fds {fds_before} -> peak {peak_fds} -> {fds_after}",
        tally.sessions.load(Ordering::Relaxed),
        tally.events.load(Ordering::Relaxed),
        tally.acked.load(Ordering::Relaxed),
        tally.lost.load(Ordering::Relaxed),
        tally.duplicated.load(Ordering::Relaxed),
        tally.unrecovered.load(Ordering::Relaxed),
        tally.slow_closed.load(Ordering::Relaxed),
        tally.connect_failures.load(Ordering::Relaxed),
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
    assert!(
        tally.slow_closed.load(Ordering::Relaxed) > 0,
        "slow consumers were closed"
    );
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
