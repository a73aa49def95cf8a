//! The auth layer every service uses.
//!
//! Callers send an API key as `authorization: Bearer <key>`, `x-api-key` or
//! `x-junjo-api-key`.
//! The layer resolves it to a [`Principal`] through an [`Authenticator`]
//! (normally [`RemoteAuthenticator`], which asks `cairn-auth` over gRPC and
//! caches answers for at most [`MAX_CACHE_TTL`]), checks the scope the RPC
//! declares in the service's [`Policy`], and hands the principal to the handler
//! in the request extensions. Health and reflection are always open.
//!
//! Failures: no or bad key → `UNAUTHENTICATED`; missing scope →
//! `PERMISSION_DENIED`; auth backend down or slow → `UNAVAILABLE` with retry
//! info (never `INTERNAL`, never let through); too many failed attempts from
//! one client → `RESOURCE_EXHAUSTED` with retry info, before any lookup.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use cairn_proto::cairn::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::{sync::OnceCell, time::Instant};
use tonic::{Code, Status};

use crate::{ClientConfig, client::Client, config::ConfigError, scope::Scope, status};

pub use cairn_client::channel::attach_key;

/// The revocation bound: no cached answer lives longer than this.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(5);
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a failed lookup marks cairn-auth down: uncached keys are refused
/// at once meanwhile (cached ones keep working), then the next caller asks.
const DOWN_HOLD: Duration = Duration::from_millis(500);

/// Who is calling: the identity behind a valid API key.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// Public key id; safe to log.
    pub key_id: String,
    /// Human-readable key name.
    pub name: String,
    /// What the key may do.
    pub scopes: Vec<Scope>,
    /// When the key stops being valid, if ever.
    pub expires_at: Option<SystemTime>,
}

impl Principal {
    /// Whether any granted scope covers `required`.
    pub fn allows(&self, required: &Scope) -> bool {
        self.scopes.iter().any(|s| s.allows(required))
    }

    /// `PERMISSION_DENIED` naming the missing scope unless the key has it.
    pub fn require(&self, required: &Scope) -> Result<(), Status> {
        if self.allows(required) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "API key {} lacks scope {required}",
                self.key_id
            )))
        }
    }
}

impl TryFrom<pb::Principal> for Principal {
    type Error = Status;

    fn try_from(p: pb::Principal) -> Result<Self, Status> {
        let scopes = p
            .scopes
            .iter()
            .map(|s| Scope::parse(s))
            .collect::<Result<_, _>>()
            .map_err(|e| Status::internal(format!("auth service sent {e}")))?;
        Ok(Principal {
            key_id: p.key_id,
            name: p.name,
            scopes,
            expires_at: p
                .expires_at
                .as_ref()
                .and_then(cairn_client::names::system_time_from_timestamp),
        })
    }
}

/// Why a key was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    /// Malformed, unknown, revoked or expired: the caller must not learn which.
    #[error("invalid API key")]
    Invalid,
    /// The key could not be checked; try again later.
    #[error("auth backend unavailable: {0}")]
    Unavailable(String),
}

/// Resolves API keys to principals.
#[tonic::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The principal behind `api_key`.
    async fn authenticate(&self, api_key: &str) -> Result<Principal, AuthError>;
}

/// What an RPC requires of its caller.
#[derive(Debug, Clone)]
pub enum Access {
    /// No key needed.
    Open,
    /// Any valid key; the handler checks finer scopes itself (e.g. per topic).
    Authenticated,
    /// A valid key holding this scope.
    Scope(Scope),
    /// A valid key holding `resource:action` for some name (e.g. InitProducer
    /// needs `topics:produce` on at least one topic).
    AnyName { resource: String, action: String },
}

/// The access each RPC of a server declares, by full method path
/// (`/package.Service/Method`). Deny unless declared: an RPC with no rule is
/// refused (`PERMISSION_DENIED`), and a server with auth on will not start
/// while a method it hosts has none ([`Policy::undeclared`]).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: HashMap<String, Access>,
}

impl Policy {
    /// An empty policy: every RPC is refused until declared.
    pub fn new() -> Self {
        Policy::default()
    }

    /// Declares what `path` needs.
    pub fn rpc(mut self, path: &str, access: Access) -> Self {
        self.rules.insert(path.to_owned(), access);
        self
    }

    /// Declares the same access for several RPCs.
    pub fn rpcs(mut self, paths: &[&str], access: Access) -> Self {
        for path in paths {
            self.rules.insert((*path).to_owned(), access.clone());
        }
        self
    }

