//! Layered configuration: defaults → optional TOML file → `CAIRN_…` environment
//! (`__` separates nesting levels) → `--set key.path=value` and other flags, then
//! `validate()`.
//!
//! Every layer is merged as a TOML tree before the typed config is deserialized,
//! so each layer can set any field and typos are rejected by `deny_unknown_fields`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use toml::{Table, Value};

/// Prefix of every environment variable that sets a config field.
pub const ENV_PREFIX: &str = "CAIRN_";

/// Variables with [`ENV_PREFIX`] that are not config fields.
const RESERVED_ENV: &[&str] = &["CAIRN_CONFIG", "CAIRN_API_KEY", "CAIRN_ADDRESS_FILE"];
const RESERVED_ENV_PREFIXES: &[&str] = &["CAIRN_TEST_"];

/// A config could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("override `{0}` is not of the form key.path=value")]
    Override(String),
    #[error("`{path}` cannot be set: `{parent}` is not a table")]
    NotATable { path: String, parent: String },
    #[error("invalid config: {0}")]
    Deserialize(Box<toml::de::Error>),
    #[error("invalid config: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl From<cairn_client::channel::InvalidField> for ConfigError {
    fn from(e: cairn_client::channel::InvalidField) -> Self {
        ConfigError::Invalid {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl ConfigError {
    /// A field holds a value `validate()` rejects.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The config of one service binary.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default {
    /// Checks values that parse but make no sense together.
    fn validate(&self) -> Result<(), ConfigError>;
    /// The gRPC server settings.
    fn server(&self) -> &ServerConfig;
    /// The gRPC server settings, for flags that override them.
    fn server_mut(&mut self) -> &mut ServerConfig;
    /// Logging and tracing settings.
    fn telemetry(&self) -> &TelemetryConfig;
    /// Where metrics are exposed.
    fn metrics(&self) -> &MetricsConfig;
    /// Listeners beyond `grpc` and `metrics` (name, address), bound before
    /// the service starts so the address file names them all.
    fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        Vec::new()
    }
}

/// Implements [`ServiceConfig::server`], `server_mut` and `telemetry` for a
/// config whose sections are the fields `grpc`, `telemetry` and `metrics`, as
/// every Cairn service's are. Use inside the `impl ServiceConfig` block.
#[macro_export]
macro_rules! standard_sections {
    () => {
        fn server(&self) -> &$crate::ServerConfig {
            &self.grpc
        }
        fn server_mut(&mut self) -> &mut $crate::ServerConfig {
            &mut self.grpc
        }
        fn telemetry(&self) -> &$crate::TelemetryConfig {
            &self.telemetry
        }
        fn metrics(&self) -> &$crate::config::MetricsConfig {
            &self.metrics
        }
    };
}

/// Flags every service binary takes for its configuration.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML config file; fields it leaves out keep their defaults.
    #[arg(long, short = 'c', env = "CAIRN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective config (after every layer) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Address the gRPC server listens on (same as `--set grpc.listen=ADDR`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Set any field, e.g. `--set grpc.request_timeout=5s`; wins over file and env.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// Loads a service config from every layer, reading the process environment.
pub fn load<C: ServiceConfig>(args: &ConfigArgs) -> Result<C, ConfigError> {
    load_from(args, std::env::vars())
}

/// Loads a service config from every layer with an explicit environment (for tests).
pub fn load_from<C: ServiceConfig>(
    args: &ConfigArgs,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<C, ConfigError> {
    let mut tree = to_table(&C::default());
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let file: Table = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.clone(),
            source: Box::new(source),
        })?;
        merge(&mut tree, file);
    }
    let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| is_config_env(k)).collect();
    env.sort();
    for (key, raw) in env {
        let path: Vec<String> = key[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        // Many services share one environment (a laptop, a compose file), so a
        // section another service owns is not an error here; keys inside a
        // section this service owns are still checked.
        if !tree.contains_key(&path[0]) {
            continue;
        }
        set_path(&mut tree, &path, &raw)?;
    }
    for item in &args.overrides {
        let (key, raw) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::Override(item.clone()))?;
        let path: Vec<String> = key.trim().split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Override(item.clone()));
        }
        set_path(&mut tree, &path, raw.trim())?;
    }
    let mut config: C = Value::Table(tree)
        .try_into()
        .map_err(|e| ConfigError::Deserialize(Box::new(e)))?;
    if let Some(listen) = args.listen {
        config.server_mut().listen = listen;
    }
    config.server().validate()?;
    config.telemetry().validate()?;
    config.metrics().validate()?;
    config.validate()?;
    Ok(config)
}

