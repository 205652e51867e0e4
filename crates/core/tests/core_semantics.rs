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
    let (lost, _) = core.subscribe(&room("r"), Some(&first.cursor));
    assert!(!lost.recovered);
    assert!(lost.events.is_empty());
    let (ok, _) = core.subscribe(&room("r"), Some(&cursors[1]));
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
    assert!(!core.resume(&room("r"), Some(&c)).recovered);
}

#[test]
fn foreign_epoch_and_future_cursors_are_not_recovered() {
    let core = Core::new(CoreConfig::default());
    let head = publish(&core, "r", "x", None).cursor;
    let foreign: Cursor = "zzzz:1".parse().expect("cursor");
    assert!(!core.resume(&room("r"), Some(&foreign)).recovered);
    let future = Cursor::new(head.epoch().clone(), head.offset() + 10);
    assert!(!core.resume(&room("r"), Some(&future)).recovered);
    let at_head = core.resume(&room("r"), Some(&head));
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
    let join = core.join(&r, "bob", "c1").expect("first connection joins");
    assert_eq!(join.event().kind, EventKind::Join);
    assert!(core.join(&r, "bob", "c2").is_none());
    assert!(core.join(&r, "amy", "c3").is_some());
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
    let (_, mut feed) = core.subscribe(&room("r"), None);
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
    empty.resume(&room("gone"), None);
    assert_eq!(empty.sweep(), 1);
}