    /// What `path` needs, if declared.
    pub fn access(&self, path: &str) -> Option<&Access> {
        self.rules.get(path)
    }

    /// The methods of `services` (full names, as in `FooServer::NAME`) in the
    /// encoded descriptor sets that have no rule here, as `/svc/Method` paths.
    pub fn undeclared(&self, descriptor_sets: &[&[u8]], services: &[&str]) -> Vec<String> {
        let mut missing: Vec<String> = methods(descriptor_sets, services)
            .into_iter()
            .filter(|path| !self.rules.contains_key(path))
            .collect();
        missing.sort();
        missing
    }
}

/// Every method of `services` in the descriptor sets, as `/package.Service/Method`.
pub fn methods(descriptor_sets: &[&[u8]], services: &[&str]) -> Vec<String> {
    use prost::Message;
    let mut out = Vec::new();
    for set in descriptor_sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                let full = if package.is_empty() {
                    name
                } else {
                    format!("{package}.{name}")
                };
                if !services.contains(&full.as_str()) {
                    continue;
                }
                for method in service.method {
                    out.push(format!("/{full}/{}", method.name.unwrap_or_default()));
                }
            }
        }
    }
    out
}

/// Settings for the auth layer of a service that checks keys through `cairn-auth`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthClientConfig {
    /// Check API keys. Turn off only for a private test setup: with it off,
    /// every caller may do everything.
    pub enabled: bool,
    /// Address of `cairn-auth`.
    pub address: String,
    /// How long a valid key's principal is cached (at most 5 s, the revocation bound).
    #[serde(with = "cairn_client::units::duration")]
    pub cache_ttl: Duration,
    /// How long a rejected key stays rejected without asking again (at most 5 s).
    #[serde(with = "cairn_client::units::duration")]
    pub negative_cache_ttl: Duration,
    /// Most cached keys; beyond it, expired entries and then everything is dropped.
    pub cache_capacity: usize,
    /// Failed validations one client IP may burst before being refused.
    pub failure_burst: u32,
    /// Failed validations per second one client IP may sustain.
    pub failures_per_sec: u32,
    /// The channel to `cairn-auth`.
    pub client: ClientConfig,
}

impl Default for AuthClientConfig {
    fn default() -> Self {
        AuthClientConfig {
            enabled: true,
            address: "127.0.0.1:50051".into(),
            cache_ttl: Duration::from_secs(2),
            negative_cache_ttl: Duration::from_secs(2),
            cache_capacity: 100_000,
            failure_burst: 50,
            failures_per_sec: 20,
            client: ClientConfig {
                request_timeout: Duration::from_secs(2),
                ..ClientConfig::default()
            },
        }
    }
}

impl AuthClientConfig {
    /// Checks the values, naming fields under `section`.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.cache_ttl > MAX_CACHE_TTL {
            return Err(ConfigError::invalid(
                format!("{section}.cache_ttl"),
                "at most 5s (the revocation bound)",
            ));
        }
        if self.negative_cache_ttl > MAX_CACHE_TTL {
            return Err(ConfigError::invalid(
                format!("{section}.negative_cache_ttl"),
                "at most 5s (the revocation bound)",
            ));
        }
        if self.address.is_empty() {
            return Err(ConfigError::invalid(format!("{section}.address"), "must not be empty"));
        }
        if self.failure_burst == 0 || self.failures_per_sec == 0 {
            return Err(ConfigError::invalid(
                format!("{section}.failure_burst"),
                "limits must be greater than 0",
            ));
        }
        Ok(self.client.validate(&format!("{section}.client"))?)
    }
}

/// The auth layer of one server: who checks keys, what each RPC needs, and the
/// per-client limit on failed attempts.
#[derive(Clone)]
pub struct Auth {
    authenticator: Arc<dyn Authenticator>,
    policy: Arc<Policy>,
    failures: Arc<FailureLimiter>,
}

impl Auth {
    /// An auth layer with the default failure limits (50 burst, 20/s per client).
    pub fn new(authenticator: Arc<dyn Authenticator>, policy: Policy) -> Self {
        Auth::with_limits(authenticator, policy, 50, 20)
    }

    /// An auth layer with explicit failure limits per client IP.
    pub fn with_limits(authenticator: Arc<dyn Authenticator>, policy: Policy, burst: u32, per_sec: u32) -> Self {
        Auth {
            authenticator,
            policy: Arc::new(policy),
            failures: Arc::new(FailureLimiter::new(burst, per_sec)),
        }
    }

