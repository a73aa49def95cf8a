//! Test support shared by Cairn's crates.
//!
//! - [`postgres_url`]: a fresh, empty database on the throwaway Postgres server
//!   `scripts/test` starts (`CAIRN_TEST_PG_URL`).
//! - [`sqlite_url`]: a SQLite file in a directory the test owns.
//! - [`Process`]: a service binary started as a child process on a free port,
//!   waited on until SERVING, stopped with SIGTERM, SIGKILL or SIGSTOP.
//! - [`cluster`]: agents sharing a metadata database, and the calls tests make to them.
//!
//! When `CAIRN_TEST_REQUIRE_PEERS` is set (as `scripts/test` does), a missing
//! peer fails the test instead of skipping it.

#![allow(clippy::unwrap_used)]

pub mod cluster;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rand::RngExt;
use sqlx::{Connection, Executor};

/// Whether tests must fail rather than skip when a peer is missing.
fn peers_required() -> bool {
    std::env::var_os("CAIRN_TEST_REQUIRE_PEERS").is_some()
}

/// A URL for a new, empty Postgres database, or `None` (test skipped) when no
/// server is configured and peers are not required.
pub async fn postgres_url() -> Option<String> {
    let Ok(base) = std::env::var("CAIRN_TEST_PG_URL") else {
        assert!(
            !peers_required(),
            "CAIRN_TEST_PG_URL is not set; run through scripts/test"
        );
        eprintln!("skipping: CAIRN_TEST_PG_URL is not set (scripts/test starts a Postgres server)");
        return None;
    };
    let name = format!("cairn_test_{}", rand::rng().random_range(0..u64::MAX));
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    conn.close().await.unwrap();
    let (server, _db) = base.rsplit_once('/').unwrap();
    Some(format!("{server}/{name}"))
}

/// `name` from the environment parsed as a `T`, or `default` (soak knobs).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Polls `check` every 50 ms until it answers `Some`, and returns that; panics
/// naming `what` once `timeout` has passed. The one way tests wait for
/// something to become true.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < give_up, "not within {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One behaviour suite, several real backends: every test function runs on
/// each backend, as `backend::test`. A backend is an async function taking the
/// test's [`TempDir`] and returning the subject, or `None` to skip (a peer
/// that is not configured; [`postgres_url`] and friends fail instead when
/// `CAIRN_TEST_REQUIRE_PEERS` is set).
///
/// ```ignore
/// cairn_testkit::behaviour_suite! {
///     backends { sqlite => open_sqlite, postgres => open_postgres }
///     tests { create_then_read, deletes_are_idempotent }
/// }
/// ```
#[macro_export]
macro_rules! behaviour_suite {
    (backends { $($backend:ident => $setup:ident),+ $(,)? } tests $tests:tt) => {
        $( $crate::behaviour_suite!(@backend $backend, $setup, $tests); )+
    };
    (@backend $backend:ident, $setup:ident, { $($test:ident),* $(,)? }) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $test() {
                    let dir = $crate::TempDir::new(stringify!($backend));
                    let Some(subject) = super::$setup(&dir).await else {
                        return;
                    };
                    super::$test(subject).await;
                }
            )*
        }
    };
}

/// A plain HTTP/1.1 GET: the whole response (status line, headers, body) as text.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    socket.read_to_string(&mut out).await.unwrap();
    out
}

/// An HTTP/1.1 response: status, headers (names lowercased), body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.1 POST with `headers` and `body` (the connection closes after it).
pub async fn http_post(addr: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before reading the whole body.
    let _ = socket.write_all(body).await;
    let mut raw = Vec::new();
    let _ = socket.read_to_end(&mut raw).await;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw.get(split + 4..).unwrap_or_default().to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body);
    }
    HttpResponse { status, headers, body }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = end + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = raw.get(start + size + 2..).unwrap_or_default();
    }
    out
}

/// The value of the series `series` (name with labels, as exposed) in a scrape.
pub fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// A SQLite URL for a new database file under `dir`.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("test.db").display())
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system temp dir.
    pub fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "cairn-{label}-{}-{}",
            std::process::id(),
            rand::rng().random_range(0..u64::MAX)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port (bound and released). Picked below the kernel's
