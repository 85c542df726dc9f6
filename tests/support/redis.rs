//! A real `redis-server` on a free loopback port, with its own temporary directory, stopped
//! when dropped. Tests that need Redis fail (never skip) when the binary is missing.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Arguments beyond the plain defaults (TLS, …).
    extra: Vec<String>,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// A free loopback port; for a cluster node, one whose cluster bus port (the port + 10000) is
/// free too.
fn free_port_for(cluster: bool) -> u16 {
    for _ in 0..100 {
        let port = free_port();
        let bus_free = port
            .checked_add(10_000)
            .is_some_and(|bus| TcpListener::bind(("127.0.0.1", bus)).is_ok());
        if !cluster || bus_free {
            return port;
        }
    }
    panic!("no free loopback port with a free cluster bus port in 100 tries");
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_with(Vec::new())
    }

    /// Starts it with these arguments too (its plain port stays open for PING). A port found
    /// free can be taken by another socket before the server binds it (tests run in parallel,
    /// and every connection takes a local port): then it starts again on another, three times
    /// at most.
    pub fn start_with(extra: Vec<String>) -> Self {
        let cluster = extra.iter().any(|arg| arg == "--cluster-enabled");
        for _ in 0..3 {
            let port = free_port_for(cluster);
            let dir = std::env::temp_dir().join(format!(
                "tower-outbound-redis-{}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("create the redis directory");
            let mut server = RedisServer {
                child: None,
                port,
                dir,
                extra: extra.clone(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of three free ports");
    }

    /// Starts the server and waits until it answers PING: `false` when it exited or did not
    /// answer within 10 s.
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(&self.extra)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "could not start redis-server ({err}); the Redis tests need it: \
                     install it with `apt-get install -y redis-server` (or run ./scripts/test.sh, \
                     which installs it)"
                )
            });
        self.child = Some(child);
        let ready = self.wait_ready();
        if !ready {
            self.kill();
        }
        ready
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            let exited = self
                .child
                .as_mut()
                .is_none_or(|child| !matches!(child.try_wait(), Ok(None)));
            if exited {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200))
        else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A free loopback port, for a second listener (TLS).
    pub fn free_port() -> u16 {
        free_port()
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not come back on port {} within 10 s",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
