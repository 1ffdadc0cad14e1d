//! The real `sluice` binary as a child process, its log lines on a channel.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::sluice_bin;

/// A running `sluice run`, with its log lines arriving on a channel.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    pub fn start(config: &std::path::Path) -> Proc {
        Self::start_with(config, &[])
    }

    pub fn start_with(config: &std::path::Path, flags: &[&str]) -> Proc {
        let mut child = Command::new(sluice_bin())
            .args(["run", "--config"])
            .arg(config)
            .args(flags)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice");
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Proc { child, addr: "0.0.0.0:0".parse().unwrap(), lines, seen: Vec::new() };
        let listening = p.wait_for("sluice listening on http://");
        let addr = listening.split("http://").nth(1).unwrap().split_whitespace().next().unwrap();
        p.addr = addr.parse().unwrap();
        p
    }

    /// Waits (up to 20 s) for a log line containing `needle`.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_within(needle, Duration::from_secs(20))
    }

    /// Waits up to `limit` for a log line containing `needle`.
    pub fn wait_for_within(&mut self, needle: &str, limit: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = std::time::Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no log line with {needle:?}; saw:\n{}", self.seen.join("\n"));
    }

    /// Every log line so far (waiting `settle` for more to arrive).
    pub fn log(&mut self, settle: Duration) -> String {
        while let Ok(line) = self.lines.recv_timeout(settle) {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) only sends a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill failed");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
