//! The four scenarios, each bounded by the run's deadlines.

use crate::BenchError;
use crate::config::{Config, Protocol, PubTransport, Scenario};
use crate::net::Dialer;
use crate::payload;
use crate::publish::{self, PubShared};
use crate::report::{Cpu, Latency, Report};
use crate::subscribe::{Failure, Incoming, SubscribeTo, Subscription, open_channel, open_ws};
use crate::sys::{self, CpuTimes};
use crate::track::{Errors, Shards, StreamCheck};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Everything the tasks of one run share.
struct Run {
    config: Config,
    id: u32,
    rooms: Arc<[String]>,
    http: Dialer,
    grpc: Option<Dialer>,
    errors: Arc<Errors>,
    latency: Shards,
    deliveries: AtomicU64,
    lanes: usize,
}

/// `open` within `limit`, a `timeout` failure after it.
async fn bounded<T>(
    limit: Duration,
    open: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(limit, open)
        .await
        .unwrap_or_else(|_| Err(Failure::new("timeout")))
}

/// A publisher's connection, opened before the clock starts.
enum PubConn {
    Ws(Box<crate::subscribe::Ws>),
    Http(reqwest::Client, Arc<[String]>),
    Grpc(tonic::transport::Channel, String),
}

/// What a subscriber saw, returned when it stops.
struct SubOutcome {
    room: usize,
    checks: Vec<StreamCheck>,
    last_delivery: Option<Instant>,
}

pub async fn run(config: &Config) -> Result<Report, BenchError> {
    let fd_limit = sys::raise_fd_limit();
    let cpu_start = CpuTimes::now();
    let wall_start = Instant::now();
    let sources: Arc<[IpAddr]> = config.source_addrs.0.clone().into();
    let next = Arc::new(AtomicUsize::new(0));
    let t = &config.target;
    let http = Dialer::resolve("server", &t.host, t.port, sources.clone(), next.clone()).await?;
    let grpc = match &config.grpc {
        Some(g) => Some(Dialer::resolve("gRPC server", &g.host, g.port, sources, next).await?),
        None => None,
    };
    let id = u32::try_from(payload::now_nanos() % u64::from(u32::MAX)).unwrap_or(1)
        ^ std::process::id().rotate_left(16);
    let prefix = config
        .room_prefix
        .clone()
        .unwrap_or_else(|| format!("bench-{id:08x}"));
    let rooms: Arc<[String]> = (0..config.rooms).map(|i| format!("{prefix}-{i}")).collect();
    let lanes = config.publishers * config.lanes_per_publisher();
    let run = Arc::new(Run {
        config: config.clone(),
        id,
        rooms,
        http,
        grpc,
        errors: Arc::default(),
        latency: Shards::new(16),
        deliveries: AtomicU64::new(0),
        lanes,
    });
    let mut report = match config.scenario {
        Scenario::Fanout | Scenario::Publish => fanout(&run).await?,
        Scenario::Idle => idle(&run).await,
        Scenario::Connect => connect(&run).await,
    };
    let wall_s = wall_start.elapsed().as_secs_f64();
    let used = CpuTimes::now().since(cpu_start);
    let cores = sys::cores();
    report.cpu = Cpu {
        user_s: used.user_s,
        system_s: used.system_s,
        wall_s,
        cores,
        utilization: (used.user_s + used.system_s) / (wall_s.max(1e-9) * cores as f64),
    };
    report.fd_limit = fd_limit;
    report.errors = run.errors.snapshot();
    report.error_total = report.errors.values().sum();
    report.rate_limited = report.errors.contains_key("rate_limited");
    Ok(report)
}

fn base_report(run: &Run, subscribers: usize) -> Report {
    let c = &run.config;
    let publishing = matches!(c.scenario, Scenario::Fanout | Scenario::Publish);
    Report {
        scenario: c.scenario.name(),
        protocol: c.protocol.name(),
        url: format!("http://{}{}", c.target.authority, c.target.prefix),
        subscribe_transport: c.subscribe.name(),
        publish_transport: publishing.then(|| c.publish.name()),
        rooms: c.rooms,
        subscribers,
        subscribed: 0,
        publishers: if publishing { c.publishers } else { 0 },
        window: c.window,
        rate: c.rate,
        payload_bytes: c.payload_bytes,
        duration_s: 0.0,
        publish_attempts: 0,
        published: 0,
        publishes_per_s: 0.0,
        deliveries: 0,
        expected_deliveries: 0,
        deliveries_per_s: 0.0,
        lost: 0,
        duplicated: 0,
        reordered: 0,
        latency_us: None,
        ack_latency_us: None,
        connections: None,
        connects_per_s: None,
        connect_latency_us: None,
        server_pid: c.server_pid,
        rss_before: None,
        rss_after: None,
        rss_per_connection: None,
        cpu: Cpu {
            user_s: 0.0,
            system_s: 0.0,
            wall_s: 0.0,
            cores: 1,
            utilization: 0.0,
        },
        fd_limit: None,
        errors: Default::default(),
        error_total: 0,
        rate_limited: false,
    }
}

