//! Benchmark peers (bench/peers/) as real processes, for the raw protocol of
//! `switchboard bench`: started on a free port, waited for with a bound,
//! killed when dropped.

use super::WAIT;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// `NODE_BIN`, else `node` on `PATH`; `None` where Node is not installed
/// (scripts/test.sh installs it, with the peer's npm packages).
pub fn node_bin() -> Option<PathBuf> {
    if let Ok(bin) = std::env::var("NODE_BIN") {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("node"))
        .find(|p| p.is_file())
}

/// The repository's `bench/peers/<name>` directory.
pub fn peer_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../bench/peers")
        .join(name)
}

/// `bench/peers/node/server.js`: a Node `ws` + `http` SSE broadcast.
pub struct NodePeer {
    pub port: u16,
    child: Child,
}

impl NodePeer {
    /// Starts the peer on a free port; `None` when Node is not installed.
    /// Panics (with the fix) when Node is there but the peer's `ws` package
    /// is not, and when the peer does not listen within [`WAIT`].
    pub fn start() -> Option<Self> {
        let node = node_bin()?;
        let dir = peer_dir("node");
        assert!(
            dir.join("node_modules/ws").is_dir(),
            "the Node peer's packages are missing: run `npm install --prefix bench/peers/node` \
             (scripts/test.sh does)"
        );
        let mut child = Command::new(node)
            .arg("server.js")
            .arg("0")
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = tx.send(port.trim().parse::<u16>().ok());
                }
            }
        });
        match rx.recv_timeout(WAIT) {
            Ok(Some(port)) => Some(Self { port, child }),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the Node peer did not report its port within {WAIT:?}: {other:?}");
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NodePeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
