//! `cairn-auth`: API keys. Issues, lists, revokes, rotates and validates keys;
//! the one place in Cairn where secrets are checked. Every other service asks
//! it through the shared auth layer (`cairn_service::auth`).
//!
//! Module map: `key` (the key format and hashing), `store` (SQLite/Postgres),
//! `keys` (the lifecycle), `api` (the gRPC edge), `config`, `error`.

use std::{sync::Arc, time::Duration};

use cairn_proto::{
    cairn::auth::v1::{auth_service_server::AuthServiceServer, key_admin_service_server::KeyAdminServiceServer},
    ingestion::internal_auth_service_server::InternalAuthServiceServer,
};
use cairn_service::{
    Phase, Runtime, Server,
    auth::{Access, Auth, Policy},
    scope::Scope,
};

pub mod api;
pub mod config;
pub mod error;
pub mod key;
pub mod keys;
pub mod store;

pub use config::Config;
pub use keys::Keys;
pub use store::Store;

/// Scope every `KeyAdminService` RPC needs.
pub const ADMIN_SCOPE: &str = "keys:admin";

/// What each RPC of this server requires. Validation RPCs are open: the key
/// they check is the request itself.
pub fn policy() -> Policy {
    let admin = Access::Scope(Scope::required("keys", "admin", None).unwrap_or_else(|e| unreachable!("{e}")));
    Policy::new()
        .rpc("/cairn.auth.v1.AuthService/Authenticate", Access::Open)
        .rpc("/ingestion.InternalAuthService/ValidateApiKey", Access::Open)
        .rpc("/cairn.auth.v1.KeyAdminService/CreateKey", admin.clone())
        .rpc("/cairn.auth.v1.KeyAdminService/ListKeys", admin.clone())
        .rpc("/cairn.auth.v1.KeyAdminService/GetKey", admin.clone())
        .rpc("/cairn.auth.v1.KeyAdminService/RevokeKey", admin.clone())
        .rpc("/cairn.auth.v1.KeyAdminService/RotateKey", admin)
}

/// Opens the key store the config names.
pub async fn open(config: &Config) -> anyhow::Result<Keys> {
    let store = Store::connect(&config.store.url, config.store.max_connections).await?;
    Ok(Keys::new(store, config.keys.clone()))
}

/// How often the key store is pinged to keep health truthful.
const STORE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Serves until shutdown, then flushes `last_used_at` and closes the store.
pub async fn run(config: Config, rt: Runtime) -> anyhow::Result<()> {
    let keys = open(&config).await?;
    keys.store().ping().await?;
    serve(config, keys, rt).await
}

/// Serves `keys` in `rt` until shutdown; flushes `last_used_at` and closes
/// the store in the shutdown phases.
pub async fn serve(config: Config, keys: Keys, rt: Runtime) -> anyhow::Result<()> {
    let max = config.grpc.max_message_bytes;
    let auth_api = api::AuthApi::new(keys.clone());
    Server::new(config.grpc.clone(), &rt)
        .add_service(
            AuthServiceServer::new(auth_api.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            InternalAuthServiceServer::new(auth_api)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            KeyAdminServiceServer::new(api::AdminApi::new(keys.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .with_auth(Auth::new(Arc::new(keys.clone()), policy()))
        .start("grpc")
        .await?;
    keys.register_metrics(rt.metrics());
    // The flusher writes last_used_at until the Close phase, then once more.
    let (flusher, closing) = (keys.clone(), rt.closing_token());
    rt.spawn_critical("last-used flusher", async move {
        flusher.run_last_used_flusher(closing.cancelled_owned()).await;
        Ok(())
    });
    let store = keys.store().clone();
    let watchdog = rt.readiness().watch(STORE_CHECK_INTERVAL, move || {
        let store = store.clone();
        async move { store.ping().await.is_ok() }
    });
    rt.on_shutdown(
        Phase::StopIntake,
        "stop health checks",
        Duration::from_secs(1),
        async move {
            watchdog.abort();
        },
    );
    let store = keys.store().clone();
    rt.on_shutdown(
        Phase::Close,
        "close the key store",
        Duration::from_secs(2),
        async move {
            store.close().await;
        },
    );
    rt.run_until_stopped().await
}
