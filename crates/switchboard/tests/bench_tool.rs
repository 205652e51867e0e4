//! `switchboard bench` as a user runs it: the real binary as a process
//! against a real standalone server process, short bounded runs, the JSON
//! line parsed and checked.

mod common;

use common::procs::Service;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Limits high enough that the bench measures the server, not its abuse
/// defences.
const UNLIMITED: &[&str] = &common::UNTHROTTLED;

/// Upper bound of one bench process in these tests.
const BENCH_WAIT: Duration = Duration::from_secs(40);

/// Runs `switchboard bench <args>`; returns the JSON report and stderr.
fn bench(args: &[&str]) -> (Value, String) {
    let (status, stdout, stderr) = bench_raw(args);
    assert!(status, "bench failed: {stderr}");
    let line = stdout.lines().next().unwrap_or_default();
    let report: Value = serde_json::from_str(line)
        .unwrap_or_else(|err| panic!("one JSON line on stdout ({err}): {stdout:?}\n{stderr}"));
    (report, stderr)
}

fn bench_raw(args: &[&str]) -> (bool, String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("bench")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("switchboard bench starts");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(BENCH_WAIT) {
        Ok(output) => {
            let output = output.expect("bench output");
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("bench {args:?} did not finish within {BENCH_WAIT:?}");
        }
    }
}

fn u(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is a count in {report}"))
}

/// p50 ≤ p90 ≤ p99 ≤ max, with samples.
fn assert_latency(report: &Value, key: &str) {
    let l = &report[key];
    let p = |k: &str| {
        l[k].as_u64()
            .unwrap_or_else(|| panic!("{key}.{k} present in {report}"))
    };
    assert!(p("count") > 0, "{key} has samples: {report}");
    assert!(
        p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("max"),
        "{key} percentiles ordered: {l}"
    );
}

fn assert_cpu(report: &Value) {
    let cpu = &report["cpu"];
    for key in ["user_s", "system_s", "wall_s", "utilization"] {
        assert!(
            cpu[key].as_f64().is_some_and(|v| v >= 0.0),
            "cpu.{key} present: {report}"
        );
    }
    assert!(u(cpu, "cores") >= 1);
}

/// A clean fan-out: every subscriber got every message of its room once,
/// in order (`deliveries`: subscribers × messages in one room).
fn assert_clean_fanout(report: &Value, subscribers: u64, messages: u64, deliveries: u64) {
    assert_eq!(u(report, "subscribed"), subscribers, "{report}");
    assert_eq!(u(report, "published"), messages, "{report}");
    assert_eq!(u(report, "deliveries"), deliveries, "{report}");
    assert_eq!(u(report, "expected_deliveries"), deliveries);
    assert_eq!(u(report, "lost"), 0, "{report}");
    assert_eq!(u(report, "duplicated"), 0, "{report}");
    assert_eq!(u(report, "reordered"), 0, "{report}");
    assert_eq!(u(report, "error_total"), 0, "{report}");
    assert_eq!(report["rate_limited"], false);
    assert!(report["deliveries_per_s"].as_f64().is_some_and(|v| v > 0.0));
    assert!(report["publishes_per_s"].as_f64().is_some_and(|v| v > 0.0));
    assert_latency(report, "latency_us");
    assert_latency(report, "ack_latency_us");
    assert_cpu(report);
}

fn fanout(subscribe: &str, publish: &str) {
    let server = Service::standalone(UNLIMITED);
    let url = server.url("");
    let grpc = server.grpc.expect("gRPC address").to_string();
    let (report, stderr) = bench(&[
        &url,
        "--grpc",
        &grpc,
        "--scenario",
        "fanout",
        "--subscribe",
        subscribe,
        "--publish",
        publish,
        "--subscribers",
        "20",
        "--messages",
        "150",
        "--window",
        "8",
        "--payload-bytes",
        "200",
        "--duration",
        "3s",
        "--drain-timeout",
        "5s",
    ]);
    assert_eq!(report["scenario"], "fanout");
    assert_eq!(report["subscribe_transport"], subscribe);
    assert_eq!(report["publish_transport"], publish);
    assert_clean_fanout(&report, 20, 150, 20 * 150);
    assert!(
        stderr.contains("lost 0"),
        "human summary on stderr: {stderr}"
    );
}

#[test]
fn fanout_ws_subscribers_ws_publisher() {
    fanout("ws", "ws");
}

#[test]
fn fanout_ws_subscribers_http_publisher() {
    fanout("ws", "http");
}

#[test]
fn fanout_sse_subscribers_ws_publisher() {
    fanout("sse", "ws");
}