/// Opens subscriber `i` (room `i % rooms`, user `<prefix>-sub`: one user
/// for all, so presence stores one join per room, not one per subscriber).
async fn open_subscriber(run: &Run, i: usize) -> Result<(usize, Subscription), Failure> {
    let c = &run.config;
    let room = i % run.rooms.len();
    let user = format!("{}-sub", c.user_prefix);
    let room_name = run.rooms.get(room).map_or("", String::as_str);
    let (ws_url, sse_path) = match &c.protocol {
        Protocol::Switchboard => (c.target.ws_url(&user), c.target.sse_path(room_name, &user)),
        Protocol::Raw(paths) => (
            c.target.raw_ws_url(&paths.subscribe, room_name),
            c.target.raw_path(&paths.subscribe, room_name),
        ),
    };
    let grpc_uri = c.grpc.as_ref().map_or("", |g| g.uri.as_str());
    let dialer = match c.subscribe {
        crate::SubTransport::Grpc => run.grpc.as_ref().unwrap_or(&run.http),
        _ => &run.http,
    };
    let to = SubscribeTo {
        dialer,
        ws_url: &ws_url,
        sse_path: &sse_path,
        authority: &c.target.authority,
        grpc_uri,
        room: room_name,
        user: &user,
        raw: c.protocol.is_raw(),
    };
    match tokio::time::timeout(c.setup_timeout, Subscription::open(c.subscribe, &to)).await {
        Ok(Ok(sub)) => Ok((room, sub)),
        Ok(Err(failure)) => Err(failure),
        Err(_) => Err(Failure::new("timeout")),
    }
}

/// Opens `count` subscribers, `--concurrency` at a time; each then runs
/// `receive` until `stop`. Returns the handles and how many subscribed per
/// room, once all have answered or the setup timeout passed.
async fn open_subscribers(
    run: &Arc<Run>,
    count: usize,
    stop: &CancellationToken,
    track: bool,
) -> (Vec<JoinHandle<Option<SubOutcome>>>, Vec<usize>) {
    let gate = Arc::new(Semaphore::new(run.config.concurrency));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let (run, gate, ready, stop) = (run.clone(), gate.clone(), ready_tx.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.ok()?;
            let opened = open_subscriber(&run, i).await;
            drop(permit);
            let (room, sub) = match opened {
                Ok(ok) => ok,
                Err(Failure(code)) => {
                    run.errors.add(&code);
                    let _ = ready.send(None);
                    return None;
                }
            };
            let _ = ready.send(Some(room));
            Some(receive(&run, i, room, sub, &stop, track).await)
        }));
    }
    drop(ready_tx);
    let mut per_room = vec![0usize; run.rooms.len()];
    let deadline = Instant::now() + run.config.setup_timeout + Duration::from_secs(1);
    for _ in 0..count {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Some(room))) => {
                if let Some(n) = per_room.get_mut(room) {
                    *n += 1;
                }
            }
            Ok(Some(None)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    (handles, per_room)
}

/// A subscriber's receive loop: checks each bench message of this run.
async fn receive(
    run: &Run,
    i: usize,
    room: usize,
    mut sub: Subscription,
    stop: &CancellationToken,
    track: bool,
) -> SubOutcome {
    let mut checks = vec![StreamCheck::default(); if track { run.lanes } else { 0 }];
    let mut last_delivery = None;
    // Made once: each `cancelled()` registers with the token, which every
    // subscriber shares, under its mutex.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let next = tokio::select! {
            biased;
            () = &mut stopped => break,
            next = sub.next() => next,
        };
        match next {
            Ok(Some(Incoming::Message(text))) => {
                let now = payload::now_nanos();
                let Some((lane, seq, sent)) = payload::decode(run.id, &text) else {
                    continue;
                };
                let Some(check) = checks.get_mut(lane) else {
                    continue;
                };
                check.observe(seq);
                run.latency.record(i, now.saturating_sub(sent) / 1000);
                run.deliveries.fetch_add(1, Ordering::Relaxed);
                last_delivery = Some(Instant::now());
            }
            Ok(Some(Incoming::Other)) => {}
            Ok(None) => {
                run.errors.add("closed");
                break;
            }
            Err(Failure(code)) => {
                run.errors.add(&code);
                break;
            }
        }
    }
    sub.close().await;
    SubOutcome {
        room,
        checks,
        last_delivery,
    }
}