    /// The auth layer a service configured with `config` puts in front of
    /// its RPCs: keys checked with `cairn-auth` (counted in `metrics`), the
    /// configured failure limits; `None` (and a warning) when auth is off.
    pub fn remote(
        config: &AuthClientConfig,
        policy: Policy,
        metrics: &crate::Metrics,
    ) -> Result<Option<Auth>, tonic::transport::Error> {
        if !config.enabled {
            tracing::warn!("auth is disabled: every caller may do everything");
            return Ok(None);
        }
        let authenticator = Arc::new(RemoteAuthenticator::new(config.clone())?.with_metrics(metrics)?);
        Ok(Some(Auth::with_limits(
            authenticator,
            policy,
            config.failure_burst,
            config.failures_per_sec,
        )))
    }

    /// The access rules.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Authenticates `request` per the policy; on success the principal (if
    /// any) is in its extensions.
    pub(crate) async fn check<B>(&self, request: &mut http::Request<B>) -> Result<(), Status> {
        let Some(access) = self.policy.access(request.uri().path()) else {
            return Err(Status::permission_denied(format!(
                "no access rule is declared for {}",
                request.uri().path()
            )));
        };
        let peer = request
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|info| info.remote_addr())
            .map(|addr| addr.ip());
        if let Some(principal) = self.check_access(request.headers(), peer, access).await? {
            request.extensions_mut().insert(principal);
        }
        Ok(())
    }

    /// Checks the key in `headers` against `access` (for listeners that are
    /// not gRPC, such as OTLP/HTTP): the principal, `None` for open access,
    /// or the status to refuse with.
    pub async fn check_access(
        &self,
        headers: &http::HeaderMap,
        peer: Option<IpAddr>,
        access: &Access,
    ) -> Result<Option<Principal>, Status> {
        let (required, any_name) = match access {
            Access::Open => return Ok(None),
            Access::Authenticated => (None, None),
            Access::Scope(scope) => (Some(scope), None),
            Access::AnyName { resource, action } => (None, Some((resource, action))),
        };
        if let Some(wait) = self.failures.refused(peer) {
            return Err(status::with_reason(
                Code::ResourceExhausted,
                "too many failed authentications from this client",
                crate::ErrorReason::RateLimited,
                Some(wait),
            ));
        }
        let Some(key) = api_key(headers) else {
            self.failures.record(peer);
            return Err(Status::unauthenticated(
                "missing API key: send `authorization: Bearer <key>`, `x-api-key: <key>` or `x-junjo-api-key: <key>`",
            ));
        };
        match self.authenticator.authenticate(key).await {
            Ok(principal) => {
                if let Some(scope) = required {
                    principal.require(scope)?;
                }
                if let Some((resource, action)) = any_name
                    && !principal.scopes.iter().any(|s| s.grants_some(resource, action))
                {
                    return Err(Status::permission_denied(format!(
                        "API key {} lacks scope {resource}:{action} on any name",
                        principal.key_id
                    )));
                }
                Ok(Some(principal))
            }
            Err(AuthError::Invalid) => {
                self.failures.record(peer);
                Err(Status::unauthenticated("invalid API key"))
            }
            Err(AuthError::Unavailable(reason)) => {
                tracing::warn!(%reason, "cannot check API key");
                Err(status::with_reason(
                    Code::Unavailable,
                    "auth service unavailable, retry later",
                    crate::ErrorReason::DependencyUnavailable,
                    Some(UNAVAILABLE_RETRY_AFTER),
                ))
            }
        }
    }
}

/// The key a request carries, from `authorization: Bearer …`, `x-api-key`,
/// or `x-junjo-api-key` (what Junjo's SDKs send).
pub fn api_key(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = value.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
            return Some(token.trim());
        }
        return None;
    }
    ["x-api-key", "x-junjo-api-key"].into_iter().find_map(|name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
    })
}

/// The principal the auth layer attached to a request.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<&Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::unauthenticated("missing API key"))
}

/// A token bucket per client IP, spent only by failed validations.
struct FailureLimiter {
    burst: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<Option<IpAddr>, (f64, Instant)>>,
}

const MAX_TRACKED_CLIENTS: usize = 10_000;

