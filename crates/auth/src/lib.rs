//! `cairn-auth`: API keys. Issues, lists, revokes, rotates and validates keys;
//! the one place in Cairn where secrets are checked. Every other service asks
//! it through the shared auth layer (`cairn_service::auth`).
//!
//! Module map: `key` (the key format and hashing), `store` (SQLite/Postgres),
//! `keys` (the lifecycle), `api` (the gRPC edge), `config`, `error`.

use std::{future::Future, sync::Arc};

use cairn_proto::{
    cairn::auth::v1::{auth_service_server::AuthServiceServer, key_admin_service_server::KeyAdminServiceServer},
    ingestion::internal_auth_service_server::InternalAuthServiceServer,
};
use cairn_service::{
    Server,
    auth::{Access, Auth, Policy},
    scope::Scope,
};
use tokio::net::TcpListener;

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
const STORE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves until `shutdown` resolves, then flushes `last_used_at`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let keys = open(&config).await?;
    keys.store().ping().await?;
    serve(config, keys, listener, shutdown).await
}

/// Serves `keys` until `shutdown` resolves, then flushes `last_used_at` and
/// closes the store.
pub async fn serve(
    config: Config,
    keys: Keys,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let max = config.grpc.max_message_bytes;
    let auth_api = api::AuthApi::new(keys.clone());
    let server = Server::new(config.grpc.clone())
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
        .with_auth(Auth::new(Arc::new(keys.clone()), policy()));

    let flusher = cairn_service::task::Background::spawn(|stop| keys.clone().run_last_used_flusher(stop));
    let store = keys.store().clone();
    let watchdog = server.readiness().watch(STORE_CHECK_INTERVAL, move || {
        let store = store.clone();
        async move { store.ping().await.is_ok() }
    });
    let served = server.serve(listener, shutdown).await;
    watchdog.abort();
    flusher.stop().await;
    keys.store().close().await;
    served
}
