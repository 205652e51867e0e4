//! The fault suite (issue 9, "durability as configured and as tested"):
//! a real 3-node JetStream cluster (`sync_interval: always`, R3), two
//! cores and two WebSocket gateways, under a steady publish load, with a
//! Jepsen-style check of what every subscriber saw.
//!
//! * Every publish carries a unique id; a publisher retries the same id
//!   until it is acknowledged (on another gateway if its own is gone),
//!   as a client following the spec does.
//! * Subscribers stay subscribed, and after a disconnect resume from the
//!   cursor of the last event they got.
//! * At the end every acknowledged id is classified at every subscriber:
//!   seen once (ok), never (lost), more than once (duplicated), and every
//!   step back in the offsets a subscriber saw counts as reordered. The
//!   guarantee is 0 lost, 0 duplicated, 0 reordered, and every resume
//!   `recovered`.
//!
//! Faults, each run `FAULT_RUNS` times (default 2): SIGKILL of the stream
//! leader; SIGKILL of a follower; SIGSTOP of the leader past the election
//! timeout; a whole-cluster restart (every node SIGKILLed, then started);
//! SIGKILL of a core and of a gateway mid-publish; and a network fault
//! between a gateway and NATS, through a proxy ([`common::proxy`]) that
//! cuts, black-holes or delays (400 ms each way) the links. Each run prints one line of
//! the table in `docs/RELIABILITY.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::UNTHROTTLED;
use common::procs::{ClusterOptions, NatsCluster, Service, TempDir};
use common::proxy::{FaultProxy, Link};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Publishers and subscribers of every run.
const PUBLISHERS: usize = 3;
const SUBSCRIBERS: usize = 2;
/// Pause between one publisher's acknowledged publish and its next.
const PACE: Duration = Duration::from_millis(15);
/// Load before the fault and after it healed.
const BEFORE: Duration = Duration::from_secs(2);
const AFTER: Duration = Duration::from_secs(3);
/// Bound of one publish, retries included: past it the run fails.
const PUBLISH_BOUND: Duration = Duration::from_secs(60);
/// Bound of the subscribers' catching up at the end.
const DRAIN_BOUND: Duration = Duration::from_secs(60);
/// Longer than JetStream's election timeout (a leader is replaced after
/// a few seconds of silence).
const PAUSE: Duration = Duration::from_secs(8);
const STREAM: &str = "SB_ROOMS";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn offset(cursor: &str) -> u64 {
    cursor
        .rsplit_once(':')
        .and_then(|(_, o)| o.parse().ok())
        .unwrap_or_else(|| panic!("cursor {cursor}"))
}

/// The WebSocket URLs of the running gateways; clients read it on every
/// reconnect, so a restarted gateway (new port) is found again.
type Gateways = Arc<Mutex<Vec<String>>>;

async fn connect(gateways: &Gateways, pick: usize, user: &str) -> Option<Ws> {
    let urls = gateways.lock().expect("urls").clone();
    let url = urls.get(pick % urls.len().max(1))?;
    let attempt = tokio::time::timeout(
        Duration::from_secs(2),
        tokio_tungstenite::connect_async(format!("{url}?user={user}")),
    )
    .await;
    match attempt {
        Ok(Ok((ws, _))) => Some(ws),
        _ => None,
    }
}

async fn next_json(ws: &mut Ws, within: Duration) -> Result<Option<Value>, ()> {
    match tokio::time::timeout(within, ws.next()).await {
        Err(_) => Ok(None),
        Ok(Some(Ok(Message::Text(text)))) => Ok(serde_json::from_str(&text).ok()),
        Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => Err(()),
        Ok(Some(Ok(_))) => Ok(None),
    }
}

struct Acked {
    id: String,
    offset: u64,
    /// From the first attempt to the ack.
    took: Duration,
}