impl FailureLimiter {
    fn new(burst: u32, per_sec: u32) -> Self {
        FailureLimiter {
            burst: f64::from(burst.max(1)),
            per_sec: f64::from(per_sec.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn level(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        (tokens + now.duration_since(since).as_secs_f64() * self.per_sec).min(self.burst)
    }

    /// How long to wait if this client has no failures left.
    fn refused(&self, peer: Option<IpAddr>) -> Option<Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let &(tokens, since) = buckets.get(&peer)?;
        let level = self.level(tokens, since, Instant::now());
        (level < 1.0).then(|| Duration::from_secs_f64((1.0 - level) / self.per_sec))
    }

    fn record(&self, peer: Option<IpAddr>) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED_CLIENTS && !buckets.contains_key(&peer) {
            let (burst, per_sec) = (self.burst, self.per_sec);
            buckets.retain(|_, (t, s)| (*t + now.duration_since(*s).as_secs_f64() * per_sec) < burst);
        }
        let (tokens, since) = buckets.get(&peer).copied().unwrap_or((self.burst, now));
        let level = self.level(tokens, since, now);
        buckets.insert(peer, ((level - 1.0).max(0.0), now));
    }
}

/// Counters of a [`RemoteAuthenticator`].
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Answers served from the cache.
    pub cache_hits: AtomicU64,
    /// `Authenticate` calls made to `cairn-auth`.
    pub lookups: AtomicU64,
    /// Lookups that found the key invalid.
    pub invalid: AtomicU64,
    /// Lookups that could not be answered (the auth service unavailable).
    pub unavailable: AtomicU64,
    /// Checks refused at once because the auth service was just found down.
    pub unavailable_fast: AtomicU64,
}

