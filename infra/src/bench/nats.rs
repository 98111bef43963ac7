//! The NATS JetStream peer for `freshet bench store`: starts `nats-server -js` on 127.0.0.1 with a temporary file
//! store, and loads it with the async-nats client the same way freshet is loaded.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// A nats-server child process, killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    pub url: String,
}

impl NatsServer {
    /// Start `nats-server` with JetStream and a file store under `dir`, on a free loopback port.
    pub async fn start(binary: &Path, dir: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.join("nats.conf");
        // The closest JetStream comes to freshet's durability: a file store. nats-server 2.9 has no
        // `sync_interval: always`, so it acknowledges before fsync (fewer guarantees than freshet's default).
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 1GB\n  max_file_store: 20GB\n}}\n",
                dir.join("js").display()
            ),
        )?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let server = Self {
            child,
            url: format!("127.0.0.1:{port}"),
        };
        super::wait_listening(std::net::SocketAddr::from(([127, 0, 0, 1], port)), "nats-server").await?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn server_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown version".into())
}

/// The first `nats-server` on PATH.
pub fn find_server() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("nats-server"))
        .find(|p| p.exists())
}
