//! A throwaway FerretDB (the MongoDB wire protocol on SQLite) for the tests
//! and benchmarks of the MongoDB store: free port on 127.0.0.1, data in a
//! fresh temp dir, gone when the handle is dropped or the process ends.
//!
//! The binary is `$PROMHUB_FERRETDB`, else `ferretdb` on `PATH`, else
//! `~/go/bin/ferretdb` (`scripts/test.sh` installs it there). When none is
//! found the MongoDB tests fail with a message saying so, unless
//! `PROMHUB_SKIP_MONGO=1`, which makes them print a skip notice instead.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Names the FerretDB binary to use.
pub const BINARY_ENV: &str = "PROMHUB_FERRETDB";
/// `1` skips the MongoDB tests (visibly) instead of failing them when no
/// FerretDB is installed.
pub const SKIP_ENV: &str = "PROMHUB_SKIP_MONGO";

/// How long a start waits for the server to accept connections (a hang
/// guard, not a performance expectation).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs FerretDB under a tiny shell that kills it and deletes its data dir
/// as soon as our end of the shell's stdin pipe closes: on drop, and also
/// when this process ends in any way (even SIGKILL), because the kernel
/// closes the pipe then. A handle in a `static` is never dropped, so this is
/// what cleans up the server shared by a test binary. The shell exits when
/// the server does; a server that died by itself leaves its dir (and log)
/// behind for the start error or for a post-mortem.
const SUPERVISOR: &str = r#"dir=$1; shift
exec 3<&0
"$@" </dev/null >"$dir/ferretdb.log" 2>&1 &
server=$!
(while read -r _; do :; done; : >"$dir/stopping"; kill $server 2>/dev/null) <&3 &
watcher=$!
exec 3<&-
wait $server
kill $watcher 2>/dev/null
if [ -e "$dir/stopping" ]; then rm -rf "$dir"; fi
"#;

/// A running FerretDB.
#[derive(Debug)]
pub struct FerretDb {
    supervisor: Child,
    /// Closing it stops the server (see [`SUPERVISOR`]).
    stdin: Option<ChildStdin>,
    port: u16,
    dir: PathBuf,
}

impl FerretDb {
    /// The binary to run: `$PROMHUB_FERRETDB`, else `ferretdb` on `PATH`,
    /// else `~/go/bin/ferretdb`.
    pub fn find_binary() -> Result<PathBuf, String> {
        if let Some(path) = std::env::var_os(BINARY_ENV).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(format!("{BINARY_ENV}={} is not a file", path.display()))
            };
        }
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("ferretdb"))
                .find(|candidate| candidate.is_file())
        });
        on_path
            .or_else(|| {
                let home = std::env::var_os("HOME")?;
                let candidate = Path::new(&home).join("go/bin/ferretdb");
                candidate.is_file().then_some(candidate)
            })
            .ok_or_else(missing_binary_message)
    }

    /// Starts a server on a free port of 127.0.0.1 with its data in a fresh
    /// temp dir.
    pub fn start() -> Result<FerretDb, String> {
        let binary = Self::find_binary()?;
        // The port is found by binding port 0 and releasing it; another
        // process may grab it in between, so try a few times.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::start_once(&binary) {
                Ok(server) => return Ok(server),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    fn start_once(binary: &Path) -> Result<FerretDb, String> {
        let port = free_port().map_err(|e| format!("cannot find a free port: {e}"))?;
        let dir = fresh_dir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let dir_text = dir.to_string_lossy().into_owned();
        let mut supervisor = Command::new("sh")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("sh")
            .arg(&dir)
            .arg(binary)
            .arg("--handler=sqlite")
            // Every commit synced, as the hub's durability tests assume.
            .arg(format!(
                "--sqlite-url=file:{dir_text}/?_pragma=synchronous(full)"
            ))
            .arg(format!("--listen-addr=127.0.0.1:{port}"))
            .arg(format!("--state-dir={dir_text}"))
            .arg("--debug-addr=-")
            .arg("--telemetry=disable")
            .arg("--log-level=warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run sh to start {}: {e}", binary.display()))?;
        let stdin = supervisor.stdin.take();
        let mut server = FerretDb {
            supervisor,
            stdin,
            port,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(server);
            }
            let exited = server.supervisor.try_wait().ok().flatten().is_some();
            if exited || Instant::now() > deadline {
                let log = server.log_tail();
                server.stop();
                // A server that died by itself left its dir for this message.
                let _ = std::fs::remove_dir_all(&server.dir);
                return Err(format!(
                    "FerretDB ({}) did not start on port {port}: {log}",
                    binary.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server shared by every test of this process, started on first
    /// use. `None` (after printing a skip notice naming `test`) when
    /// `PROMHUB_SKIP_MONGO=1`.
    ///
    /// # Panics
    /// When FerretDB cannot be found or started: a MongoDB test must not
    /// pass without having run.
    pub fn shared_or_skip(test: &str) -> Option<&'static FerretDb> {
        static SHARED: OnceLock<Result<FerretDb, String>> = OnceLock::new();
        if skip_requested() {
            // Written to the process's stderr, not through the test
            // harness's capture, so the skip shows in every test run.
            let line = format!("SKIPPED {test}: MongoDB store test ({SKIP_ENV}=1)\n");
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            return None;
        }
        match SHARED.get_or_init(FerretDb::start) {
            Ok(server) => Some(server),
            Err(e) => panic!("{e}"),
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for database `db` on this server.
    pub fn uri(&self, db: &str) -> String {
        format!("mongodb://127.0.0.1:{}/{db}", self.port)
    }

    fn log_tail(&self) -> String {
        let Ok(file) = std::fs::File::open(self.dir.join("ferretdb.log")) else {
            return "no log".to_owned();
        };
        let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    fn stop(&mut self) {
        // EOF on its stdin makes the supervisor kill the server, wait for it
        // and delete the data dir.
        drop(self.stdin.take());
        let _ = self.supervisor.wait();
    }
}

impl Drop for FerretDb {
    fn drop(&mut self) {
        self.stop();
    }
}

fn skip_requested() -> bool {
    std::env::var(SKIP_ENV).is_ok_and(|v| v == "1")
}

fn missing_binary_message() -> String {
    format!(
        "FerretDB is not installed, so the MongoDB store tests cannot run. Install it with \
         `source scripts/lib.sh && ensure_ferretdb` (needs Go), or point {BINARY_ENV} at a \
         ferretdb binary, or set {SKIP_ENV}=1 to skip these tests."
    )
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn fresh_dir() -> std::io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "promhub-ferretdb-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}