impl crate::metrics::prometheus_client::collector::Collector for AuthStats {
    fn encode(
        &self,
        mut encoder: crate::metrics::prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use crate::metrics::prometheus_client::{encoding::EncodeMetric, metrics::counter::ConstCounter};
        for (name, help, value) in [
            (
                "cairn_auth_client_cache_hits",
                "API key checks answered from the cache",
                &self.cache_hits,
            ),
            (
                "cairn_auth_client_lookups",
                "API key checks sent to cairn-auth",
                &self.lookups,
            ),
            (
                "cairn_auth_client_invalid",
                "Lookups that found the key invalid",
                &self.invalid,
            ),
            (
                "cairn_auth_client_unavailable",
                "Lookups cairn-auth could not answer (refused as UNAVAILABLE)",
                &self.unavailable,
            ),
            (
                "cairn_auth_client_unavailable_fast",
                "Checks refused at once (UNAVAILABLE) because cairn-auth was just found down",
                &self.unavailable_fast,
            ),
        ] {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

struct Cached {
    result: Result<Principal, AuthError>,
    until: Instant,
}

type Flight = Arc<OnceCell<Result<Principal, AuthError>>>;

/// Checks keys with `cairn-auth` over one shared channel, caching answers for a
/// few seconds (never past the revocation bound, never past a key's expiry)
/// and making one lookup per key at a time however many callers wait for it.
pub struct RemoteAuthenticator {
    client: AuthServiceClient<Client>,
    config: AuthClientConfig,
    // Keyed by SHA-256 of the API key so no secret sits in the map.
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    flights: Mutex<HashMap<[u8; 32], Flight>>,
    stats: Arc<AuthStats>,
    /// Set when a lookup found cairn-auth unavailable.
    down_until: Mutex<Option<Instant>>,
}

impl RemoteAuthenticator {
    /// An authenticator for the `cairn-auth` at `config.address` (connects lazily).
    pub fn new(config: AuthClientConfig) -> Result<Self, tonic::transport::Error> {
        let client = AuthServiceClient::new(Client::connect_lazy(&config.address, &config.client)?)
            .max_decoding_message_size(config.client.max_message_bytes)
            .max_encoding_message_size(config.client.max_message_bytes);
        Ok(RemoteAuthenticator {
            client,
            config,
            cache: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            stats: Arc::default(),
            down_until: Mutex::new(None),
        })
    }

    /// Cache and lookup counters.
    pub fn stats(&self) -> &AuthStats {
        &self.stats
    }

    /// Exports the counters in `metrics`, and counts the lookups as outgoing RPCs.
    pub fn with_metrics(mut self, metrics: &crate::Metrics) -> Result<Self, tonic::transport::Error> {
        metrics.register_collector(Box::new(self.stats.clone()));
        let client = Client::connect_lazy(&self.config.address, &self.config.client)?.with_metrics(metrics);
        self.client = AuthServiceClient::new(client)
            .max_decoding_message_size(self.config.client.max_message_bytes)
            .max_encoding_message_size(self.config.client.max_message_bytes);
        Ok(self)
    }

    async fn lookup(&self, api_key: &str) -> Result<Principal, AuthError> {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        let request = pb::AuthenticateRequest {
            api_key: api_key.to_owned(),
        };
        let mut auth = self.client.clone();
        let result = match auth.authenticate(request).await {
            Ok(response) => response
                .into_inner()
                .principal
                .ok_or_else(|| AuthError::Unavailable("auth service sent no principal".into()))
                .and_then(|p| Principal::try_from(p).map_err(|s| AuthError::Unavailable(s.message().to_owned()))),
            Err(status) if status.code() == Code::Unauthenticated => Err(AuthError::Invalid),
            Err(status) => Err(AuthError::Unavailable(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            ))),
        };
        match &result {
            Err(AuthError::Invalid) => self.stats.invalid.fetch_add(1, Ordering::Relaxed),
            Err(AuthError::Unavailable(_)) => self.stats.unavailable.fetch_add(1, Ordering::Relaxed),
            Ok(_) => 0,
        };
        result
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Result<Principal, AuthError>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let entry = cache.get(digest)?;
        (entry.until > Instant::now()).then(|| entry.result.clone())
    }

    fn remember(&self, digest: [u8; 32], result: &Result<Principal, AuthError>) {
        let now = Instant::now();
        let until = match result {
            Ok(principal) => {
                let mut ttl = self.config.cache_ttl;
                if let Some(expires) = principal.expires_at {
                    ttl = ttl.min(expires.duration_since(SystemTime::now()).unwrap_or_default());
                }
                now + ttl
            }
            Err(AuthError::Invalid) => now + self.config.negative_cache_ttl,
            // An outage is never cached: the next caller asks again.
            Err(AuthError::Unavailable(_)) => return,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.config.cache_capacity {
            cache.retain(|_, e| e.until > now);
            if cache.len() >= self.config.cache_capacity {
                cache.clear();
            }
        }
        cache.insert(
            digest,
            Cached {
                result: result.clone(),
                until,
            },
        );
    }
}

#[tonic::async_trait]
impl Authenticator for RemoteAuthenticator {
    async fn authenticate(&self, api_key: &str) -> Result<Principal, AuthError> {
        let digest: [u8; 32] = Sha256::digest(api_key.as_bytes()).into();
        if let Some(result) = self.cached(&digest) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return result;
        }
        // Once cairn-auth is known to be down, refuse at once for a moment
        // instead of making every caller wait out a lookup timeout.
        if let Some(until) = *self.down_until.lock().unwrap_or_else(|p| p.into_inner())
            && Instant::now() < until
        {
            self.stats.unavailable_fast.fetch_add(1, Ordering::Relaxed);
            return Err(AuthError::Unavailable(
                "auth service was unreachable a moment ago".into(),
            ));
        }
        let flight = self
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest)
            .or_default()
            .clone();
        let result = flight.get_or_init(|| self.lookup(api_key)).await.clone();
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) = match &result {
            Err(AuthError::Unavailable(_)) => Some(Instant::now() + DOWN_HOLD),
            _ => None,
        };
        self.remember(digest, &result);
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights.get(&digest).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            flights.remove(&digest);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn api_key_from_either_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(api_key(&h), None);
        h.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(api_key(&h), Some("k1"));
        h.insert("authorization", "Bearer k2".parse().unwrap());
        assert_eq!(api_key(&h), Some("k2"), "authorization wins");
        let mut junjo = http::HeaderMap::new();
        junjo.insert("x-junjo-api-key", "k4".parse().unwrap());
        assert_eq!(api_key(&junjo), Some("k4"), "Junjo's header");
        h.insert("authorization", "bearer   k3 ".parse().unwrap());
        assert_eq!(api_key(&h), Some("k3"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(api_key(&h), None, "a non-bearer authorization is not a key");
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(api_key(&h), None);
    }

    #[test]
    fn failure_limiter_refuses_after_the_burst_and_recovers() {
        let limiter = FailureLimiter::new(3, 1000);
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        for _ in 0..3 {
            assert!(limiter.refused(a).is_none());
            limiter.record(a);
        }
        assert!(limiter.refused(a).is_some(), "burst spent");
        assert!(limiter.refused(b).is_none(), "other clients unaffected");
        std::thread::sleep(Duration::from_millis(5));
        assert!(limiter.refused(a).is_none(), "refills over time");
    }

    #[test]
    fn cache_ttls_are_bounded_by_the_revocation_bound() {
        let config = AuthClientConfig {
            cache_ttl: Duration::from_millis(5001),
            ..AuthClientConfig::default()
        };
        assert!(config.validate("auth").is_err());
        let config = AuthClientConfig {
            negative_cache_ttl: Duration::from_secs(60),
            ..AuthClientConfig::default()
        };
        assert!(config.validate("auth").is_err());
        assert!(AuthClientConfig::default().validate("auth").is_ok());
    }
}
