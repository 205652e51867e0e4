//! Presence over NATS at room scale: a real nats-server, real `switchboard
//! core` processes (two replicas racing on the same members), and two
//! "gateways" that are `NatsBus` instances in this process (20k sockets
//! would be too heavy for CI; the bus is what a gateway drives anyway).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::WAIT;
use common::procs::{Nats, Service, TempDir};
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_bus::{Bus, BusError, FeedItem};
use switchboard_core::HistoryQuery;
use switchboard_nats::{NatsBus, NatsConfig};
use switchboard_protocol::{EventKind, RoomName, SharedEvent};

/// Presence requests in flight at once, over both gateways.
const CONCURRENCY: usize = 64;

async fn gateway(url: &str, name: &str, ttl: Duration) -> Arc<NatsBus> {
    let mut config = NatsConfig::new(url, "sb", name).expect("config");
    config.presence_ttl = ttl;
    let bus = NatsBus::connect(&config).await.expect("bus connects");
    let deadline = Instant::now() + WAIT;
    while !bus.is_ready() {
        assert!(Instant::now() < deadline, "{name} did not connect in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bus
}

/// Arbitrary user names (spaces, `.`, `*`, `>`, non-ASCII): none of it
/// may leak into a KV key or subject.
fn user(i: usize) -> String {
    format!("ü.{i:05} *>")
}

/// One presence change a gateway sends: (gateway, user, connection).
type Change = (Arc<NatsBus>, String, String);

/// Sends every join (or leave) with bounded concurrency; returns the
/// failures.
async fn run_all(room: &RoomName, join: bool, changes: Vec<Change>) -> Vec<BusError> {
    futures::stream::iter(changes)
        .map(|(gw, user, conn)| async move {
            if join {
                gw.join(room, &user, &conn).await
            } else {
                gw.leave(room, &user, &conn).await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await
}

/// The room log as a gateway's live feed delivers it (only stored events
/// are republished). Each event names its predecessor, so a continuous
/// chain from the room's first event proves nothing was missed.
struct LogReader {
    events: tokio::sync::mpsc::UnboundedReceiver<Arc<SharedEvent>>,
    last_offset: u64,
    /// User → (joins, leaves).
    counts: BTreeMap<String, (usize, usize)>,
    /// User → time of their last leave event (Unix ms, core clock).
    left_at: BTreeMap<String, i64>,
    joins: usize,
    leaves: usize,
}

impl LogReader {
    async fn start(bus: &NatsBus, room: &RoomName) -> Self {
        let mut feed = bus.feed(room).await.expect("live feed");
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(item) = feed.next().await {
                match item {
                    FeedItem::Event(event, _) => {
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                    FeedItem::Lagged => panic!("the live feed lagged"),
                }
            }
        });
        Self {
            events,
            last_offset: 0,
            counts: BTreeMap::new(),
            left_at: BTreeMap::new(),
            joins: 0,
            leaves: 0,
        }
    }

    /// Reads until `joins` and `leaves` events were seen in total (bounded).
    async fn read_until(&mut self, joins: usize, leaves: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.joins < joins || self.leaves < leaves {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "log has {} joins and {} leaves, want {joins} and {leaves}",
                        self.joins, self.leaves
                    )
                })
                .expect("feed open");
            let event = event.event();
            assert_eq!(event.prev_offset, self.last_offset, "gap in the room log");
            self.last_offset = event.cursor.offset();
            let entry = self.counts.entry(event.user.clone()).or_default();
            match event.kind {
                EventKind::Join => (entry.0 += 1, self.joins += 1),
                EventKind::Leave => {
                    self.left_at.insert(event.user.clone(), event.ts_unix_ms);
                    (entry.1 += 1, self.leaves += 1)
                }
                EventKind::Message { .. } => panic!("unexpected message"),
            };
        }
    }

    /// Nothing was stored after what we read: the log's newest event is
    /// our last one.
    async fn at_head(&self, bus: &NatsBus, room: &RoomName) {
        let newest = bus
            .history(
                room,
                HistoryQuery {
                    limit: Some(1),
                    ..HistoryQuery::default()
                },
            )
            .await
            .expect("history");
        assert_eq!(
            newest.last().map(|e| e.offset()),
            Some(self.last_offset),
            "events stored beyond the expected ones"
        );
    }
}

/// Asserts two user sets are equal, reporting counts and a few examples
/// (not 20k names).
fn assert_same_users(got: Vec<String>, want: impl Iterator<Item = String>) {
    let got: BTreeSet<String> = got.into_iter().collect();
    let want: BTreeSet<String> = want.collect();
    let missing: Vec<_> = want.difference(&got).take(3).collect();
    let extra: Vec<_> = got.difference(&want).take(3).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "presence has {} users, want {}; missing e.g. {missing:?}, extra e.g. {extra:?}",
        got.len(),
        want.len()
    );
}