/// Waits for subscriber tasks to stop after `stop` was cancelled (bounded;
/// a task that does not stop is aborted and its counts are lost).
async fn join_all(handles: Vec<JoinHandle<Option<SubOutcome>>>) -> Vec<SubOutcome> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        let abort = handle.abort_handle();
        match tokio::time::timeout_at(deadline, handle).await {
            Ok(Ok(Some(outcome))) => out.push(outcome),
            Ok(_) => {}
            Err(_) => abort.abort(),
        }
    }
    out
}

async fn fanout(run: &Arc<Run>) -> Result<Report, BenchError> {
    let c = &run.config;
    let subscribers = c.connections;
    let mut report = base_report(run, subscribers);
    let stop = CancellationToken::new();
    let (handles, per_room) = open_subscribers(run, subscribers, &stop, true).await;
    report.subscribed = per_room.iter().sum();
    // Bounded by the flag; a plain wait, before the clock starts.
    if !c.settle.is_zero() {
        tokio::time::sleep(c.settle).await;
    }

    // Publishers: connections first, then the clock starts.
    let request_timeout = c.drain_timeout.max(Duration::from_secs(5));
    let per_lane_period = c
        .rate
        .map(|r| Duration::from_secs_f64(run.lanes as f64 / r));
    let mut conns = Vec::with_capacity(c.publishers);
    for p in 0..c.publishers {
        let user = format!("{}-pub{p}", c.user_prefix);
        let conn = match c.publish {
            PubTransport::Ws => {
                bounded(c.setup_timeout, open_ws(&run.http, &c.target.ws_url(&user)))
                    .await
                    .map(|ws| PubConn::Ws(Box::new(ws)))
            }
            PubTransport::Http => {
                let mut builder = reqwest::Client::builder()
                    .timeout(request_timeout)
                    .pool_max_idle_per_host(c.window)
                    .tcp_nodelay(true);
                if let Some(source) = run.http.source() {
                    builder = builder.local_address(source);
                }
                let client = builder
                    .build()
                    .map_err(|err| BenchError::Setup(format!("HTTP client: {err}")))?;
                let urls: Arc<[String]> = run
                    .rooms
                    .iter()
                    .map(|r| match &c.protocol {
                        Protocol::Switchboard => c.target.publish_url(r, &user),
                        Protocol::Raw(paths) => c.target.raw_http_url(&paths.publish, r),
                    })
                    .collect();
                Ok(PubConn::Http(client, urls))
            }
            PubTransport::Grpc => {
                let dialer = run.grpc.as_ref().unwrap_or(&run.http);
                let uri = c.grpc.as_ref().map_or("", |g| g.uri.as_str());
                bounded(c.setup_timeout, open_channel(dialer, uri))
                    .await
                    .map(|channel| PubConn::Grpc(channel, user))
            }
        };
        match conn {
            Ok(conn) => conns.push((p, conn)),
            Err(Failure(code)) => run.errors.add(&code),
        }
    }
    // Publishers are connected: the clock starts.
    let start = Instant::now();
    let shared = Arc::new(PubShared::new(
        run.id,
        c,
        run.rooms.clone(),
        run.lanes,
        start + c.duration,
        run.errors.clone(),
        request_timeout,
    ));
    let lanes_per = c.lanes_per_publisher();
    let mut lanes: Vec<JoinHandle<()>> = Vec::new();
    for (p, conn) in conns {
        match conn {
            PubConn::Ws(ws) => lanes.push(tokio::spawn(publish::ws_publisher(
                *ws,
                p,
                shared.clone(),
                c.window,
                publish::pacer(per_lane_period, start, p, run.lanes),
            ))),
            PubConn::Http(client, urls) => {
                for l in 0..lanes_per {
                    lanes.push(tokio::spawn(publish::http_lane(
                        client.clone(),
                        urls.clone(),
                        p * lanes_per + l,
                        shared.clone(),
                        publish::pacer(per_lane_period, start, p * lanes_per + l, run.lanes),
                    )));
                }
            }
            PubConn::Grpc(channel, user) => {
                for l in 0..lanes_per {
                    lanes.push(tokio::spawn(publish::grpc_lane(
                        channel.clone(),
                        user.clone(),
                        p * lanes_per + l,
                        shared.clone(),
                        publish::pacer(per_lane_period, start, p * lanes_per + l, run.lanes),
                    )));
                }
            }
        }
    }
    let lanes_deadline = start + c.duration + request_timeout * 2;
    for lane in lanes {
        let abort = lane.abort_handle();
        if tokio::time::timeout_at(lanes_deadline, lane).await.is_err() {
            abort.abort();
        }
    }
    let published_at = start.elapsed();

    // Drain: every acknowledged message should reach every subscriber of
    // its room.
    let expected: u64 = (0..run.rooms.len())
        .map(|room| {
            let acked: u64 = (0..run.lanes).map(|lane| shared.acked(lane, room)).sum();
            acked * per_room.get(room).copied().unwrap_or(0) as u64
        })
        .sum();
    let drain_deadline = Instant::now() + c.drain_timeout;
    let mut poll = tokio::time::interval(Duration::from_millis(5));
    while run.deliveries.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        poll.tick().await;
    }
    stop.cancel();
    let outcomes = join_all(handles).await;

    let mut last = None;
    for outcome in &outcomes {
        last = last.max(outcome.last_delivery);
        for (lane, check) in outcome.checks.iter().enumerate() {
            let sent = shared.acked(lane, outcome.room);
            report.lost += sent.saturating_sub(check.distinct);
            report.duplicated += check.duplicated;
            report.reordered += check.reordered;
        }
    }
    let delivered_in = last.map_or(published_at, |l| l.duration_since(start));
    report.duration_s = published_at.as_secs_f64();
    report.publish_attempts = shared.attempts.load(Ordering::Relaxed);
    report.published = shared.acked_total();
    report.publishes_per_s = report.published as f64 / published_at.as_secs_f64().max(1e-9);
    report.deliveries = run.deliveries.load(Ordering::Relaxed);
    report.expected_deliveries = expected;
    report.deliveries_per_s = report.deliveries as f64 / delivered_in.as_secs_f64().max(1e-9);
    report.latency_us = Latency::of(&run.latency.merged());
    report.ack_latency_us = Latency::of(&shared.ack_latency.merged());
    Ok(report)
}

