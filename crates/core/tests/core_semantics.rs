use std::time::Duration;
use switchboard_core::{Core, CoreConfig, CoreError, HistoryQuery, PublishRequest};
use switchboard_protocol::{Cursor, EventKind, RoomName};

fn room(name: &str) -> RoomName {
    RoomName::parse(name).expect("valid room")
}

fn publish(core: &Core, r: &str, text: &str, id: Option<&str>) -> switchboard_core::PublishOutcome {
    core.publish(PublishRequest {
        room: room(r),
        user: "alice".into(),
        text: text.into(),
        id: id.map(str::to_owned),
    })
    .expect("publish accepted")
}

#[test]
fn offsets_increase_and_prev_links_form_a_chain() {
    let core = Core::new(CoreConfig::default());
    let a = publish(&core, "r", "1", None);
    let b = publish(&core, "r", "2", None);
    assert_eq!(a.cursor.offset() + 1, b.cursor.offset());
    let ev = b.event.expect("stored");
    assert_eq!(ev.event().prev_offset, a.cursor.offset());
    assert_eq!(a.cursor.epoch(), b.cursor.epoch());
}

#[test]
fn duplicate_id_returns_original_cursor_without_a_new_event() {
    let core = Core::new(CoreConfig::default());
    let first = publish(&core, "r", "hi", Some("c-1"));
    let again = publish(&core, "r", "hi", Some("c-1"));
    assert!(again.duplicate && again.event.is_none());
    assert_eq!(again.cursor, first.cursor);
    // Same id in another room is a different message.
    assert!(!publish(&core, "other", "hi", Some("c-1")).duplicate);
    let events = core
        .history(&room("r"), &HistoryQuery::default())
        .expect("history");
    assert_eq!(events.len(), 1);
}

#[test]
fn dedup_window_expires() {
    let core = Core::new(CoreConfig {
        dedup_window: Duration::ZERO,
        ..CoreConfig::default()
    });
    publish(&core, "r", "hi", Some("c-1"));
    std::thread::sleep(Duration::from_millis(2));
    assert!(!publish(&core, "r", "hi", Some("c-1")).duplicate);
}

#[test]
fn retention_by_count_makes_old_cursors_unrecoverable() {
    let core = Core::new(CoreConfig {
        retention_count: 3,
        ..CoreConfig::default()
    });
    let first = publish(&core, "r", "0", None);
    let cursors: Vec<_> = (1..=5)
        .map(|i| publish(&core, "r", &i.to_string(), None).cursor)
        .collect();
    let (lost, _) = core
        .subscribe(&room("r"), Some(&first.cursor))
        .expect("room");
    assert!(!lost.recovered);
    assert!(lost.events.is_empty());
    let (ok, _) = core.subscribe(&room("r"), Some(&cursors[1])).expect("room");
    assert!(ok.recovered);
    let offsets: Vec<_> = ok.events.iter().map(|e| e.offset()).collect();
    assert_eq!(
        offsets,
        vec![
            cursors[2].offset(),
            cursors[3].offset(),
            cursors[4].offset()
        ]
    );
    assert_eq!(ok.head, cursors[4]);
}

#[test]
fn retention_by_age() {
    let core = Core::new(CoreConfig {
        retention_age: Duration::ZERO,
        ..CoreConfig::default()
    });
    let c = publish(&core, "r", "0", None).cursor;
    publish(&core, "r", "1", None);
    std::thread::sleep(Duration::from_millis(2));
    assert!(
        core.history(&room("r"), &HistoryQuery::default())
            .expect("history")
            .is_empty()
    );
    assert!(!core.resume(&room("r"), Some(&c)).expect("room").recovered);
}