/// Polls `presence` until it has `want` users (bounded), and returns them.
async fn presence_settles(bus: &NatsBus, room: &RoomName, want: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let users = bus.presence(room).await.expect("presence");
        if users.len() == want || Instant::now() >= deadline {
            return users;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 20,000 members over two gateways and two core replicas: every join and
/// leave is accepted (no payload limit, no CAS exhaustion), presence lists
/// exactly the members, and the log holds exactly one join per user and
/// one leave per user who left, even for users whose two connections (one
/// per gateway, handled by either core) join and leave concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_members_over_two_gateways() {
    const MEMBERS: usize = 20_000;
    /// Users `0..TWICE` also hold a second connection on the other gateway.
    const TWICE: usize = 2_000;
    let dir = TempDir::new("presence-20k");
    let nats = Nats::start(&dir.0);
    let flags = ["--retention-count", "100000"];
    let cores = [
        Service::start("core", &nats.url(), &flags),
        Service::start("core", &nats.url(), &flags),
    ];
    for core in &cores {
        core.wait_ready(true).await;
    }
    let ttl = Duration::from_secs(30);
    let gateways = [
        gateway(&nats.url(), "gw-a", ttl).await,
        gateway(&nats.url(), "gw-b", ttl).await,
    ];
    let room = RoomName::parse("big").expect("room");
    let conn = |gw: usize, i: usize| format!("gw{gw}-conn-{i}");
    let mut log = LogReader::start(&gateways[0], &room).await;

    // Join: one connection per user, plus a concurrent second one on the
    // other gateway for the first TWICE users.
    let started = Instant::now();
    let mut joins = Vec::new();
    for i in 0..MEMBERS {
        joins.push((gateways[i % 2].clone(), user(i), conn(i % 2, i)));
        if i < TWICE {
            let other = (i + 1) % 2;
            joins.push((gateways[other].clone(), user(i), conn(other, i)));
        }
    }
    let failures = run_all(&room, true, joins).await;
    let join_time = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} joins failed: {:?}",
        failures.len(),
        &failures[..1]
    );
    eprintln!(
        "{} joins of {MEMBERS} users: {join_time:?}",
        MEMBERS + TWICE
    );

    let started = Instant::now();
    let users = gateways[0].presence(&room).await.expect("presence");
    eprintln!("presence of {} users: {:?}", users.len(), started.elapsed());
    assert_same_users(users, (0..MEMBERS).map(user));

    log.read_until(MEMBERS, 0).await;
    log.at_head(&gateways[1], &room).await;
    assert_eq!(log.counts.len(), MEMBERS);
    for i in 0..MEMBERS {
        assert_eq!(
            log.counts.get(&user(i)),
            Some(&(1, 0)),
            "events of {}",
            user(i)
        );
    }

    // Leave: even users go (both connections at once for the doubled
    // ones); odd doubled users drop only their second connection.
    let started = Instant::now();
    let mut leaves = Vec::new();
    for i in 0..MEMBERS {
        if i % 2 == 0 {
            leaves.push((gateways[i % 2].clone(), user(i), conn(i % 2, i)));
        }
        if i < TWICE {
            let other = (i + 1) % 2;
            leaves.push((gateways[other].clone(), user(i), conn(other, i)));
        }
    }
    let failures = run_all(&room, false, leaves).await;
    eprintln!("leaves: {:?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} leaves failed: {:?}",
        failures.len(),
        &failures[..1]
    );

    let users = gateways[1].presence(&room).await.expect("presence");
    assert_same_users(users, (0..MEMBERS).filter(|i| i % 2 == 1).map(user));
    log.read_until(MEMBERS, MEMBERS / 2).await;
    log.at_head(&gateways[1], &room).await;
    for i in 0..MEMBERS {
        let want = if i % 2 == 0 { (1, 1) } else { (1, 0) };
        assert_eq!(
            log.counts.get(&user(i)),
            Some(&want),
            "events of {}",
            user(i)
        );
    }
}

