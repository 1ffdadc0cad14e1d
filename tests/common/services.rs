//! Real servers and tools the tests drive: `redis-server` and a Python with PyJWT and
//! bcrypt (both installed by `./dev test`, see `tests/requirements.txt`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago (for servers that cannot take port 0).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A loopback port where connections are refused at once, for as long as the value lives: a
/// socket is bound to it without listening. A port from [`free_port`] is free again, so
/// another test's listener, or a connection's own source port (connecting to itself), can
/// land on it, and a "dead" upstream then hangs instead of refusing.
pub struct DeadPort {
    _bound: std::os::fd::OwnedFd,
    pub port: u16,
}

pub fn dead_port() -> DeadPort {
    use std::os::fd::FromRawFd;
    let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; `addr` is a valid
    // `sockaddr_in` of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let bound = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let ptr = &mut addr as *mut libc::sockaddr_in as *mut libc::sockaddr;
        assert_eq!(libc::bind(fd, ptr, size), 0, "bind: {}", std::io::Error::last_os_error());
        let mut len = size;
        assert_eq!(libc::getsockname(fd, ptr, &mut len), 0);
        DeadPort { _bound: bound, port: u16::from_be(addr.sin_port) }
    }
}

/// A throwaway `redis-server` on loopback, without persistence; killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; ./dev test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The commands clients send while `during` runs, as `MONITOR` shows them (a script's
    /// own calls are left out: Redis tags those `lua`). One line per round trip.
    pub async fn client_commands<F: std::future::Future>(&self, during: F) -> Vec<String> {
        use std::io::{BufRead, BufReader};
        // Bounded: the capture ends at the marker, or after 20 s at most.
        let mut monitor = Command::new("timeout")
            .args(["20", "redis-cli", "-p", &self.port.to_string(), "MONITOR"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli (Debian package redis-tools, installed with redis-server)");
        let mut lines = BufReader::new(monitor.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "OK", "MONITOR started");
        during.await;
        // A marker command ends the capture once it is seen.
        let mut marker = Command::new("redis-cli");
        marker.args(["-p", &self.port.to_string(), "ECHO", "end-of-capture"]);
        assert!(marker.output().unwrap().status.success());
        let (mut seen, mut ended) = (Vec::new(), false);
        for line in lines {
            let line = line.unwrap();
            if line.contains("end-of-capture") {
                ended = true;
                break;
            }
            if !line.contains(" lua]") {
                seen.push(line);
            }
        }
        assert!(ended, "MONITOR never showed the end marker: {seen:#?}");
        let _ = monitor.kill();
        let _ = monitor.wait();
        seen
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python that has the test requirements: `$SLUICE_TEST_PYTHON`, else the virtualenv
/// `./dev test` makes.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").expect("HOME");
    let p = PathBuf::from(home).join(".cache/sluice-ci/pyenv/bin/python");
    assert!(
        p.is_file(),
        "{} missing: run ./dev test (it installs tests/requirements.txt)",
        p.display()
    );
    p
}

/// Runs a Python script from `tests/py/` with `args`; returns its stdout.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let path = super::workspace().join("tests/py").join(script);
    let out = Command::new(python()).arg(&path).args(args).output().expect("run python");
    assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