#[test]
fn fanout_sse_subscribers_http_publisher() {
    fanout("sse", "http");
}

#[test]
fn fanout_grpc_subscribers_grpc_publisher() {
    fanout("grpc", "grpc");
}

/// Several rooms and publishers at a fixed rate, from a `ws://…/ws` base
/// URL, with client sockets bound to three source addresses: each
/// subscriber gets exactly its room's messages.
#[test]
fn fanout_rooms_publishers_and_rate() {
    let server = Service::standalone(UNLIMITED);
    let url = server.ws_url("/ws");
    let (report, _) = bench(&[
        &url,
        "--subscribers",
        "12",
        "--rooms",
        "3",
        "--publishers",
        "2",
        "--publish",
        "http",
        "--window",
        "2",
        "--rate",
        "400",
        "--source-addrs",
        "127.0.0.1-127.0.0.3",
        "--messages",
        "240",
        "--duration",
        "3s",
        "--format",
        "json",
    ]);
    // 240 messages over 3 rooms, 4 subscribers per room: each message
    // reaches the 4 subscribers of its room.
    assert_clean_fanout(&report, 12, 240, 4 * 240);
    assert_eq!(u(&report, "rooms"), 3);
    // 240 at 400/s takes about 0.6 s: the rate was honoured, not exceeded.
    assert!(
        report["duration_s"].as_f64().is_some_and(|d| d >= 0.4),
        "{report}"
    );
}

#[test]
fn publish_scenario_counts_acknowledged_publishes() {
    let server = Service::standalone(UNLIMITED);
    let (report, _) = bench(&[
        &server.url(""),
        "--scenario",
        "publish",
        "--rooms",
        "4",
        "--window",
        "16",
        "--messages",
        "400",
        "--duration",
        "3s",
    ]);
    assert_eq!(report["scenario"], "publish");
    assert_eq!(u(&report, "published"), 400, "{report}");
    assert_eq!(u(&report, "publish_attempts"), 400);
    assert_eq!(u(&report, "error_total"), 0, "{report}");
    assert!(report["publishes_per_s"].as_f64().is_some_and(|v| v > 0.0));
    assert_latency(&report, "ack_latency_us");
    assert_cpu(&report);
}