/// One user with 1,000 connections over two gateways, all joining at
/// once, then all leaving at once (a service account's workers, or a
/// reconnect storm of one user's tabs): every change is accepted, the
/// user is present once, and the log holds exactly one join and one
/// leave. Before the core coalesced changes to one member, most joins
/// competed for the same key and failed after their compare-and-set
/// attempts ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_of_one_user_join_and_leave_at_once() {
    const CONNS: usize = 1_000;
    let dir = TempDir::new("presence-one-user");
    let nats = Nats::start(&dir.0);
    let core = Service::start("core", &nats.url(), &["--retention-count", "10000"]);
    core.wait_ready(true).await;
    let ttl = Duration::from_secs(30);
    let gateways = [
        gateway(&nats.url(), "gw-a", ttl).await,
        gateway(&nats.url(), "gw-b", ttl).await,
    ];
    let room = RoomName::parse("crowd").expect("room");
    let mut log = LogReader::start(&gateways[0], &room).await;
    let changes = || {
        (0..CONNS)
            .map(|i| {
                (
                    gateways[i % 2].clone(),
                    "bot".to_owned(),
                    format!("conn-{i}"),
                )
            })
            .collect::<Vec<_>>()
    };
    let failures = run_all(&room, true, changes()).await;
    assert!(
        failures.is_empty(),
        "{} of {CONNS} joins failed: {:?}",
        failures.len(),
        &failures[..1]
    );
    assert_eq!(presence_settles(&gateways[1], &room, 1).await, ["bot"]);
    log.read_until(1, 0).await;

    let failures = run_all(&room, false, changes()).await;
    assert!(
        failures.is_empty(),
        "{} of {CONNS} leaves failed: {:?}",
        failures.len(),
        &failures[..1]
    );
    assert!(presence_settles(&gateways[0], &room, 0).await.is_empty());
    log.read_until(1, 1).await;
    log.at_head(&gateways[1], &room).await;
    assert_eq!(log.counts.get("bot"), Some(&(1, 1)));
}