#[test]
fn foreign_epoch_and_future_cursors_are_not_recovered() {
    let core = Core::new(CoreConfig::default());
    let head = publish(&core, "r", "x", None).cursor;
    let foreign: Cursor = "zzzz:1".parse().expect("cursor");
    assert!(
        !core
            .resume(&room("r"), Some(&foreign))
            .expect("room")
            .recovered
    );
    let future = Cursor::new(head.epoch().clone(), head.offset() + 10);
    assert!(
        !core
            .resume(&room("r"), Some(&future))
            .expect("room")
            .recovered
    );
    let at_head = core.resume(&room("r"), Some(&head)).expect("room");
    assert!(at_head.recovered && at_head.events.is_empty());
    assert!(matches!(
        core.history(
            &room("r"),
            &HistoryQuery {
                after: Some(foreign),
                ..Default::default()
            }
        ),
        Err(CoreError::Protocol(_))
    ));
}

#[test]
fn history_before_and_after() {
    let core = Core::new(CoreConfig::default());
    let cs: Vec<_> = (0..10)
        .map(|i| publish(&core, "r", &i.to_string(), None).cursor)
        .collect();
    let q = HistoryQuery {
        before: Some(cs[5].clone()),
        limit: Some(3),
        ..Default::default()
    };
    let got: Vec<_> = core
        .history(&room("r"), &q)
        .expect("ok")
        .iter()
        .map(|e| e.offset())
        .collect();
    assert_eq!(got, vec![cs[2].offset(), cs[3].offset(), cs[4].offset()]);
    let q = HistoryQuery {
        after: Some(cs[5].clone()),
        limit: Some(2),
        ..Default::default()
    };
    let got: Vec<_> = core
        .history(&room("r"), &q)
        .expect("ok")
        .iter()
        .map(|e| e.offset())
        .collect();
    assert_eq!(got, vec![cs[6].offset(), cs[7].offset()]);
}

#[test]
fn presence_counts_connections_per_user() {
    let core = Core::new(CoreConfig::default());
    let r = room("r");
    let join = core
        .join(&r, "bob", "c1")
        .expect("room")
        .expect("first connection joins");
    assert_eq!(join.event().kind, EventKind::Join);
    assert!(core.join(&r, "bob", "c2").expect("room").is_none());
    assert!(core.join(&r, "amy", "c3").expect("room").is_some());
    assert_eq!(
        core.presence(&r),
        vec!["amy".to_string(), "bob".to_string()]
    );
    assert!(core.leave(&r, "bob", "c1").is_none());
    let leave = core.leave(&r, "bob", "c2").expect("last connection leaves");
    assert_eq!(leave.event().kind, EventKind::Leave);
    assert_eq!(core.presence(&r), vec!["amy".to_string()]);
}

#[test]
fn rejects_bad_publishes() {
    let core = Core::new(CoreConfig::default());
    let big = "x".repeat(4097);
    for (text, id) in [
        (big.as_str(), None),
        ("", None),
        ("ok", Some("")),
        ("ok", Some("a\nb")),
    ] {
        let res = core.publish(PublishRequest {
            room: room("r"),
            user: "u".into(),
            text: text.into(),
            id: id.map(str::to_owned),
        });
        assert!(res.is_err(), "{text:?} {id:?}");
    }
}

#[test]
fn live_feed_sees_appends_in_order_and_sweep_keeps_watched_rooms() {
    let core = Core::new(CoreConfig::default());
    let (_, mut feed) = core.subscribe(&room("r"), None).expect("room");
    for i in 0..5 {
        publish(&core, "r", &i.to_string(), None);
    }
    for expected in 1..=5 {
        assert_eq!(feed.try_recv().expect("event").offset(), expected);
    }
    assert_eq!(core.sweep(), 0, "a watched room stays");
    drop(feed);
    let empty = Core::new(CoreConfig {
        retention_age: Duration::ZERO,
        ..CoreConfig::default()
    });
    empty.resume(&room("gone"), None).expect("room");
    assert_eq!(empty.sweep(), 1);
}

fn bounded(max_rooms: usize, max_bytes: usize) -> Core {
    Core::new(CoreConfig {
        max_rooms,
        max_bytes,
        ..CoreConfig::default()
    })
}

