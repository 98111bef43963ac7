//! Running the real `freshet up` binary in tests: free ports, start and wait until it serves, SIGTERM, and a
//! plain HTTP GET.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{freshet_bin, poll_until};

/// A port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `freshet up` child (deliveries every second), killed if the test ends without stopping it.
#[derive(Debug)]
pub struct UpProcess {
    child: Option<Child>,
}

impl UpProcess {
    /// Start `freshet up` on `data_dir` and wait until `/health` answers and the MQTT port accepts.
    pub fn start(data_dir: &Path, http: u16, mqtt: u16) -> Self {
        Self::start_with(data_dir, http, mqtt, &[], &[])
    }

    /// [`UpProcess::start`] with more arguments (e.g. `--config <file>`) and environment variables.
    pub fn start_with(data_dir: &Path, http: u16, mqtt: u16, args: &[&str], env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(freshet_bin());
        cmd.args(["up", "--log", "warn", "--buffer-interval", "1s", "--data-dir"])
            .arg(data_dir)
            .args([
                "--http-addr",
                &format!("127.0.0.1:{http}"),
                "--mqtt-addr",
                &format!("127.0.0.1:{mqtt}"),
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut up = Self {
            child: Some(cmd.spawn().unwrap()),
        };
        let child = up.child.as_mut().unwrap();
        poll_until(Duration::from_secs(60), "freshet up to answer /health", || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("freshet up exited early with {status}");
            }
            (http_get(http, "/health").as_deref() == Some("ok\n")).then_some(())
        });
        poll_until(Duration::from_secs(30), "the MQTT listener", || {
            TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], mqtt)))
                .ok()
                .map(|_| ())
        });
        up
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        sigterm_and_wait(self.child.take().unwrap(), "freshet up")
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The body of a GET, or `None` if the server does not answer yet.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// `POST /v1/sql` with `{"sql": ..}` and an optional bearer token: (status, JSON body), or `None` if the server does not answer.
pub fn post_sql(port: u16, sql: &str, bearer: Option<&str>) -> Option<(u16, serde_json::Value)> {
    let body = serde_json::json!({ "sql": sql }).to_string();
    let auth = bearer.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        stream,
        "POST /v1/sql HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).ok()?))
}

/// Send SIGTERM to `child` and wait (with a deadline) for its exit status.
pub fn sigterm_and_wait(mut child: Child, what: &str) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    poll_until(
        Duration::from_secs(60),
        &format!("{what} to exit after SIGTERM"),
        || child.try_wait().unwrap(),
    )
}

/// Publish each line as one message on `topic` at QoS 1 with `mosquitto_pub -l` (one connection, client id `client`).
pub fn mosquitto_pub_lines(mqtt: u16, topic: &str, client: &str, lines: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt.to_string(),
            "-q",
            "1",
            "-i",
            client,
        ])
        .args(["-t", topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (Debian mosquitto-clients) runs");
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
}