/// A gateway that stops refreshing (crashed) loses its members within the
/// TTL: both core replicas sweep, and each member still gets exactly one
/// leave event. The other gateway's members stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_gateway_members_are_swept_once() {
    const MEMBERS: usize = 500;
    let dir = TempDir::new("presence-sweep");
    let nats = Nats::start(&dir.0);
    let ttl = Duration::from_millis(1500);
    let flags = ["--presence-ttl", "1500ms", "--retention-count", "10000"];
    let cores = [
        Service::start("core", &nats.url(), &flags),
        Service::start("core", &nats.url(), &flags),
    ];
    for core in &cores {
        core.wait_ready(true).await;
    }
    let survivor = gateway(&nats.url(), "survivor", ttl).await;
    let doomed = gateway(&nats.url(), "doomed", ttl).await;
    let room = RoomName::parse("swept").expect("room");
    let mut log = LogReader::start(&survivor, &room).await;

    let joins = (0..MEMBERS)
        .map(|i| {
            let gw = if i % 2 == 0 { &doomed } else { &survivor };
            (gw.clone(), user(i), format!("c{i}"))
        })
        .collect();
    assert!(run_all(&room, true, joins).await.is_empty());
    // Refreshed through several TTLs: nobody expires.
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(
        survivor.presence(&room).await.expect("presence").len(),
        MEMBERS
    );

    drop(doomed);
    let crashed = Instant::now();
    let users = presence_settles(&survivor, &room, MEMBERS / 2).await;
    let gone_after = crashed.elapsed();
    eprintln!("members of the crashed gateway gone after {gone_after:?}");
    assert_same_users(users, (0..MEMBERS).filter(|i| i % 2 == 1).map(user));
    // Within the TTL (1.5 s) plus one sweep period, with slack for a loaded machine.
    assert!(gone_after < Duration::from_secs(5), "{gone_after:?}");
    log.read_until(MEMBERS, MEMBERS / 2).await;
    // Both cores swept meanwhile; give a duplicate leave a sweep period
    // to show up before checking the log's head.
    tokio::time::sleep(ttl).await;
    log.at_head(&survivor, &room).await;
    for i in 0..MEMBERS {
        let want = if i % 2 == 0 { (1, 1) } else { (1, 0) };
        assert_eq!(
            log.counts.get(&user(i)),
            Some(&want),
            "events of {}",
            user(i)
        );
    }
}

/// Unix ms now, as the old layout stored refresh times.
fn unix_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("ms fit")
}

/// Upgrade from the per-room layout: a key `<room>` holding
/// `{user: {conn: last_refresh_ms}}` is migrated by exactly one of two
/// sweeping cores: the stale user leaves at once, the fresh one becomes a
/// member with its old refresh time (no second join event) and leaves
/// when that goes stale; the old key is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_per_room_keys_are_migrated() {
    let dir = TempDir::new("presence-legacy");
    let nats = Nats::start(&dir.0);
    let ttl = Duration::from_millis(1500);
    let flags = ["--presence-ttl", "1500ms"];
    let cores = [
        Service::start("core", &nats.url(), &flags),
        Service::start("core", &nats.url(), &flags),
    ];
    for core in &cores {
        core.wait_ready(true).await;
    }
    let bus = gateway(&nats.url(), "observer", ttl).await;
    let room = RoomName::parse("oldroom").expect("room");
    let mut log = LogReader::start(&bus, &room).await;

    // Written as an old core would (plain publish into the bucket's stream).
    let fresh_at = unix_ms();
    let old = serde_json::json!({
        "fresh one": {"gw-1": fresh_at},
        "stale one": {"gw-2": fresh_at - 3_600_000},
    });
    let legacy = "$KV.sb_presence.oldroom";
    bus.client()
        .publish(legacy, bytes::Bytes::from(old.to_string()))
        .await
        .expect("publish legacy value");
    bus.client().flush().await.expect("flush");

    log.read_until(0, 2).await;
    assert_eq!(log.counts.get("stale one"), Some(&(0, 1)));
    assert_eq!(log.counts.get("fresh one"), Some(&(0, 1)));
    // Adopted with its refresh time: left once that was 2/3 TTL old.
    let fresh_left = log.left_at["fresh one"];
    assert!(
        fresh_left >= fresh_at + 1000,
        "left {} ms after its refresh",
        fresh_left - fresh_at
    );
    assert!(bus.presence(&room).await.expect("presence").is_empty());
    // The other core found nothing left to migrate: no second leave.
    tokio::time::sleep(ttl).await;
    log.at_head(&bus, &room).await;

    // The old key's last message is a delete marker (it has headers; the
    // plain publish above had none).
    let reply = bus
        .client()
        .request(
            "$JS.API.STREAM.MSG.GET.KV_sb_presence",
            bytes::Bytes::from(format!(r#"{{"last_by_subj":"{legacy}"}}"#)),
        )
        .await
        .expect("stream msg get");
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).expect("JSON");
    assert!(
        reply["message"]["hdrs"].is_string(),
        "legacy key not deleted: {reply}"
    );
}
