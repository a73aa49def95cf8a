//! The key lifecycle: create, authenticate, list, revoke, rotate, bootstrap.
//! Domain types only; the gRPC edge is in `api.rs`.

use cairn_service::metrics::prometheus_client::metrics::{counter::Counter, family::Family};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use cairn_service::{
    auth::{AuthError, Authenticator, Principal},
    scope::Scope,
};

use crate::{
    config::KeysConfig,
    error::{Error, Result},
    key,
    store::{self, Cursor, KeyRecord, Store},
};

/// The most scopes one key may hold.
pub const MAX_SCOPES: usize = 64;

/// What a new key should be.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<i64>,
}

/// Checks a key name: 1–128 characters of `[A-Za-z0-9._ -]`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b' '));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("name", "must be 1-128 characters of [A-Za-z0-9._ -]"))
    }
}

/// Parses and de-duplicates scopes, naming the first bad one.
pub fn parse_scopes(texts: &[String]) -> Result<Vec<Scope>> {
    if texts.is_empty() {
        return Err(Error::invalid("scopes", "at least one scope is required"));
    }
    if texts.len() > MAX_SCOPES {
        return Err(Error::invalid("scopes", format!("at most {MAX_SCOPES} scopes")));
    }
    let mut scopes: Vec<Scope> = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let scope = Scope::parse(text).map_err(|e| Error::invalid(format!("scopes[{i}]"), e.to_string()))?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    Ok(scopes)
}

/// Remembers when keys were used and writes it in batches.
#[derive(Default)]
struct LastUsed {
    pending: Mutex<HashMap<String, i64>>,
}

impl LastUsed {
    fn note(&self, key_id: &str, at: i64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get_mut(key_id) {
            Some(t) => *t = (*t).max(at),
            None => {
                pending.insert(key_id.to_owned(), at);
            }
        }
    }