/// Publishes `p<k>-<n>` one after another until `stop`, each retried
/// with its id until acknowledged.
fn publisher(
    k: usize,
    room: String,
    gateways: Gateways,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<Acked>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut ws: Option<Ws> = None;
        let mut pick = k;
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let id = format!("p{k}-{n}");
            let first = Instant::now();
            loop {
                assert!(
                    first.elapsed() < PUBLISH_BOUND,
                    "publish {id} not acknowledged within {PUBLISH_BOUND:?}"
                );
                if ws.is_none() {
                    ws = connect(&gateways, pick, &format!("pub{k}")).await;
                    if ws.is_none() {
                        pick += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
                let conn = ws.as_mut().expect("connected");
                let frame = json!({"type":"publish","room":room,"text":"x","id":id}).to_string();
                if conn.send(Message::text(frame)).await.is_err() {
                    ws = None;
                    pick += 1;
                    continue;
                }
                let answer = loop {
                    match next_json(conn, Duration::from_secs(5)).await {
                        Ok(Some(frame)) if frame["id"] == id.as_str() => break Some(frame),
                        Ok(Some(_)) => {}
                        Ok(None) | Err(()) => break None,
                    }
                };
                match answer {
                    Some(frame) if frame["type"] == "ack" => {
                        let cursor = frame["cursor"].as_str().expect("cursor");
                        acked.push(Acked {
                            id: id.clone(),
                            offset: offset(cursor),
                            took: first.elapsed(),
                        });
                        break;
                    }
                    Some(frame) => {
                        assert_eq!(frame["code"], "unavailable", "only unavailable: {frame}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    None => {
                        // No answer in time, or the connection ended:
                        // reconnect (maybe elsewhere) and send the id again.
                        ws = None;
                        pick += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            n += 1;
            tokio::time::sleep(PACE).await;
        }
        acked
    })
}

#[derive(Default)]
struct Seen {
    /// (id, offset) in arrival order.
    events: Vec<(String, u64)>,
    resumes: usize,
    /// The offset each resume started from, and the events seen by then.
    resumed_at: Vec<(u64, usize)>,
    unrecovered: usize,
}

/// Subscribes (resuming from its last cursor after every disconnect)
/// until it has seen `until`'s offset.
fn subscriber(
    j: usize,
    room: String,
    gateways: Gateways,
    mut until: watch::Receiver<Option<u64>>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut last: Option<String> = None;
        let mut pick = j;
        let mut announced = false;
        let deadline_after_target = |target_set: Option<Instant>| {
            target_set.is_some_and(|at: Instant| at.elapsed() > DRAIN_BOUND)
        };
        let mut target_set: Option<Instant> = None;
        loop {
            let Some(mut ws) = connect(&gateways, pick, &format!("sub{j}")).await else {
                pick += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                if deadline_after_target(target_set) {
                    return seen;
                }
                continue;
            };
            let mut subscribe = json!({"type":"subscribe","room":room});
            if let Some(cursor) = &last {
                subscribe["since"] = json!(cursor);
                seen.resumes += 1;
                seen.resumed_at.push((offset(cursor), seen.events.len()));
            }
            if ws.send(Message::text(subscribe.to_string())).await.is_err() {
                pick += 1;
                continue;
            }
            let mut subscribed = false;
            loop {
                if until.has_changed().unwrap_or(false) {
                    until.borrow_and_update();
                }
                let target = *until.borrow();
                if target.is_some() && target_set.is_none() {
                    target_set = Some(Instant::now());
                }
                if let (Some(target), Some(cursor)) = (target, &last)
                    && offset(cursor) >= target
                {
                    return seen;
                }
                if deadline_after_target(target_set) {
                    return seen;
                }
                match next_json(&mut ws, Duration::from_millis(500)).await {
                    Ok(Some(frame)) => match frame["type"].as_str() {
                        Some("subscribed") => {
                            subscribed = true;
                            if frame["recovered"] == false {
                                seen.unrecovered += 1;
                            }
                            if !announced {
                                announced = true;
                                let _ = ready.send(()).await;
                            }
                        }
                        Some("message") if frame["room"] == room.as_str() => {
                            let cursor = frame["cursor"].as_str().expect("cursor").to_owned();
                            let id = frame["id"].as_str().unwrap_or_default().to_owned();
                            seen.events.push((id, offset(&cursor)));
                            last = Some(cursor);
                        }
                        Some("error") if !subscribed => break,
                        _ => {}
                    },
                    Ok(None) => {}
                    Err(()) => break,
                }
            }
            pick += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The whole deployment, alive across the runs.
struct Deployment {
    _dir: TempDir,
    cluster: NatsCluster,
    /// One per node: the only way gateway 0 reaches NATS.
    proxies: Vec<FaultProxy>,
    cores: Vec<Service>,
    gateways: Vec<Option<Service>>,
    urls: Gateways,
}

impl Deployment {
    async fn start() -> Self {
        let dir = TempDir::new("fault-suite");
        let cluster = NatsCluster::start_with(
            &dir.0,
            ClusterOptions {
                sync_always: true,
                no_advertise: true,
            },
        );
        let mut proxies = Vec::new();
        for node in &cluster.nodes {
            proxies.push(FaultProxy::start(node.port).await);
        }
        let mut deployment = Self {
            _dir: dir,
            cluster,
            proxies,
            cores: Vec::new(),
            gateways: vec![None, None],
            urls: Arc::new(Mutex::new(Vec::new())),
        };
        for _ in 0..2 {
            deployment.cores.push(deployment.start_core());
        }
        for core in &deployment.cores {
            core.wait_ready(true).await;
        }
        for g in 0..2 {
            deployment.start_gateway(g).await;
        }
        deployment
    }

    fn start_core(&self) -> Service {
        let mut args = UNTHROTTLED.to_vec();
        args.extend(["--jetstream-replicas", "3"]);
        Service::start("core", &self.cluster.urls(), &args)
    }

    /// Gateway 0 reaches NATS through the proxies, gateway 1 directly.
    async fn start_gateway(&mut self, g: usize) {
        let urls = if g == 0 {
            self.proxies
                .iter()
                .map(FaultProxy::url)
                .collect::<Vec<_>>()
                .join(",")
        } else {
            self.cluster.urls()
        };
        let gateway = Service::start("ws-gateway", &urls, &UNTHROTTLED);
        gateway.wait_ready(true).await;
        self.gateways[g] = Some(gateway);
        self.publish_urls();
    }

    fn publish_urls(&self) {
        let urls = self
            .gateways
            .iter()
            .flatten()
            .map(|g| g.ws_url("/ws"))
            .collect();
        *self.urls.lock().expect("urls") = urls;
    }

    /// The name of the node leading the room-log stream.
    async fn leader(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for node in &self.cluster.nodes {
                let Ok(client) = async_nats::connect(node.url()).await else {
                    continue;
                };
                let js = async_nats::jetstream::new(client);
                if let Ok(mut stream) = js.get_stream(STREAM).await
                    && let Ok(info) = stream.info().await
                    && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
                {
                    return leader;
                }
            }
            assert!(Instant::now() < deadline, "the stream has no leader");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn node_named(&mut self, name: &str) -> usize {
        self.cluster
            .nodes
            .iter()
            .position(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Injects `fault` and heals it; returns when the deployment is whole.
    async fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::KillLeader | Fault::KillFollower => {
                let leader = self.leader().await;
                let leader = self.node_named(&leader);
                let victim = if fault == Fault::KillLeader {
                    leader
                } else {
                    (leader + 1) % 3
                };
                self.cluster.nodes[victim].kill();
                tokio::time::sleep(Duration::from_secs(3)).await;
                self.cluster.nodes[victim].start_again();
            }
            Fault::PauseLeader => {
                let leader = self.leader().await;
                let leader = self.node_named(&leader);
                self.cluster.nodes[leader].freeze(true);
                tokio::time::sleep(PAUSE).await;
                self.cluster.nodes[leader].freeze(false);
            }
            Fault::RestartCluster => {
                for node in &mut self.cluster.nodes {
                    node.kill();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                for node in &mut self.cluster.nodes {
                    node.start_again();
                }
            }
            Fault::KillCoreAndGateway => {
                self.cores[0].kill();
                self.gateways[1] = None;
                self.publish_urls();
                tokio::time::sleep(Duration::from_secs(2)).await;
                self.cores[0] = self.start_core();
                self.cores[0].wait_ready(true).await;
                self.start_gateway(1).await;
            }
            Fault::DelayGateway => {
                for proxy in &self.proxies {
                    proxy.delay(Duration::from_millis(400));
                }
                tokio::time::sleep(Duration::from_secs(4)).await;
                for proxy in &self.proxies {
                    proxy.delay(Duration::ZERO);
                }
            }
            Fault::CutGateway | Fault::BlackholeGateway => {
                let link = if fault == Fault::CutGateway {
                    Link::Cut
                } else {
                    Link::Drop
                };
                for proxy in &self.proxies {
                    proxy.set(link);
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                for proxy in &self.proxies {
                    proxy.set(Link::Pass);
                }
            }
        }
        // Whole again: every core and gateway ready.
        for core in &self.cores {
            core.wait_ready(true).await;
        }
        for gateway in self.gateways.iter().flatten() {
            gateway.wait_ready(true).await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillLeader,
    KillFollower,
    PauseLeader,
    RestartCluster,
    KillCoreAndGateway,
    CutGateway,
    BlackholeGateway,
    DelayGateway,
}

/// One run's figures: a row of the table.
#[derive(Debug)]
struct Outcome {
    acked: usize,
    lost: usize,
    duplicated: usize,
    reordered: usize,
    unrecovered: usize,
    resumes: usize,
    /// The longest a publish waited for its ack, retries included.
    recovery: Duration,
}

async fn run(deployment: &mut Deployment, fault: Fault, room: &str) -> Outcome {
    let (until_tx, until_rx) = watch::channel(None);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(SUBSCRIBERS);
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|j| {
            subscriber(
                j,
                room.to_owned(),
                deployment.urls.clone(),
                until_rx.clone(),
                ready_tx.clone(),
            )
        })
        .collect();
    for _ in 0..SUBSCRIBERS {
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
            .await
            .expect("subscribers subscribe in time");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|k| publisher(k, room.to_owned(), deployment.urls.clone(), stop.clone()))
        .collect();
    tokio::time::sleep(BEFORE).await;
    deployment.inject(fault).await;
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    for publisher in publishers {
        acked.extend(publisher.await.expect("publisher"));
    }
    let last = acked
        .iter()
        .map(|a| a.offset)
        .max()
        .expect("something was acked");
    until_tx.send(Some(last)).expect("subscribers listen");
    let mut seen = Vec::new();
    for subscriber in subscribers {
        seen.push(subscriber.await.expect("subscriber"));
    }

    let mut outcome = Outcome {
        acked: acked.len(),
        lost: 0,
        duplicated: 0,
        reordered: 0,
        unrecovered: 0,
        resumes: 0,
        recovery: acked.iter().map(|a| a.took).max().unwrap_or_default(),
    };
    for subscriber in &seen {
        let mut count: HashMap<&str, usize> = HashMap::new();
        for (id, _) in &subscriber.events {
            *count.entry(id.as_str()).or_default() += 1;
        }
        for ack in &acked {
            match count.get(ack.id.as_str()).copied().unwrap_or(0) {
                0 => {
                    outcome.lost += 1;
                    let near: Vec<&(String, u64)> = subscriber
                        .events
                        .iter()
                        .filter(|(_, o)| o.abs_diff(ack.offset) < 8)
                        .collect();
                    eprintln!(
                        "lost {} at offset {} (took {:?}); seen near it: {near:?}; resumed at {:?}",
                        ack.id, ack.offset, ack.took, subscriber.resumed_at
                    );
                }
                1 => {}
                more => outcome.duplicated += more - 1,
            }
        }
        outcome.reordered += subscriber
            .events
            .windows(2)
            .filter(|w| w[1].1 <= w[0].1)
            .count();
        outcome.unrecovered += subscriber.unrecovered;
        outcome.resumes += subscriber.resumes;
    }
    outcome
}

/// One deployment at a time: two would share the machine's two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn suite(faults: &[Fault]) {
    let _alone = ONE_AT_A_TIME.lock().await;
    // `FAULT_ONLY=KillLeader,…` runs only those (when looking into one).
    let only = std::env::var("FAULT_ONLY").unwrap_or_default();
    let faults: Vec<Fault> = faults
        .iter()
        .copied()
        .filter(|f| only.is_empty() || only.split(',').any(|o| o == format!("{f:?}")))
        .collect();
    if faults.is_empty() {
        return;
    }
    let runs: usize = std::env::var("FAULT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut deployment = Deployment::start().await;
    let mut failures = Vec::new();
    for fault in &faults {
        for r in 0..runs {
            let room = format!("fault-{fault:?}-{r}").to_lowercase();
            let outcome = run(&mut deployment, *fault, &room).await;
            eprintln!(
                "| {fault:?} | run {r} | acked {} | lost {} | duplicated {} | reordered {} | unrecovered {} | resumes {} | longest publish {:.1} s |",
                outcome.acked,
                outcome.lost,
                outcome.duplicated,
                outcome.reordered,
                outcome.unrecovered,
                outcome.resumes,
                outcome.recovery.as_secs_f64()
            );
            if outcome.lost + outcome.duplicated + outcome.reordered + outcome.unrecovered > 0 {
                failures.push(format!("{fault:?} run {r}: {outcome:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "guarantees broken: {failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_node_faults_lose_nothing() {
    suite(&[
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::PauseLeader,
        Fault::RestartCluster,
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_and_network_faults_lose_nothing() {
    suite(&[
        Fault::KillCoreAndGateway,
        Fault::CutGateway,
        Fault::BlackholeGateway,
        Fault::DelayGateway,
    ])
    .await;
}