#[test]
fn room_count_is_bounded_by_evicting_the_oldest_unattended_rooms() {
    let core = bounded(64, usize::MAX);
    for i in 0..2000 {
        publish(&core, &format!("r{i}"), "hello", None);
    }
    assert!(core.room_count() <= 64, "{} rooms held", core.room_count());
    // The newest room survived; the oldest were evicted first.
    let newest = core
        .history(&room("r1999"), &HistoryQuery::default())
        .expect("history");
    assert_eq!(newest.len(), 1);
    let oldest = core
        .history(&room("r0"), &HistoryQuery::default())
        .expect("history");
    assert!(oldest.is_empty());
}

#[test]
fn attended_rooms_are_never_evicted_and_new_rooms_are_refused_instead() {
    let core = bounded(32, usize::MAX);
    let mut feeds = Vec::new();
    let mut refused = 0;
    for i in 0..200 {
        match core.subscribe(&room(&format!("busy{i}")), None) {
            Ok((_, feed)) => feeds.push((i, feed)),
            Err(err) => {
                assert!(matches!(err, CoreError::Full(_)), "{err:?}");
                assert_eq!(err.code().as_str(), "unavailable");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "every shard filled up with attended rooms");
    assert!(core.room_count() <= 32);
    // Every held room still works and still has its listener.
    for (i, feed) in &mut feeds {
        publish(&core, &format!("busy{i}"), "still here", None);
        assert!(feed.try_recv().is_ok(), "busy{i} kept its feed");
    }
}

#[test]
fn stored_bytes_are_bounded_and_publishes_keep_working() {
    let core = bounded(usize::MAX, 256 * 1024);
    let text = "x".repeat(4000);
    for i in 0..500 {
        publish(&core, &format!("big{i}"), &text, None);
        assert!(core.stored_bytes() <= 256 * 1024 + 32 * 1024);
    }
}

#[test]
fn rooms_holding_only_presence_events_are_forgotten_when_empty() {
    let core = Core::new(CoreConfig::default());
    let r = room("chatter");
    assert!(core.join(&r, "bob", "c1").expect("room").is_some());
    assert!(core.leave(&r, "bob", "c1").is_some());
    assert_eq!(core.room_count(), 0, "join/leave alone do not pin a room");
    assert_eq!(core.stored_bytes(), 0);

    // A released feed frees the room at once, and its bytes with it.
    let (_, feed) = core.subscribe(&r, None).expect("room");
    assert_eq!(core.room_count(), 1);
    drop(feed);
    core.release(&r);
    assert_eq!(core.room_count(), 0);

    // A room with a message stays (retention), until its events age out.
    publish(&core, "kept", "hi", None);
    core.release(&room("kept"));
    assert_eq!(core.room_count(), 1);
}

/// The sweeper used to forget a room between a publisher's lookup and its
/// append, acknowledging a message into a discarded room.
#[test]
fn a_publish_racing_the_sweeper_is_never_lost() {
    let core = std::sync::Arc::new(Core::new(CoreConfig::default()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sweeper = {
        let (core, stop) = (core.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                core.sweep();
                // Empty rooms appear all the time: presence-only churn.
                core.join(&room("churn"), "u", "c").expect("room");
                core.leave(&room("churn"), "u", "c");
            }
        })
    };
    for i in 0..20_000 {
        let r = format!("race{i}");
        // An empty room exists before the publish (as after a subscribe
        // that ended), so the sweeper may be about to forget it.
        core.resume(&room(&r), None).expect("room");
        let ack = publish(&core, &r, "m", None);
        let stored = core
            .history(&room(&r), &HistoryQuery::default())
            .expect("history");
        assert!(
            stored.iter().any(|e| e.event().cursor == ack.cursor),
            "acknowledged {} is stored",
            ack.cursor
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sweeper.join().expect("sweeper");
}