    fn take(&self) -> HashMap<String, i64> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The key lifecycle over a [`Store`].
#[derive(Clone)]
pub struct Keys {
    store: Store,
    config: KeysConfig,
    last_used: Arc<LastUsed>,
    outcomes: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl Keys {
    /// Keys kept in `store`.
    pub fn new(store: Store, config: KeysConfig) -> Self {
        Keys {
            store,
            config,
            last_used: Arc::default(),
            outcomes: Family::default(),
        }
    }

    /// Registers the validation outcome counters (`cairn_auth_validations_total{outcome}`).
    pub fn register_metrics(&self, metrics: &cairn_service::Metrics) {
        metrics.register(
            "cairn_auth_validations",
            "Key validations by outcome: valid, invalid (unknown, revoked, expired, malformed), error (store failed)",
            self.outcomes.clone(),
        );
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The key record behind `text`, if it is a valid key now. Every failure is
    /// the same [`Error::InvalidKey`].
    pub async fn authenticate(&self, text: &str) -> Result<KeyRecord> {
        let result = self.check(text).await;
        let outcome = match &result {
            Ok(_) => "valid",
            Err(Error::InvalidKey) => "invalid",
            Err(_) => "error",
        };
        self.outcomes.get_or_create(&vec![("outcome", outcome)]).inc();
        result
    }

    async fn check(&self, text: &str) -> Result<KeyRecord> {
        let parsed = key::parse(text).ok_or(Error::InvalidKey)?;
        let now = store::now_ms();
        let Some(record) = self.store.get(parsed.id).await? else {
            // Spend the same work as a mismatch, so timing does not tell ids apart.
            let _ = parsed.matches(&key::decoy_hash());
            return Err(Error::InvalidKey);
        };
        if !parsed.matches(&record.secret_hash) || !record.is_valid_at(now) {
            return Err(Error::InvalidKey);
        }
        self.last_used.note(&record.key_id, now);
        Ok(record)
    }

    fn record(spec: &KeySpec, new: &key::NewKey, now: i64, rotated_from: Option<String>) -> KeyRecord {
        KeyRecord {
            key_id: new.id.clone(),
            name: spec.name.clone(),
            secret_hash: new.hash.clone(),
            scopes: spec.scopes.iter().map(Scope::to_string).collect(),
            created_at: now,
            expires_at: spec.expires_at,
            revoked_at: None,
            last_used_at: None,
            rotated_from,
        }
    }

    fn check_spec(spec: &KeySpec, now: i64) -> Result<()> {
        check_name(&spec.name)?;
        if spec.scopes.is_empty() {
            return Err(Error::invalid("scopes", "at least one scope is required"));
        }
        if spec.expires_at.is_some_and(|e| e <= now) {
            return Err(Error::invalid("expires_at", "must be in the future"));
        }
        Ok(())
    }

    /// Issues a key; returns its record and the full key text (shown once).
    pub async fn create(&self, spec: &KeySpec) -> Result<(KeyRecord, String)> {
        let now = store::now_ms();
        Self::check_spec(spec, now)?;
        let new = key::generate();
        let record = Self::record(spec, &new, now, None);
        self.store.create(&record).await?;
        Ok((record, new.text))
    }

    /// Creates the first admin key, once. A second call fails with
    /// [`Error::AlreadyBootstrapped`] and creates nothing.
    pub async fn bootstrap_admin(&self, name: &str) -> Result<(KeyRecord, String)> {
        let spec = KeySpec {
            name: name.to_owned(),
            scopes: vec![Scope::parse("keys:admin").map_err(|e| Error::invalid("scopes", e.to_string()))?],
            expires_at: None,
        };
        let now = store::now_ms();
        Self::check_spec(&spec, now)?;
        let new = key::generate();
        let record = Self::record(&spec, &new, now, None);
        self.store.bootstrap(&record).await?;
        tracing::info!(key_id = %record.key_id, "bootstrapped admin API key");
        Ok((record, new.text))
    }

    /// One key by id.
    pub async fn get(&self, key_id: &str) -> Result<KeyRecord> {
        self.store
            .get(key_id)
            .await?
            .ok_or_else(|| Error::NotFound(key_id.to_owned()))
    }

    /// A page of keys, newest first, and the cursor of the next page.
    pub async fn list(
        &self,
        include_revoked: bool,
        page_size: u32,
        cursor: Option<&Cursor>,
    ) -> Result<(Vec<KeyRecord>, Option<Cursor>)> {
        // One extra row tells whether another page exists.
        let mut keys = self.store.list(include_revoked, page_size + 1, cursor).await?;
        let next = if keys.len() > page_size as usize {
            keys.truncate(page_size as usize);
            keys.last().map(|k| (k.created_at, k.key_id.clone()))
        } else {
            None
        };
        Ok((keys, next))
    }

    /// Revokes a key at once.
    pub async fn revoke(&self, key_id: &str) -> Result<KeyRecord> {
        let record = self.store.revoke(key_id, store::now_ms()).await?;
        Ok(record)
    }

    /// Issues a replacement with the same name and scopes; the old key stays
    /// valid for `grace` (the configured default when `None`).
    pub async fn rotate(&self, key_id: &str, grace: Option<Duration>) -> Result<(KeyRecord, String, KeyRecord)> {
        let max = self.config.max_rotation_grace;
        let grace = grace.unwrap_or(self.config.rotation_grace);
        if grace > max {
            return Err(Error::invalid(
                "grace_period",
                format!("at most {} seconds", max.as_secs()),
            ));
        }
        let old = self.get(key_id).await?;
        let now = store::now_ms();
        let spec = KeySpec {
            name: old.name.clone(),
            scopes: parse_scopes(&old.scopes)?,
            expires_at: old.expires_at,
        };
        let new = key::generate();
        let record = Self::record(&spec, &new, now, Some(key_id.to_owned()));
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let previous = self.store.rotate(key_id, &record, now.saturating_add(grace_ms)).await?;
        Ok((record, new.text, previous))
    }

    /// Writes pending `last_used_at` times.
    pub async fn flush_last_used(&self) -> Result<()> {
        let batch = self.last_used.take();
        if let Err(error) = self.store.touch(&batch).await {
            // Put them back so the next flush tries again.
            for (id, at) in batch {
                self.last_used.note(&id, at);
            }
            return Err(error);
        }
        Ok(())
    }

    /// Flushes `last_used_at` every configured interval until `stop` resolves, then once more.
    pub async fn run_last_used_flusher(self, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.config.last_used_flush);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut stop => break,
            }
            if let Err(error) = self.flush_last_used().await {
                tracing::warn!(%error, "writing last_used_at failed; will retry");
            }
        }
        if let Err(error) = self.flush_last_used().await {
            tracing::warn!(%error, "final last_used_at flush failed");
        }
    }
}

/// Converts a stored key to the principal callers see.
pub fn principal(record: &KeyRecord) -> Result<Principal> {
    Ok(Principal {
        key_id: record.key_id.clone(),
        name: record.name.clone(),
        scopes: parse_scopes(&record.scopes)?,
        expires_at: record.expires_at.map(store::from_ms),
    })
}

/// The auth service checks its own admin callers directly against the store:
/// no cache, so a revoked admin key stops working at once.
#[tonic::async_trait]
impl Authenticator for Keys {
    async fn authenticate(&self, api_key: &str) -> Result<Principal, AuthError> {
        match Keys::authenticate(self, api_key).await {
            Ok(record) => principal(&record).map_err(|e| AuthError::Unavailable(e.to_string())),
            Err(Error::InvalidKey) => Err(AuthError::Invalid),
            Err(error) => Err(AuthError::Unavailable(error.to_string())),
        }
    }
}
