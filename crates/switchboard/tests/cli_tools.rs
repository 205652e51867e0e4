//! The terminal tools (SPEC §14) as real processes with piped stdin and
//! stdout against real servers: `publish` (ids, errors), `tail` (JSON
//! lines, `--since`, `--count`), `chat` (typed lines, joins, leaves,
//! presence), tokens, and both following a room across a restart of the
//! gateway they are on, with nothing lost or shown twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::sign_hs256 as sign;

use common::procs::{Nats, Service, TempDir};
use common::{UNTHROTTLED, WAIT};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// A tool's process, its stdout and stderr read line by line on threads
/// of their own so that every wait on them is bounded.
struct Tool {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every stdout line seen so far (what `expect_line` consumed too).
    seen: Vec<String>,
}

impl Tool {
    fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_env(args, &[])
    }

    fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(args)
            .env_remove("SWITCHBOARD_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the tool starts");
        let stdin = child.stdin.take();
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        Self {
            child,
            stdin,
            stdout,
            stderr,
            seen: Vec::new(),
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("typed");
        stdin.flush().expect("flushed");
    }

    /// Ends the input (as Ctrl-D would).
    fn end_input(&mut self) {
        self.stdin = None;
    }

    /// Waits for a stdout line matching `pred`; earlier lines are kept in
    /// `seen`.
    fn expect_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no stdout line {what} in time; seen: {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "stdout ended before a line {what}; seen: {:#?}; stderr: {:#?}",
                        self.seen,
                        self.stderr.try_iter().collect::<Vec<_>>()
                    )
                }
            }
        }
    }

    /// Waits for a stderr line containing `needle`.
    fn expect_stderr(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut earlier = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => earlier.push(line),
                Err(_) => panic!("no stderr line with {needle:?} in time; seen: {earlier:#?}"),
            }
        }
    }

    /// Waits for the exit and returns its code and the rest of stdout.
    fn wait(&mut self) -> (i32, Vec<String>, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("status") {
                let rest: Vec<String> = self.stdout.iter().collect();
                self.seen.extend(rest.iter().cloned());
                let stderr: Vec<String> = self.stderr.iter().collect();
                return (status.code().unwrap_or(-1), rest, stderr.join("\n"));
            }
            assert!(Instant::now() < deadline, "the tool did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(reader: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `switchboard publish` run to its end: exit code, stdout, stderr.
fn publish(args: &[&str]) -> (i32, String, String) {
    let mut tool = Tool::spawn(&[&["publish"], args].concat());
    let (code, out, err) = tool.wait();
    (code, out.join("\n"), err)
}

fn published(url: &str, room: &str, text: &str) -> Value {
    let (code, out, err) = publish(&[url, "--room", room, "--user", "ops", text]);
    assert_eq!(code, 0, "publish failed: {err}");
    serde_json::from_str(&out).expect("one JSON line")
}

fn json_line(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_prints_the_ack_and_retries_with_its_id_are_stored_once() {
    let server = Service::standalone(&UNTHROTTLED);
    server.wait_ready(true).await;
    let url = server.url("");
    let first = published(&url, "tools", "hello");
    assert_eq!(first["room"], "tools", "{first}");
    assert_eq!(first["duplicate"], false, "{first}");
    assert!(first["cursor"].is_string(), "{first}");

    // The same id twice (a retry after a lost answer): stored once.
    let args = [url.as_str(), "--room", "tools", "--id", "deploy-42", "done"];
    let (code, once, _) = publish(&args);
    assert_eq!(code, 0);
    let (code, twice, _) = publish(&args);
    assert_eq!(code, 0);
    let (once, twice) = (json_line(&once), json_line(&twice));
    assert_eq!(twice["duplicate"], true, "{twice}");
    assert_eq!(once["cursor"], twice["cursor"]);
    let (status, history) = common::get_json_from(&url, "/api/rooms/tools/messages").await;
    assert_eq!(status, 200);
    let texts: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(texts, ["hello", "done"]);

    // Refusals end with status 1 and the server's reason; nothing retried.
    let (code, out, err) = publish(&[&url, "--room", "no.dots", "x"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("invalid_room"), "{err}");
    let (code, _, err) = publish(&["ftp://nowhere", "--room", "r", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("scheme"), "{err}");
    // Nobody listening: the retries run out, and the id to retry with is named.
    let closed = format!("http://127.0.0.1:{}", common::procs::free_port());
    let (code, _, err) = publish(&[&closed, "--room", "r", "--retries", "1", "--id", "x-1", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("2 attempt(s)") && err.contains("x-1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_json_lines_from_a_cursor_and_stops_at_a_count() {
    let server = Service::standalone(&UNTHROTTLED);
    server.wait_ready(true).await;
    let url = server.url("");
    let first = published(&url, "feed", "one");
    published(&url, "feed", "two");

    // From the first cursor: the replay of "two", then live events.
    let since = first["cursor"].as_str().expect("cursor");
    let mut tail = Tool::spawn(&[
        "tail", &url, "--room", "feed", "--user", "watcher", "--since", since, "--count", "4",
    ]);
    tail.expect_stderr("resumed feed");
    let replayed = json_line(&tail.expect_line("replayed", |l| l.contains("\"message\"")));
    assert_eq!(replayed["text"], "two", "{replayed}");
    published(&url, "feed", "three");
    published(&url, "feed", "four");
    let (code, rest, err) = tail.wait();
    assert_eq!(code, 0, "{err}");
    let messages: Vec<Value> = tail
        .seen
        .iter()
        .map(|l| json_line(l))
        .filter(|e| e["type"] == "message")
        .collect();
    let texts: Vec<&str> = messages.iter().filter_map(|e| e["text"].as_str()).collect();
    assert_eq!(texts, ["two", "three", "four"], "rest: {rest:?}");
    assert!(
        messages
            .iter()
            .all(|e| e["room"] == "feed" && e["cursor"].is_string())
    );

    // An invalid room is refused at subscribe: status 1, the code named.
    let mut bad = Tool::spawn(&["tail", &url, "--room", "a*b"]);
    let (code, _, err) = bad.wait();
    assert_eq!(code, 1);
    assert!(err.contains("invalid_room"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_publishes_typed_lines_and_shows_messages_joins_leaves_and_presence() {
    let server = Service::standalone(&UNTHROTTLED);
    server.wait_ready(true).await;
    let url = server.url("");
    let mut bob = Tool::spawn(&["chat", &url, "--room", "den", "--user", "bob"]);
    bob.expect_stderr("joined den");
    bob.expect_line("with presence", |l| l == "* here: bob");

    let mut alice = Tool::spawn(&["chat", &url, "--room", "den", "--user", "alice"]);
    alice.expect_stderr("joined den");
    bob.expect_line("alice's join", |l| l == "* alice joined");
    alice.type_line("hello bob");
    let line = bob.expect_line("alice's message", |l| l.ends_with("alice: hello bob"));
    assert!(
        line.starts_with('[') && line.as_bytes().get(9) == Some(&b']'),
        "{line}"
    );
    alice.expect_line("her own message", |l| l.ends_with("alice: hello bob"));

    bob.type_line("/who");
    let who = bob.expect_line("presence", |l| l.starts_with("* here: ") && l.contains(','));
    let mut users: Vec<&str> = who.trim_start_matches("* here: ").split(", ").collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob"]);

    // End of input: alice leaves once her lines are acknowledged.
    alice.type_line("bye");
    alice.end_input();
    let (code, _, err) = alice.wait();
    assert_eq!(code, 0, "{err}");
    bob.expect_line("alice's last line", |l| l.ends_with("alice: bye"));
    bob.expect_line("alice's leave", |l| l == "* alice left");
    let said = |tool: &Tool, text: &str| tool.seen.iter().filter(|l| l.ends_with(text)).count();
    assert_eq!(said(&bob, "alice: hello bob"), 1);
    assert_eq!(said(&bob, "alice: bye"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_send_tokens_as_bearer_headers_and_stop_when_refused() {
    const SECRET: &str = "cli-tools-test-secret-0123456789";
    let server = Service::standalone(&["--jwt-secret", SECRET]);
    server.wait_ready(true).await;
    let url = server.url("");
    let token = sign(
        &json!({"sub": "carol", "exp": common::unix_now() + 600}),
        SECRET,
    );

    // Without a token: refused at the upgrade, status 1, no retry loop.
    let mut refused = Tool::spawn(&["tail", &url, "--room", "secure"]);
    let (code, _, err) = refused.wait();
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = publish(&[&url, "--room", "secure", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("unauthorized"), "{err}");

    // With one (from the environment for tail, a flag for publish).
    let mut tail = Tool::spawn_with_env(
        // Its own join, then the message.
        &["tail", &url, "--room", "secure", "--count", "2"],
        &[("SWITCHBOARD_TOKEN", &token)],
    );
    tail.expect_stderr("subscribed to secure");
    let (code, out, err) = publish(&[&url, "--room", "secure", "--token", &token, "signed"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_line(&out)["room"], "secure");
    let (code, _, err) = tail.wait();
    assert_eq!(code, 0, "{err}");
    let event = json_line(tail.seen.last().expect("two events"));
    assert_eq!(
        (event["user"].as_str(), event["text"].as_str()),
        (Some("carol"), Some("signed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_tail_follow_the_room_across_a_gateway_restart() {
    let dir = TempDir::new("cli-restart");
    let nats = Nats::start(&dir.0);
    let nats_url = nats.url();
    let core = Service::start("core", &nats_url, &UNTHROTTLED);
    let mut gateway = Service::start("ws-gateway", &nats_url, &UNTHROTTLED);
    // The other gateway: publishes while the first one is down.
    let other = Service::start("ws-gateway", &nats_url, &UNTHROTTLED);
    core.wait_ready(true).await;
    gateway.wait_ready(true).await;
    other.wait_ready(true).await;
    let (url, other_url) = (gateway.url(""), other.url(""));
    let address = gateway.http;

    let mut tail = Tool::spawn(&["tail", &url, "--room", "ops", "--user", "tailer"]);
    tail.expect_stderr("subscribed to ops");
    let mut bob = Tool::spawn(&["chat", &url, "--room", "ops", "--user", "bob"]);
    bob.expect_stderr("joined ops");
    for text in ["m1", "m2"] {
        published(&other_url, "ops", text);
    }
    bob.expect_line("m2", |l| l.ends_with("ops: m2"));
    tail.expect_line("m2", |l| l.contains("\"m2\""));

    // The gateway both are on goes away; the room goes on without them.
    gateway.kill();
    tail.expect_stderr("disconnected");
    bob.expect_stderr("disconnected");
    bob.type_line("typed while away");
    for text in ["m3", "m4"] {
        published(&other_url, "ops", text);
    }
    let gateway = Service::start_at("ws-gateway", &nats_url, address, &UNTHROTTLED);
    gateway.wait_ready(true).await;
    tail.expect_stderr("resumed ops");
    bob.expect_stderr("reconnected to ops");
    bob.expect_line("its own line", |l| l.ends_with("bob: typed while away"));
    published(&other_url, "ops", "m5");
    bob.expect_line("m5", |l| l.ends_with("ops: m5"));
    tail.expect_line("m5", |l| l.contains("\"m5\""));

    // Every message once, in the order stored, in both tools.
    let (status, history) = common::get_json_from(&other_url, "/api/rooms/ops/messages").await;
    assert_eq!(status, 200);
    let stored: Vec<String> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(stored.len(), 6, "{stored:?}");
    assert_eq!(
        stored.iter().filter(|t| *t == "typed while away").count(),
        1,
        "re-sent after the reconnect, stored once: {stored:?}"
    );
    let tailed: Vec<String> = tail
        .seen
        .iter()
        .map(|l| json_line(l))
        .filter(|e| e["type"] == "message")
        .filter_map(|e| e["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(tailed, stored, "tail");
    let chatted: Vec<String> = bob
        .seen
        .iter()
        .filter(|l| l.starts_with('['))
        .filter_map(|l| l.split_once(": ").map(|(_, text)| text.to_owned()))
        .collect();
    assert_eq!(chatted, stored, "chat");
    bob.end_input();
    let (code, _, err) = bob.wait();
    assert_eq!(code, 0, "{err}");
}