/// Renders a config as TOML, as `--print-config` shows it.
pub fn render<C: Serialize>(config: &C) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|e| format!("# config cannot be rendered: {e}\n"))
}

fn is_config_env(key: &str) -> bool {
    key.starts_with(ENV_PREFIX)
        && key.len() > ENV_PREFIX.len()
        && !RESERVED_ENV.contains(&key)
        && !RESERVED_ENV_PREFIXES.iter().any(|p| key.starts_with(p))
}

fn to_table<C: Serialize>(config: &C) -> Table {
    match Value::try_from(config) {
        Ok(Value::Table(table)) => table,
        _ => Table::new(),
    }
}

fn merge(base: &mut Table, over: Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Sets `path` to `raw`, typed like the value it replaces: a string field takes
/// the text as is; anything else is parsed as a TOML value, falling back to text.
fn set_path(tree: &mut Table, path: &[String], raw: &str) -> Result<(), ConfigError> {
    let (last, parents) = path.split_last().ok_or_else(|| ConfigError::Override(raw.into()))?;
    let mut table = tree;
    for (i, key) in parents.iter().enumerate() {
        let entry = table.entry(key.clone()).or_insert_with(|| Value::Table(Table::new()));
        table = match entry {
            Value::Table(t) => t,
            _ => {
                return Err(ConfigError::NotATable {
                    path: path.join("."),
                    parent: path[..=i].join("."),
                });
            }
        };
    }
    let value = match table.get(last) {
        Some(Value::String(_)) => Value::String(raw.to_owned()),
        _ => parse_value(raw),
    };
    table.insert(last.clone(), value);
    Ok(())
}

fn parse_value(raw: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

/// Settings every gRPC server shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Longest a handler may take to answer; a caller's shorter `grpc-timeout` wins.
    #[serde(with = "cairn_client::units::duration")]
    pub request_timeout: Duration,
    /// Calls handled at once across all connections (streams count while
    /// they run); more are refused at once with `RESOURCE_EXHAUSTED`
    /// (OVERLOADED, retry info) instead of queueing.
    pub max_concurrent_requests: usize,
    /// HTTP/2 streams one connection may open at once.
    pub max_concurrent_streams: u32,
    /// Largest request or response message.
    #[serde(with = "cairn_client::units::bytes_usize")]
    pub max_message_bytes: usize,
    /// HTTP/2 keepalive ping interval; 0 disables pings.
    #[serde(with = "cairn_client::units::duration")]
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection closes.
    #[serde(with = "cairn_client::units::duration")]
    pub keepalive_timeout: Duration,
    /// How long calls in flight get to finish once shutdown begins.
    #[serde(with = "cairn_client::units::duration")]
    pub shutdown_grace: Duration,
    /// A response stream that sends nothing for this long is ended with
    /// `UNAVAILABLE` (STREAM_LIMIT) so the caller resumes; 0 disables.
    #[serde(with = "cairn_client::units::duration")]
    pub stream_idle_timeout: Duration,
    /// A response stream is ended after this long (`UNAVAILABLE`,
    /// STREAM_LIMIT), so long-lived readers rebalance; 0 disables.
    #[serde(with = "cairn_client::units::duration")]
    pub stream_max_lifetime: Duration,
}

impl ServerConfig {
    /// Defaults, listening on 127.0.0.1 at `port`.
    pub fn on_port(port: u16) -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1024,
            max_concurrent_streams: 256,
            max_message_bytes: 16 * 1024 * 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(20),
            stream_idle_timeout: Duration::from_secs(600),
            stream_max_lifetime: Duration::from_secs(24 * 3600),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        positive("grpc.request_timeout", self.request_timeout.as_nanos() as u64)?;
        positive("grpc.max_concurrent_requests", self.max_concurrent_requests as u64)?;
        positive("grpc.max_concurrent_streams", self.max_concurrent_streams.into())?;
        if self.max_message_bytes < 1024 || self.max_message_bytes > 256 * 1024 * 1024 {
            return Err(ConfigError::invalid(
                "grpc.max_message_bytes",
                "must be between 1 KiB and 256 MiB",
            ));
        }
        if !self.keepalive_interval.is_zero() {
            positive("grpc.keepalive_timeout", self.keepalive_timeout.as_nanos() as u64)?;
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig::on_port(0)
    }
}

/// Where the service exposes its Prometheus metrics (off by default here;
/// each service's config defaults it beside its gRPC port).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` of the HTTP listener serving `GET /metrics` (its own
    /// port, never the gRPC one); empty turns it off.
    pub listen: String,
}

