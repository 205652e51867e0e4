//! The hub repairs gaps in a room's live feed from history: a feed that
//! lags (its broadcast overflowed) still delivers every event once, in
//! order, to every local subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use switchboard_bus::{Bus, MemoryBus};
use switchboard_core::{CoreConfig, PublishRequest};
use switchboard_gateway::queue;
use switchboard_gateway::{ConnControl, Hub, Outbound, Subscriber};
use switchboard_protocol::RoomName;

#[tokio::test(flavor = "current_thread")]
async fn lagging_feed_is_repaired_from_history() {
    let bus = MemoryBus::new(CoreConfig {
        feed_capacity: 4,
        ..CoreConfig::default()
    });
    let hub = Hub::new(bus.clone());
    let room = RoomName::parse("lag").expect("room");
    let (tx, mut rx) = queue::channel(1000);
    let control = ConnControl::new();
    hub.subscribe(
        &room,
        1,
        Subscriber {
            tx,
            control: control.clone(),
        },
    )
    .await
    .expect("subscribed");

    // One event first, so the hub knows where it stands.
    let publish = |i: usize| PublishRequest {
        room: room.clone(),
        user: "u".into(),
        text: format!("m{i}"),
        id: None,
    };
    bus.publish(publish(0)).await.expect("publish");
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("first event in time")
        .expect("open");
    let Outbound::Event(first) = first else {
        panic!("expected an event")
    };
    assert_eq!(first.offset(), 1);

    // On a current-thread runtime the room task cannot run while we
    // publish without yielding: the 4-slot broadcast overflows.
    for i in 1..50 {
        bus.publish(publish(i)).await.expect("publish");
    }
    let mut offsets = Vec::new();
    while offsets.len() < 49 {
        let item = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("events in time")
            .expect("open");
        if let Outbound::Event(event) = item {
            offsets.push(event.offset());
        }
    }
    assert_eq!(offsets, (2..=50).collect::<Vec<u64>>());
    assert!(!control.is_closed(), "repaired, not dropped");
    assert_eq!(hub.watched_rooms(), 1);
    hub.unsubscribe(&room, 1);
    assert_eq!(hub.watched_rooms(), 0, "last subscriber stops the watch");
}

#[tokio::test(flavor = "current_thread")]
async fn full_queue_closes_only_the_slow_subscriber() {
    let bus = MemoryBus::new(CoreConfig::default());
    let hub = Hub::new(bus.clone());
    let room = RoomName::parse("slow").expect("room");
    let (slow_tx, _slow_rx) = queue::channel(2);
    let slow = ConnControl::new();
    let (fast_tx, mut fast_rx) = queue::channel(100);
    let fast = ConnControl::new();
    hub.subscribe(
        &room,
        1,
        Subscriber {
            tx: slow_tx,
            control: slow.clone(),
        },
    )
    .await
    .expect("subscribed");
    hub.subscribe(
        &room,
        2,
        Subscriber {
            tx: fast_tx,
            control: fast.clone(),
        },
    )
    .await
    .expect("subscribed");
    for i in 0..10 {
        bus.publish(PublishRequest {
            room: room.clone(),
            user: "u".into(),
            text: format!("m{i}"),
            id: None,
        })
        .await
        .expect("publish");
        tokio::task::yield_now().await;
    }
    let mut got = 0;
    while got < 10 {
        let item = tokio::time::timeout(Duration::from_secs(10), fast_rx.recv())
            .await
            .expect("in time")
            .expect("open");
        got += usize::from(matches!(item, Outbound::Event(_)));
    }
    assert_eq!(
        slow.reason(),
        Some(switchboard_gateway::CloseReason::SlowConsumer)
    );
    assert!(!fast.is_closed());
}

/// The gap check used to be off until a room's first live event: a feed
/// that lagged before delivering anything closed every subscriber instead
/// of repairing from the head the watch started at.
#[tokio::test(flavor = "current_thread")]
async fn a_lag_before_the_first_event_is_repaired_too() {
    let bus = MemoryBus::new(CoreConfig {
        feed_capacity: 4,
        ..CoreConfig::default()
    });
    let hub = Hub::new(bus.clone());
    let room = RoomName::parse("early").expect("room");
    let (tx, mut rx) = queue::channel(1000);
    let control = ConnControl::new();
    hub.subscribe(
        &room,
        1,
        Subscriber {
            tx,
            control: control.clone(),
        },
    )
    .await
    .expect("subscribed");
    // No yield: the room task has read nothing yet when the feed overflows.
    for i in 0..30 {
        bus.publish(PublishRequest {
            room: room.clone(),
            user: "u".into(),
            text: format!("m{i}"),
            id: None,
        })
        .await
        .expect("publish");
    }
    let mut offsets = Vec::new();
    while offsets.len() < 30 {
        let item = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("events in time")
            .expect("open");
        if let Outbound::Event(event) = item {
            offsets.push(event.offset());
        }
    }
    assert_eq!(offsets, (1..=30).collect::<Vec<u64>>());
    assert!(!control.is_closed(), "repaired, not dropped");
}
