//! A real S3-compatible server for tests: `moto_server` (PyPI `moto[server]`, installed by the test command) on a
//! free 127.0.0.1 port, with the bucket `freshet`, and the object_store options that reach it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::poll_until;

/// The running server; killed when dropped.
pub struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `moto_server` on a free 127.0.0.1 port and create the bucket `freshet`; returns the server and its
/// `host:port`.
pub async fn start_moto() -> (Moto, String) {
    let port = crate::up::free_port();
    let addr = format!("127.0.0.1:{port}");
    let moto = Moto(
        Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server runs (the test command installs moto[server])"),
    );
    let probe = addr.clone();
    tokio::task::spawn_blocking(move || {
        poll_until(Duration::from_secs(30), "moto_server to listen", || {
            std::net::TcpStream::connect(&probe).ok()
        })
    })
    .await
    .unwrap();
    let status = reqwest::Client::new()
        .put(format!("http://{addr}/freshet"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "create bucket: {status}");
    (moto, addr)
}

/// object_store options for an S3 endpoint at `addr` (plain HTTP, test credentials).
pub fn s3_options(addr: &str) -> HashMap<String, String> {
    [
        ("AWS_ENDPOINT_URL", format!("http://{addr}")),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