impl MetricsConfig {
    /// Metrics on 127.0.0.1 at `port`.
    pub fn on_port(port: u16) -> Self {
        MetricsConfig {
            listen: format!("127.0.0.1:{port}"),
        }
    }

    /// The documented default beside a gRPC port: 50051 → 9551, 50052 →
    /// 9552, … (off for ports outside 50000–50499).
    pub fn beside(grpc_port: u16) -> Self {
        match grpc_port.checked_sub(50_000) {
            Some(n) if n < 500 => MetricsConfig::on_port(9_500 + n),
            _ => MetricsConfig::default(),
        }
    }

    /// The address to listen on, if on.
    pub fn address(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.is_empty() && self.address().is_none() {
            return Err(ConfigError::invalid(
                "metrics.listen",
                "must be host:port (an IP address), or empty to turn metrics off",
            ));
        }
        Ok(())
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}

/// Logging and trace export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `tracing` env-filter directives, e.g. `info,cairn_agent=debug`. `RUST_LOG` wins when set.
    pub log: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint to export traces to, e.g. `http://127.0.0.1:4317`; empty disables export.
    pub otlp_endpoint: String,
    /// Fraction of new traces sampled (traces continued from a caller follow its decision).
    pub trace_sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log: "info".into(),
            log_format: LogFormat::Text,
            otlp_endpoint: String::new(),
            trace_sample_ratio: 1.0,
        }
    }
}

impl TelemetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(ConfigError::invalid(
                "telemetry.trace_sample_ratio",
                "must be between 0 and 1",
            ));
        }
        let scheme_ok = self.otlp_endpoint.starts_with("http://") || self.otlp_endpoint.starts_with("https://");
        if !self.otlp_endpoint.is_empty() && !scheme_ok {
            return Err(ConfigError::invalid(
                "telemetry.otlp_endpoint",
                "must start with http:// or https://",
            ));
        }
        Ok(())
    }
}