#[test]
fn idle_reports_server_memory_per_connection() {
    let server = Service::standalone(UNLIMITED);
    let pid = server.pid().to_string();
    let (report, _) = bench(&[
        &server.url(""),
        "--scenario",
        "idle",
        "--connections",
        "150",
        "--rooms",
        "3",
        "--duration",
        "1s",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(u(&report, "connections"), 150, "{report}");
    assert!(u(&report, "rss_before") > 0);
    assert!(u(&report, "rss_after") > 0);
    assert!(
        report["rss_per_connection"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{report}"
    );
    assert_eq!(u(&report, "error_total"), 0, "{report}");
    assert_cpu(&report);
}

#[test]
fn connect_reports_connections_per_second() {
    let server = Service::standalone(UNLIMITED);
    let (report, _) = bench(&[
        &server.url(""),
        "--scenario",
        "connect",
        "--connections",
        "100",
        "--concurrency",
        "10",
        "--subscribe",
        "sse",
        "--duration",
        "10s",
    ]);
    assert_eq!(u(&report, "connections"), 100, "{report}");
    assert!(report["connects_per_s"].as_f64().is_some_and(|v| v > 0.0));
    assert_latency(&report, "connect_latency_us");
    assert_eq!(u(&report, "error_total"), 0, "{report}");
    assert_cpu(&report);
}

/// Against default limits (50/s burst 100 per connection) a fast publisher
/// is refused: the refusals are counted and flagged, not hidden.
#[test]
fn rate_limited_server_is_reported() {
    let server = Service::standalone(&[]);
    let (report, stderr) = bench(&[
        &server.url(""),
        "--subscribers",
        "5",
        "--window",
        "64",
        "--messages",
        "400",
        "--duration",
        "2s",
    ]);
    assert_eq!(report["rate_limited"], true, "{report}");
    let refused = report["errors"]["rate_limited"].as_u64().unwrap_or(0);
    assert!(refused > 0, "{report}");
    let published = u(&report, "published");
    assert!(published < 400, "{report}");
    assert_eq!(u(&report, "publish_attempts"), published + refused);
    // What was acknowledged still reached everyone.
    assert_eq!(u(&report, "deliveries"), 5 * published, "{report}");
    assert_eq!(u(&report, "lost"), 0, "{report}");
    assert!(stderr.contains("rate-limited"), "warned: {stderr}");

    // Over HTTP the refusal is a 429 with the same code.
    let (report, _) = bench(&[
        &server.url(""),
        "--subscribers",
        "2",
        "--publish",
        "http",
        "--window",
        "4",
        "--messages",
        "300",
        "--duration",
        "2s",
    ]);
    assert_eq!(report["rate_limited"], true, "{report}");
    let refused = report["errors"]["rate_limited"].as_u64().unwrap_or(0);
    assert!(refused > 0, "{report}");
    assert_eq!(u(&report, "lost"), 0, "{report}");
}

#[test]
fn bad_arguments_fail_clearly() {
    let (ok, _, stderr) = bench_raw(&["https://example.invalid:443"]);
    assert!(!ok);
    assert!(stderr.contains("TLS"), "{stderr}");
    let (ok, _, stderr) = bench_raw(&["http://127.0.0.1:1", "--subscribe", "grpc"]);
    assert!(!ok);
    assert!(stderr.contains("--grpc"), "{stderr}");
    let (ok, _, stderr) = bench_raw(&["http://127.0.0.1:1", "--duration", "soon"]);
    assert!(!ok);
    assert!(stderr.contains("duration"), "{stderr}");
}

/// The raw protocol against a real peer (bench/peers/node: Node `ws` and a
/// plain `http` SSE broadcast), as scripts/bench.sh drives nginx + Nchan,
/// Node and FastAPI. `None` (the test says it skipped) without Node.
fn node_peer() -> Option<common::peers::NodePeer> {
    let peer = common::peers::NodePeer::start();
    if peer.is_none() {
        eprintln!("skipped: node not found (scripts/test.sh installs it)");
    }
    peer
}

fn raw_fanout(subscribe: &str) {
    let Some(peer) = node_peer() else { return };
    let (report, stderr) = bench(&[
        &peer.url(),
        "--protocol",
        "raw",
        "--subscribe",
        subscribe,
        "--subscribers",
        "20",
        "--rooms",
        "2",
        "--window",
        "4",
        "--messages",
        "200",
        "--duration",
        "3s",
        "--settle",
        "50ms",
    ]);
    assert_eq!(report["protocol"], "raw", "{report}");
    assert_eq!(report["subscribe_transport"], subscribe);
    // Publishers default to http in raw mode: a POST of the bare payload.
    assert_eq!(report["publish_transport"], "http");
    // 200 messages over 2 rooms, 10 subscribers in each.
    assert_clean_fanout(&report, 20, 200, 10 * 200);
    assert!(stderr.contains("raw protocol"), "{stderr}");
}

#[test]
fn raw_fanout_ws_against_node_peer() {
    raw_fanout("ws");
}

#[test]
fn raw_fanout_sse_against_node_peer() {
    raw_fanout("sse");
}

#[test]
fn raw_idle_and_connect_against_node_peer() {
    let Some(peer) = node_peer() else { return };
    let pid = peer.pid().to_string();
    for subscribe in ["ws", "sse"] {
        let (report, _) = bench(&[
            &peer.url(),
            "--protocol",
            "raw",
            "--scenario",
            "idle",
            "--subscribe",
            subscribe,
            "--connections",
            "100",
            "--duration",
            "500ms",
            "--server-pid",
            &pid,
        ]);
        assert_eq!(u(&report, "connections"), 100, "{report}");
        assert!(u(&report, "rss_after") > 0, "{report}");
        assert!(report["rss_per_connection"].is_number(), "{report}");
        assert_eq!(u(&report, "error_total"), 0, "{report}");
    }
    let (report, _) = bench(&[
        &peer.url(),
        "--protocol",
        "raw",
        "--scenario",
        "connect",
        "--connections",
        "100",
        "--concurrency",
        "10",
    ]);
    assert_eq!(u(&report, "connections"), 100, "{report}");
    assert_latency(&report, "connect_latency_us");
    assert_eq!(u(&report, "error_total"), 0, "{report}");
}

/// Raw mode speaks only what a bare pub/sub peer has: no gRPC, no
/// WebSocket publishing, and paths must name the room.
#[test]
fn raw_protocol_refuses_what_it_cannot_speak() {
    for args in [
        &["--subscribe", "grpc", "--grpc", "127.0.0.1:1"][..],
        &["--publish", "ws"][..],
        &["--raw-pub-path", "/pub"][..],
    ] {
        let mut all = vec!["http://127.0.0.1:1", "--protocol", "raw"];
        all.extend_from_slice(args);
        let (ok, _, stderr) = bench_raw(&all);
        assert!(!ok, "{args:?} refused");
        assert!(stderr.contains("raw"), "{args:?}: {stderr}");
    }
}
