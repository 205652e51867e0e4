//! The memory bus's sweeper works one shard at a time and yields between
//! shards, so sweeping many rooms never holds a runtime worker for the
//! whole walk (it used to, in one call).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_bus::{Bus, MemoryBus};
use switchboard_core::{CoreConfig, PublishRequest};
use switchboard_protocol::RoomName;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_sweep_lets_other_tasks_run_between_shards() {
    const ROOMS: usize = 3200;
    let bus = MemoryBus::new(CoreConfig {
        retention_age: Duration::from_millis(1),
        sweep_interval: Duration::from_secs(1),
        ..CoreConfig::default()
    });
    for i in 0..ROOMS {
        bus.publish(PublishRequest {
            room: RoomName::parse(&format!("r{i}")).expect("room"),
            user: "u".into(),
            text: "aging".into(),
            id: None,
        })
        .await
        .expect("publish");
    }
    assert_eq!(bus.core().room_count(), ROOMS);
    // Real time, which the core's retention reads: every event ages out.
    std::thread::sleep(Duration::from_millis(5));

    // On this one-thread runtime, a task that keeps yielding sees the room
    // count only between the sweeper's steps.
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let observer = {
        let (bus, seen) = (bus.clone(), seen.clone());
        tokio::spawn(async move {
            // Bounded: a thousand paused seconds is far past the sweep.
            for _ in 0..100_000 {
                let rooms = bus.core().room_count();
                seen.lock().expect("seen").insert(rooms);
                if rooms == 0 {
                    break;
                }
                // Yields, and moves the paused clock on towards the sweep.
                tokio::time::advance(Duration::from_millis(10)).await;
            }
        })
    };
    observer.await.expect("observer");
    assert_eq!(
        bus.core().room_count(),
        0,
        "the sweep forgot every aged room"
    );
    let seen = seen.lock().expect("seen");
    let between = seen.iter().filter(|n| **n > 0 && **n < ROOMS).count();
    assert!(
        between >= 16,
        "other tasks ran between only {between} steps of the sweep: {seen:?}"
    );
}
