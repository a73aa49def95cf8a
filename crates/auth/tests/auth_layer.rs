//! The shared auth layer in another service, checking keys with a real
//! `cairn-auth` process over gRPC: scopes, caching within the revocation bound,
//! single flight, outages, and the per-client limit on failed attempts.

#![allow(clippy::unwrap_used)]

use std::{
    process::Command,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use cairn_proto::{
    cairn::auth::v1::{self as pb, key_admin_service_client::KeyAdminServiceClient},
    ingestion::{
        ValidateApiKeyRequest, ValidateApiKeyResponse,
        internal_auth_service_client::InternalAuthServiceClient,
        internal_auth_service_server::{InternalAuthService, InternalAuthServiceServer},
    },
};
use cairn_service::{
    ClientConfig, Server, ServerConfig,
    auth::{Access, Auth, AuthClientConfig, Policy, RemoteAuthenticator, attach_key, principal},
    scope::Scope,
    status,
};
use cairn_testkit::{Process, TempDir};
use tonic::{Code, Request, Response, Status, transport::Channel};

const PROTECTED: &str = "/ingestion.InternalAuthService/ValidateApiKey";

/// The protected RPC: answers whether the auth layer handed it a principal.
struct Vehicle;

#[tonic::async_trait]
impl InternalAuthService for Vehicle {
    async fn validate_api_key(
        &self,
        request: Request<ValidateApiKeyRequest>,
    ) -> Result<Response<ValidateApiKeyResponse>, Status> {
        let is_valid = principal(&request).is_ok();
        Ok(Response::new(ValidateApiKeyResponse { is_valid }))
    }
}

struct Cluster {
    auth: Process,
    admin: String,
    protected: String,
    authenticator: Arc<RemoteAuthenticator>,
    _dir: TempDir,
}

async fn cluster(burst: u32) -> Cluster {
    let dir = TempDir::new("auth-layer");
    let url = cairn_testkit::sqlite_url(dir.path());
    let store_arg = format!("store.url={url}");
    let out = Command::new(cairn_testkit::binary("cairn-auth"))
        .args(["--set", &store_arg, "bootstrap-admin"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let admin = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let mut auth = Process::start("cairn-auth", &["--set", &store_arg], &[], dir.path());
    auth.wait_serving(Duration::from_secs(30)).await;

    let config = AuthClientConfig {
        address: auth.addr.clone(),
        ..AuthClientConfig::default()
    };
    let authenticator = Arc::new(RemoteAuthenticator::new(config).unwrap());
    let policy = Policy::new().rpc(
        PROTECTED,
        Access::Scope(Scope::required("spans", "write", None).unwrap()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let protected = listener.local_addr().unwrap().to_string();
    let rt = cairn_service::Runtime::with_listener("protected", listener).unwrap();
    Server::new(ServerConfig::on_port(0), &rt)
        .add_service(InternalAuthServiceServer::new(Vehicle))
        .with_auth(Auth::with_limits(authenticator.clone(), policy, burst, 1))
        .start("grpc")
        .await
        .unwrap();
    rt.readiness().set_serving().await;
    Cluster {
        auth,
        admin,
        protected,
        authenticator,
        _dir: dir,
    }
}

async fn channel_from(addr: &str, local: Option<std::net::IpAddr>) -> Channel {
    cairn_service::client::endpoint(addr, &ClientConfig::default())
        .unwrap()
        .local_address(local)
        .connect()
        .await
        .unwrap()
}

impl Cluster {
    async fn admin(&self) -> KeyAdminServiceClient<Channel> {
        KeyAdminServiceClient::new(channel_from(&self.auth.addr, None).await)
    }

    async fn key(&self, scopes: &[&str]) -> (String, String) {
        let mut request = Request::new(pb::CreateKeyRequest {
            name: "caller".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_at: None,
        });
        attach_key(&mut request, &self.admin).unwrap();
        let created = self.admin().await.create_key(request).await.unwrap().into_inner();
        (created.key.unwrap().key_id, created.api_key)
    }

    async fn revoke(&self, key_id: &str) {
        let mut request = Request::new(pb::RevokeKeyRequest { key_id: key_id.into() });
        attach_key(&mut request, &self.admin).unwrap();
        self.admin().await.revoke_key(request).await.unwrap();
    }

    async fn call_from(&self, key: Option<&str>, local: Option<std::net::IpAddr>) -> Result<bool, Status> {
        let mut request = Request::new(ValidateApiKeyRequest::default());
        if let Some(key) = key {
            attach_key(&mut request, key).unwrap();
        }
        InternalAuthServiceClient::new(channel_from(&self.protected, local).await)
            .validate_api_key(request)
            .await
            .map(|r| r.into_inner().is_valid)
    }

    async fn call(&self, key: Option<&str>) -> Result<bool, Status> {
        self.call_from(key, None).await
    }
}

#[tokio::test]
async fn the_rpc_scope_is_enforced_through_the_auth_service() {
    let c = cluster(50).await;
    let (_, writer) = c.key(&["spans:write"]).await;
    let (_, other) = c.key(&["tasks:create"]).await;
    assert!(c.call(Some(&writer)).await.unwrap(), "handler sees the principal");
    assert_eq!(c.call(Some(&other)).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(c.call(None).await.unwrap_err().code(), Code::Unauthenticated);
    let unknown = cairn_auth::key::generate().text;
    assert_eq!(c.call(Some(&unknown)).await.unwrap_err().code(), Code::Unauthenticated);
}

#[tokio::test]
async fn revocation_reaches_another_service_within_five_seconds() {
    let c = cluster(50).await;
    let (id, key) = c.key(&["spans:write"]).await;
    assert!(c.call(Some(&key)).await.unwrap(), "now cached as valid");
    let revoked_at = Instant::now();
    c.revoke(&id).await;
    loop {
        match c.call(Some(&key)).await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code(), Code::Unauthenticated);
                break;
            }
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "revoked key still accepted after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("revocation took effect after {:?}", revoked_at.elapsed());
}

#[tokio::test]
async fn concurrent_callers_with_one_key_cause_one_lookup() {
    let c = Arc::new(cluster(50).await);
    let (_, key) = c.key(&["spans:write"]).await;
    let before = c.authenticator.stats().lookups.load(Ordering::Relaxed);
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let c = c.clone();
            let key = key.clone();
            tokio::spawn(async move { c.call(Some(&key)).await })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap().unwrap());
    }
    let lookups = c.authenticator.stats().lookups.load(Ordering::Relaxed) - before;
    assert_eq!(lookups, 1, "single flight: one Authenticate for 64 concurrent callers");
    let hits = c.authenticator.stats().cache_hits.load(Ordering::Relaxed);
    assert!(c.call(Some(&key)).await.unwrap());
    let stats = c.authenticator.stats();
    assert_eq!(
        stats.cache_hits.load(Ordering::Relaxed),
        hits + 1,
        "a later call hits the cache"
    );
    assert_eq!(stats.lookups.load(Ordering::Relaxed) - before, 1);
}

#[tokio::test]
async fn an_auth_outage_is_unavailable_and_lets_nobody_in() {
    let mut c = cluster(50).await;
    let (_, cached) = c.key(&["spans:write"]).await;
    let (_, fresh) = c.key(&["spans:write"]).await;
    assert!(c.call(Some(&cached)).await.unwrap());
    c.auth.kill();

    let error = c.call(Some(&fresh)).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(status::retry_after(&error).is_some(), "retryable, with retry info");
    // Known down: the next uncached key is refused at once, without a lookup.
    let lookups = c.authenticator.stats().lookups.load(Ordering::Relaxed);
    let other = "cairn_not_a_cached_key";
    let error = c.call(Some(other)).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert_eq!(c.authenticator.stats().lookups.load(Ordering::Relaxed), lookups);
    assert_eq!(c.authenticator.stats().unavailable_fast.load(Ordering::Relaxed), 1);
    // Once the cached answer ages out, the cached key is refused too.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let error = c.call(Some(&cached)).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
}

#[tokio::test]
async fn a_flood_of_bad_keys_is_cut_off_per_client_without_starving_others() {
    let c = cluster(10).await;
    let (_, good) = c.key(&["spans:write"]).await;
    let flooder = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    let honest = Some(std::net::IpAddr::from([127, 0, 0, 2]));
    let before = c.authenticator.stats().lookups.load(Ordering::Relaxed);
    let mut refused = 0;
    for _ in 0..40 {
        let bad = cairn_auth::key::generate().text;
        match c.call_from(Some(&bad), flooder).await.unwrap_err().code() {
            Code::Unauthenticated => {}
            Code::ResourceExhausted => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let lookups = c.authenticator.stats().lookups.load(Ordering::Relaxed) - before;
    assert!(refused >= 25, "only {refused} of 40 bad attempts refused");
    assert!(lookups <= 15, "the flood reached the auth service {lookups} times");
    assert!(
        c.call_from(Some(&good), honest).await.unwrap(),
        "another client is unaffected"
    );
    let error = c.call_from(Some(&good), flooder).await.unwrap_err();
    assert_eq!(
        error.code(),
        Code::ResourceExhausted,
        "the flooding client waits, valid key or not"
    );
    assert!(status::retry_after(&error).is_some());
}

#[test]
fn every_rpc_cairn_auth_hosts_declares_its_access() {
    use cairn_proto::{
        cairn::auth::v1::{auth_service_server::AuthServiceServer, key_admin_service_server::KeyAdminServiceServer},
        ingestion::internal_auth_service_server::InternalAuthServiceServer,
    };
    use tonic::server::NamedService;
    let hosted = [
        <AuthServiceServer<cairn_auth::api::AuthApi> as NamedService>::NAME,
        <InternalAuthServiceServer<cairn_auth::api::AuthApi> as NamedService>::NAME,
        <KeyAdminServiceServer<cairn_auth::api::AdminApi> as NamedService>::NAME,
    ];
    let methods = cairn_service::auth::methods(&[cairn_proto::FILE_DESCRIPTOR_SET], &hosted);
    assert_eq!(methods.len(), 7, "{methods:?}");
    let missing = cairn_auth::policy().undeclared(&[cairn_proto::FILE_DESCRIPTOR_SET], &hosted);
    assert!(missing.is_empty(), "RPCs without an access rule: {missing:?}");
}

#[tokio::test]
async fn a_server_with_an_rpc_lacking_an_access_rule_refuses_to_start() {
    struct Anyone;
    #[tonic::async_trait]
    impl cairn_service::auth::Authenticator for Anyone {
        async fn authenticate(
            &self,
            _: &str,
        ) -> Result<cairn_service::auth::Principal, cairn_service::auth::AuthError> {
            Ok(cairn_service::auth::Principal {
                key_id: "k".into(),
                name: "k".into(),
                scopes: vec![Scope::parse("*:*").unwrap()],
                expires_at: None,
            })
        }
    }
    let rt = cairn_service::Runtime::new("test");
    let refused = Server::new(ServerConfig::on_port(0), &rt)
        .add_service(InternalAuthServiceServer::new(Vehicle))
        .with_auth(Auth::new(Arc::new(Anyone), Policy::new()))
        .start("grpc")
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("/ingestion.InternalAuthService/ValidateApiKey"),
        "{refused}"
    );
}
