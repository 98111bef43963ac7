//! kinesalite (npm), a Kinesis emulator that issues sequence numbers shaped like AWS's (56 decimal digits), as a
//! child process on a free 127.0.0.1 port. The test command installs it (`scripts/test-deps.sh`, the same place
//! `freshet bench api` looks: `$XDG_CACHE_HOME/freshet/kinesalite`, else `~/.cache/freshet/kinesalite`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The running emulator; killed when dropped.
pub struct Kinesalite {
    child: Child,
    /// `http://127.0.0.1:<port>/`
    pub endpoint: String,
}

impl Drop for Kinesalite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the test command installs the npm package.
pub fn package_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("freshet/kinesalite/node_modules/kinesalite")
}

impl Kinesalite {
    /// Start kinesalite in memory, with streams that become ACTIVE after `settle_ms` (kinesalite's default is
    /// 500 ms, like AWS's CREATING/UPDATING states but shorter).
    pub fn start(settle_ms: u64) -> Self {
        let package = package_dir();
        assert!(
            package.join("index.js").exists(),
            "kinesalite is not installed at {} (run scripts/test-deps.sh)",
            package.display()
        );
        // Its CLI listens on every interface; its module lets us bind the loopback address only.
        let script = "const ms = Number(process.env.KINESALITE_SETTLE_MS);\n\
             const server = require(process.env.KINESALITE_PACKAGE)(\n\
               {createStreamMs: ms, deleteStreamMs: ms, updateStreamMs: ms, shardLimit: 50});\n\
             server.listen(0, '127.0.0.1', () => console.log('listening ' + server.address().port));";
        let mut child = Command::new("node")
            .arg("-e")
            .arg(script)
            .env("KINESALITE_PACKAGE", &package)
            .env("KINESALITE_SETTLE_MS", settle_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs (the test command installs nodejs)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Reads every line, so kinesalite never blocks on a full pipe; the first `listening` line gives the port.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = tx.send(port.trim().parse::<u16>().ok());
                }
            }
        });
        let mut kinesalite = Self {
            child,
            endpoint: String::new(),
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(port)) => kinesalite.endpoint = format!("http://127.0.0.1:{port}/"),
            other => panic!("kinesalite did not start listening within 30 s: {other:?}"),
        }
        kinesalite
    }
}