/// ephemeral range (32768+), where outgoing connections take their local
/// ports, so a client socket cannot grab it before the service binds it.
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let port = rand::random_range(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The path of a workspace binary built next to the running test.
pub fn binary(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Starts `path` in `dir` with its output appended to a log of its own; a
/// service (`listen` given) binds there, puts metrics on a port of its own
/// choosing and reports its addresses to the returned address file.
fn launch(
    path: &Path,
    listen: Option<&str>,
    args: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
) -> (Child, PathBuf, PathBuf) {
    static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let binary_name = path
        .file_name()
        .map_or("process".into(), |n| n.to_string_lossy().into_owned());
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stem = format!("{binary_name}-{}-{n}", std::process::id());
    let log = dir.join(format!("{stem}.log"));
    let address_file = dir.join(format!("{stem}.addr"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let err = out.try_clone().unwrap();
    let mut command = Command::new(path);
    if let Some(listen) = listen {
        command
            .arg("--listen")
            .arg(listen)
            // Metrics on a port of its own choosing too (tests may override).
            .args(["--set", "metrics.listen=127.0.0.1:0"])
            .env(cairn_service::app::ADDRESS_FILE_ENV, &address_file);
    }
    let child = command
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    (child, log, address_file)
}

/// A service binary running as a child process.
pub struct Process {
    child: Option<Child>,
    /// `127.0.0.1:PORT` it listens on.
    pub addr: String,
    /// Where its metrics listener is, when it reported one.
    pub metrics_addr: Option<String>,
    /// Every listener it reported, by name (`grpc`, `metrics`, `otlp`, …).
    pub addresses: std::collections::BTreeMap<String, String>,
    /// Its combined stdout and stderr.
    pub log: PathBuf,
}

impl Process {
    /// Starts `binary ARGS…` in `dir` with extra environment. It binds
    /// `127.0.0.1:0` itself and reports the port it got (through
    /// `CAIRN_ADDRESS_FILE`), so no other process can take the port between
    /// choosing and binding it. Waits until it has bound (not until SERVING).
    pub fn start(binary_name: &str, args: &[&str], env: &[(&str, &str)], dir: &Path) -> Process {
        Process::spawn(&binary(binary_name), None, args, env, dir)
    }

    /// [`Process::start`] on a given port (a restart that keeps its address).
    pub fn start_on(port: u16, binary_name: &str, args: &[&str], env: &[(&str, &str)], dir: &Path) -> Process {
        Process::spawn(&binary(binary_name), Some(port), args, env, dir)
    }

    /// A binary that serves nothing (a worker, a client): started with just
    /// `args`, not waited for; it has no addresses.
    pub fn start_plain(binary_name: &str, args: &[&str], env: &[(&str, &str)], dir: &Path) -> Process {
        let (child, log, _) = launch(&binary(binary_name), None, args, env, dir);
        Process {
            child: Some(child),
            addr: String::new(),
            metrics_addr: None,
            addresses: Default::default(),
            log,
        }
    }

    /// [`Process::start`] for a binary given by path (another build, say).
    pub fn start_binary(path: &Path, args: &[&str], env: &[(&str, &str)], dir: &Path) -> Process {
        Process::spawn(path, None, args, env, dir)
    }

    fn spawn(path: &Path, port: Option<u16>, args: &[&str], env: &[(&str, &str)], dir: &Path) -> Process {
        let listen = format!("127.0.0.1:{}", port.unwrap_or(0));
        let (mut child, log, address_file) = launch(path, Some(&listen), args, env, dir);
        let give_up = Instant::now() + Duration::from_secs(60);
        let addresses: std::collections::BTreeMap<String, String> = loop {
            if let Ok(text) = std::fs::read_to_string(&address_file)
                && text.lines().any(|l| l.starts_with("grpc="))
            {
                break text
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
            }
            // Exited early (a port taken on restart, a bad flag): the caller
            // sees it at wait_serving with the log.
            if child.try_wait().ok().flatten().is_some() || Instant::now() > give_up {
                break [("grpc".to_owned(), listen)].into();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Process {
            child: Some(child),
            addr: addresses.get("grpc").cloned().unwrap_or_default(),
            metrics_addr: addresses.get("metrics").cloned(),
            addresses,
            log,
        }
    }

    /// What its metrics listener answers to `GET /metrics` (Prometheus text).
    pub async fn scrape(&self) -> String {
        let addr = self
            .metrics_addr
            .as_deref()
            .expect("the process reported no metrics listener");
        http_get(addr, "/metrics").await
    }

    /// The address of listener `name`; panics when it reported none.
    pub fn address(&self, name: &str) -> &str {
        self.addresses
            .get(name)
            .unwrap_or_else(|| panic!("the process reported no {name} listener"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until health reports SERVING; panics with the log after `timeout`.
    pub async fn wait_serving(&mut self, timeout: Duration) {
        if let Err(exited) = self.try_wait_serving(timeout).await {
            panic!("{exited}");
        }
    }

    /// [`Process::wait_serving`], but an early exit is returned (with the log)
    /// instead of panicking, so the caller can retry.
    pub async fn try_wait_serving(&mut self, timeout: Duration) -> Result<(), String> {
        use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
        let give_up = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("{} exited with {status}:\n{}", self.addr, self.log_text()));
            }
            let config = cairn_service::ClientConfig {
                connect_timeout: Duration::from_millis(500),
                ..Default::default()
            };
            if let Ok(endpoint) = cairn_service::client::endpoint(&self.addr, &config)
                && let Ok(channel) = endpoint.connect().await
            {
                let request = HealthCheckRequest { service: String::new() };
                let reply = HealthClient::new(channel).check(request).await;
                if reply.is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving) {
                    return Ok(());
                }
            }
            assert!(
                Instant::now() < give_up,
                "{} not SERVING after {timeout:?}:\n{}",
                self.addr,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`Process::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// SIGTERM, then waits for the exit code (SIGKILL after `timeout`). Waits
    /// without blocking the test's runtime, so the test's own client
    /// connections can answer the server's GOAWAY and let it drain.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let give_up = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > give_up {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A moto S3-compatible server of the test's own (the `moto_server` binary
/// named by `CAIRN_TEST_MOTO`) on a free port, stopped when dropped; tests use
/// it to make the object store come and go.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl S3Server {
    /// Starts one and waits until it answers, or `None` (test skipped) when
    /// `CAIRN_TEST_MOTO` is not set and peers are not required.
    pub async fn start() -> Option<S3Server> {
        let Ok(binary) = std::env::var("CAIRN_TEST_MOTO") else {
            assert!(
                !peers_required(),
                "CAIRN_TEST_MOTO is not set; run through scripts/test"
            );
            eprintln!("skipping: CAIRN_TEST_MOTO (a moto_server binary) is not set");
            return None;
        };
        let port = free_port();
        let mut server = S3Server {
            child: None,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        server.child = Some(Self::spawn(&binary, port));
        server.wait_up().await;
        Some(server)
    }

    fn spawn(binary: &str, port: u16) -> Child {
        Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    async fn wait_up(&self) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("moto_server did not start on port {}", self.port);
    }

    /// Stops the server (the store is down; its contents are gone).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        let binary = std::env::var("CAIRN_TEST_MOTO").unwrap();
        self.child = Some(Self::spawn(&binary, self.port));
        self.wait_up().await;
    }

    /// The client settings for this server (moto accepts any credentials).
    pub fn config(&self) -> cairn_object_store::S3Config {
        cairn_object_store::S3Config {
            endpoint: self.endpoint.clone(),
            access_key_id: "test".into(),
            secret_access_key: "test-secret".into(),
            ..Default::default()
        }
    }

    /// Creates `bucket` (retrying while the server comes up).
    pub async fn create_bucket(&self, bucket: &str) -> cairn_object_store::S3Store {
        let store = cairn_object_store::S3Store::new(bucket, "segments", &self.config()).unwrap();
        for _ in 0..100 {
            if store.ensure_bucket().await.is_ok() {
                return store;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not create bucket {bucket} on {}", self.endpoint);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Peak resident memory of a running process (VmHWM), in MiB; 0 if unknown.
pub fn peak_rss_mib(process: &Process) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.pid())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The `p` quantile (0..=1) of already sorted samples; 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i]
}