async fn idle(run: &Arc<Run>) -> Report {
    let c = &run.config;
    let mut report = base_report(run, c.connections);
    let rss_before = c.server_pid.and_then(sys::rss_bytes);
    let stop = CancellationToken::new();
    let opened = Instant::now();
    let (handles, per_room) = open_subscribers(run, c.connections, &stop, false).await;
    let subscribed: usize = per_room.iter().sum();
    let open_s = opened.elapsed().as_secs_f64();
    // The scenario is holding connections for the duration: a plain wait.
    tokio::time::sleep(c.duration).await;
    let rss_after = c.server_pid.and_then(sys::rss_bytes);
    stop.cancel();
    let _ = join_all(handles).await;
    report.subscribed = subscribed;
    report.connections = Some(subscribed as u64);
    report.connects_per_s = Some(subscribed as f64 / open_s.max(1e-9));
    report.duration_s = c.duration.as_secs_f64();
    report.rss_before = rss_before;
    report.rss_after = rss_after;
    if let (Some(before), Some(after)) = (rss_before, rss_after)
        && subscribed > 0
    {
        report.rss_per_connection = Some((after as f64 - before as f64) / subscribed as f64);
    }
    report
}

async fn connect(run: &Arc<Run>) -> Report {
    let c = &run.config;
    let mut report = base_report(run, c.connections);
    let hist = Arc::new(Shards::new(16));
    let claimed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + c.duration;
    let mut workers = Vec::new();
    for w in 0..c.concurrency.min(c.connections) {
        let (run, hist, claimed, done) = (run.clone(), hist.clone(), claimed.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let total = run.config.connections;
            loop {
                let i = claimed.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                let began = Instant::now();
                match open_subscriber(&run, i).await {
                    Ok((_, sub)) => {
                        hist.record(
                            w,
                            u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX),
                        );
                        done.fetch_add(1, Ordering::Relaxed);
                        sub.close().await;
                    }
                    Err(Failure(code)) => run.errors.add(&code),
                }
            }
        }));
    }
    let bound = deadline + c.setup_timeout;
    for worker in workers {
        let abort = worker.abort_handle();
        if tokio::time::timeout_at(bound, worker).await.is_err() {
            abort.abort();
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    report.subscribed = usize::try_from(n).unwrap_or(usize::MAX);
    report.connections = Some(n);
    report.connects_per_s = Some(n as f64 / wall.max(1e-9));
    report.connect_latency_us = Latency::of(&hist.merged());
    report.duration_s = wall;
    report
}