fn positive(field: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(field, "must be greater than 0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct TestConfig {
        grpc: ServerConfig,
        telemetry: TelemetryConfig,
        metrics: MetricsConfig,
        store: Store,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Store {
        url: String,
        pool: u32,
    }

    impl Default for Store {
        fn default() -> Self {
            Store {
                url: "sqlite://x.db".into(),
                pool: 4,
            }
        }
    }

    impl Default for TestConfig {
        fn default() -> Self {
            TestConfig {
                grpc: ServerConfig::on_port(50099),
                telemetry: TelemetryConfig::default(),
                metrics: MetricsConfig::default(),
                store: Store::default(),
            }
        }
    }

    impl ServiceConfig for TestConfig {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.store.pool > 100 {
                return Err(ConfigError::invalid("store.pool", "at most 100"));
            }
            Ok(())
        }
        crate::standard_sections!();
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn file(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(text)
    }

    /// A tiny self-deleting temp file, to keep the dev-dependency tree lean.
    mod tempfile_path {
        use std::path::PathBuf;
        pub struct TempPath(pub PathBuf);
        impl TempPath {
            pub fn with(text: &str) -> Self {
                let path = std::env::temp_dir().join(format!(
                    "cairn-config-test-{}-{:?}.toml",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::write(&path, text).unwrap();
                TempPath(path)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c: TestConfig = load_from(&ConfigArgs::default(), env(&[])).unwrap();
        assert_eq!(c, TestConfig::default());
    }

    #[test]
    fn each_layer_overrides_the_one_before() {
        let f = file("[store]\nurl = \"from-file\"\npool = 7\n[grpc]\nrequest_timeout = \"1s\"\n");
        let args = ConfigArgs {
            config: Some(f.0.clone()),
            overrides: vec!["store.url=from-flag".into()],
            ..Default::default()
        };
        let c: TestConfig = load_from(
            &args,
            env(&[("CAIRN_STORE__URL", "from-env"), ("CAIRN_STORE__POOL", "9")]),
        )
        .unwrap();
        assert_eq!(c.store.url, "from-flag");
        assert_eq!(c.store.pool, 9, "env beats file");
        assert_eq!(c.grpc.request_timeout, Duration::from_secs(1), "file beats default");
        assert_eq!(
            c.grpc.keepalive_interval,
            Duration::from_secs(30),
            "untouched default stays"
        );
    }

    #[test]
    fn string_fields_keep_numeric_looking_text() {
        let c: TestConfig = load_from(&ConfigArgs::default(), env(&[("CAIRN_STORE__URL", "12345")])).unwrap();
        assert_eq!(c.store.url, "12345");
    }

    #[test]
    fn listen_flag_wins() {
        let args = ConfigArgs {
            listen: Some("127.0.0.1:1234".parse().unwrap()),
            overrides: vec!["grpc.listen=127.0.0.1:9".into()],
            ..Default::default()
        };
        let c: TestConfig = load_from(&args, env(&[])).unwrap();
        assert_eq!(c.grpc.listen.port(), 1234);
    }

    #[test]
    fn unknown_keys_are_rejected_in_file_env_and_flags() {
        let f = file("[store]\nurll = \"typo\"\n");
        let args = ConfigArgs {
            config: Some(f.0.clone()),
            ..Default::default()
        };
        assert!(matches!(
            load_from::<TestConfig>(&args, env(&[])),
            Err(ConfigError::Deserialize(_))
        ));

        let e = load_from::<TestConfig>(&ConfigArgs::default(), env(&[("CAIRN_STORE__URLL", "x")]));
        assert!(matches!(e, Err(ConfigError::Deserialize(_))));

        let args = ConfigArgs {
            overrides: vec!["grpc.lisen=1".into()],
            ..Default::default()
        };
        assert!(load_from::<TestConfig>(&args, env(&[])).is_err());
    }

    #[test]
    fn env_for_other_services_sections_and_reserved_names_is_ignored() {
        let c: TestConfig = load_from(
            &ConfigArgs::default(),
            env(&[
                ("CAIRN_AGENT__DATA_DIR", "/x"),
                ("CAIRN_CONFIG", "/nope.toml"),
                ("CAIRN_TEST_PG_URL", "postgres://"),
                ("OTHER", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c, TestConfig::default());
    }

    #[test]
    fn validation_names_the_field() {
        let args = ConfigArgs {
            overrides: vec!["store.pool=1000".into()],
            ..Default::default()
        };
        let err = load_from::<TestConfig>(&args, env(&[])).unwrap_err().to_string();
        assert!(err.contains("store.pool"), "{err}");

        let args = ConfigArgs {
            overrides: vec!["grpc.request_timeout=0".into()],
            ..Default::default()
        };
        let err = load_from::<TestConfig>(&args, env(&[])).unwrap_err().to_string();
        assert!(err.contains("grpc.request_timeout"), "{err}");

        let args = ConfigArgs {
            overrides: vec!["grpc.request_timeout=30".into()],
            ..Default::default()
        };
        let err = load_from::<TestConfig>(&args, env(&[])).unwrap_err().to_string();
        assert!(err.contains("duration"), "a duration needs its unit: {err}");

        let args = ConfigArgs {
            overrides: vec!["metrics.listen=localhost".into()],
            ..Default::default()
        };
        let err = load_from::<TestConfig>(&args, env(&[])).unwrap_err().to_string();
        assert!(err.contains("metrics.listen"), "{err}");

        let args = ConfigArgs {
            overrides: vec!["telemetry.otlp_endpoint=127.0.0.1:4317".into()],
            ..Default::default()
        };
        let err = load_from::<TestConfig>(&args, env(&[])).unwrap_err().to_string();
        assert!(err.contains("telemetry.otlp_endpoint"), "{err}");
    }

    #[test]
    fn malformed_override_is_an_error() {
        for bad in ["no-equals", "=x", "a..b=1"] {
            let args = ConfigArgs {
                overrides: vec![bad.into()],
                ..Default::default()
            };
            assert!(load_from::<TestConfig>(&args, env(&[])).is_err(), "{bad}");
        }
    }

    #[test]
    fn rendered_config_loads_back_identically() {
        let args = ConfigArgs {
            overrides: vec!["store.pool=11".into()],
            ..Default::default()
        };
        let c: TestConfig = load_from(&args, env(&[])).unwrap();
        let f = file(&render(&c));
        let back: TestConfig = load_from(
            &ConfigArgs {
                config: Some(f.0.clone()),
                ..Default::default()
            },
            env(&[]),
        )
        .unwrap();
        assert_eq!(back, c);
    }
}

/// The config of a service that so far has only the standard server: the gRPC
/// settings and telemetry, listening on `PORT` by default. A service that needs
/// more settings defines its own struct.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicConfig<const PORT: u16> {
    /// The gRPC server.
    pub grpc: ServerConfig,
    /// Logging and tracing.
    pub telemetry: TelemetryConfig,
    /// The metrics listener.
    pub metrics: MetricsConfig,
}

// serde's derive does not handle const generics; these go through plain structs.
#[derive(Serialize)]
struct BasicConfigRef<'a> {
    grpc: &'a ServerConfig,
    telemetry: &'a TelemetryConfig,
    metrics: &'a MetricsConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicConfigOwned {
    grpc: Option<ServerConfig>,
    telemetry: Option<TelemetryConfig>,
    metrics: Option<MetricsConfig>,
}

impl<const PORT: u16> Serialize for BasicConfig<PORT> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        BasicConfigRef {
            grpc: &self.grpc,
            telemetry: &self.telemetry,
            metrics: &self.metrics,
        }
        .serialize(serializer)
    }
}

impl<'de, const PORT: u16> Deserialize<'de> for BasicConfig<PORT> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let owned = BasicConfigOwned::deserialize(deserializer)?;
        Ok(BasicConfig {
            grpc: owned.grpc.unwrap_or_else(|| ServerConfig::on_port(PORT)),
            telemetry: owned.telemetry.unwrap_or_default(),
            metrics: owned.metrics.unwrap_or_else(|| MetricsConfig::beside(PORT)),
        })
    }
}

impl<const PORT: u16> Default for BasicConfig<PORT> {
    fn default() -> Self {
        BasicConfig {
            grpc: ServerConfig::on_port(PORT),
            telemetry: TelemetryConfig::default(),
            metrics: MetricsConfig::beside(PORT),
        }
    }
}

impl<const PORT: u16> ServiceConfig for BasicConfig<PORT> {
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
    crate::standard_sections!();
}

/// Loads `path` as a service's only config layer: what a test of a committed
/// example config calls.
pub fn load_file<C: ServiceConfig>(path: impl Into<PathBuf>) -> Result<C, ConfigError> {
    let args = ConfigArgs {
        config: Some(path.into()),
        ..ConfigArgs::default()
    };
    load_from(&args, std::iter::empty())
}
