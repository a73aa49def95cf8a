//! The gRPC edge: `cairn.auth.v1.AuthService`, `KeyAdminService`, and the
//! Junjo-compatible `ingestion.InternalAuthService` (WIRE.md §1). Requests are
//! checked and converted here; `keys.rs` sees only domain values.

use std::time::Duration;

use cairn_proto::{
    Timestamp,
    cairn::auth::v1::{self as pb, auth_service_server::AuthService, key_admin_service_server::KeyAdminService},
    ingestion::{ValidateApiKeyRequest, ValidateApiKeyResponse, internal_auth_service_server::InternalAuthService},
};
use cairn_service::auth::Principal;
use tonic::{Request, Response, Status};

use crate::{
    error::Error,
    key,
    keys::{self, KeySpec, Keys},
    store::{self, KeyRecord},
};

const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;

fn timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn timestamp_ms(field: &str, t: &Timestamp) -> Result<i64, Error> {
    if !(0..1_000_000_000).contains(&t.nanos) || t.seconds < 0 || t.seconds > 253_402_300_799 {
        return Err(Error::invalid(field, "not a valid timestamp"));
    }
    Ok(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

fn key_info(r: &KeyRecord) -> pb::KeyInfo {
    pb::KeyInfo {
        key_id: r.key_id.clone(),
        name: r.name.clone(),
        scopes: r.scopes.clone(),
        created_at: Some(timestamp(r.created_at)),
        expires_at: r.expires_at.map(timestamp),
        revoked_at: r.revoked_at.map(timestamp),
        last_used_at: r.last_used_at.map(timestamp),
        rotated_from: r.rotated_from.clone().unwrap_or_default(),
    }
}

fn principal_pb(r: &KeyRecord) -> pb::Principal {
    pb::Principal {
        key_id: r.key_id.clone(),
        name: r.name.clone(),
        scopes: r.scopes.clone(),
        expires_at: r.expires_at.map(timestamp),
    }
}

fn check_key_id(id: &str) -> Result<(), Error> {
    if key::is_key_id(id) {
        Ok(())
    } else {
        Err(Error::invalid("key_id", "must be the 12-character id of a key"))
    }
}

/// Who made an admin call, for the audit log line.
fn actor<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Principal>()
        .map(|p| p.key_id.clone())
        .unwrap_or_default()
}

/// `AuthService` and `InternalAuthService`: validation.
#[derive(Clone)]
pub struct AuthApi {
    keys: Keys,
}

impl AuthApi {
    /// Validation over `keys`.
    pub fn new(keys: Keys) -> Self {
        AuthApi { keys }
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let record = self.keys.authenticate(&request.get_ref().api_key).await?;
        Ok(Response::new(pb::AuthenticateResponse {
            principal: Some(principal_pb(&record)),
        }))
    }
}

#[tonic::async_trait]
impl InternalAuthService for AuthApi {
    async fn validate_api_key(
        &self,
        request: Request<ValidateApiKeyRequest>,
    ) -> Result<Response<ValidateApiKeyResponse>, Status> {
        let is_valid = match self.keys.authenticate(&request.get_ref().api_key).await {
            Ok(_) => true,
            Err(Error::InvalidKey) => false,
            // A failing backend is UNAVAILABLE, never `is_valid = false` or true.
            Err(error) => return Err(error.into()),
        };
        Ok(Response::new(ValidateApiKeyResponse { is_valid }))
    }
}

/// `KeyAdminService`: needs `keys:admin`, enforced by the auth layer.
#[derive(Clone)]
pub struct AdminApi {
    keys: Keys,
}

impl AdminApi {
    /// Administration over `keys`.
    pub fn new(keys: Keys) -> Self {
        AdminApi { keys }
    }
}

#[tonic::async_trait]
impl KeyAdminService for AdminApi {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let by = actor(&request);
        let req = request.into_inner();
        keys::check_name(&req.name)?;
        let scopes = keys::parse_scopes(&req.scopes)?;
        let expires_at = req
            .expires_at
            .as_ref()
            .map(|t| timestamp_ms("expires_at", t))
            .transpose()?;
        let spec = KeySpec {
            name: req.name,
            scopes,
            expires_at,
        };
        let (record, text) = self.keys.create(&spec).await?;
        tracing::info!(key_id = %record.key_id, by = %by, "admin created key");
        Ok(Response::new(pb::CreateKeyResponse {
            key: Some(key_info(&record)),
            api_key: text,
        }))
    }

    async fn list_keys(&self, request: Request<pb::ListKeysRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        let req = request.into_inner();
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(Error::invalid("page_size", format!("at most {MAX_PAGE_SIZE}")).into());
            }
            n => n,
        };
        let cursor = match req.page_token.as_str() {
            "" => None,
            token => Some(
                store::decode_cursor(token)
                    .ok_or_else(|| Error::invalid("page_token", "not a token from a previous response"))?,
            ),
        };
        let (keys, next) = self.keys.list(req.include_revoked, page_size, cursor.as_ref()).await?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: keys.iter().map(key_info).collect(),
            next_page_token: next.as_ref().map(store::encode_cursor).unwrap_or_default(),
        }))
    }

    async fn get_key(&self, request: Request<pb::GetKeyRequest>) -> Result<Response<pb::GetKeyResponse>, Status> {
        let id = &request.get_ref().key_id;
        check_key_id(id)?;
        let record = self.keys.get(id).await?;
        Ok(Response::new(pb::GetKeyResponse {
            key: Some(key_info(&record)),
        }))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        let by = actor(&request);
        let id = &request.get_ref().key_id;
        check_key_id(id)?;
        let record = self.keys.revoke(id).await?;
        tracing::info!(key_id = %id, by = %by, "admin revoked key");
        Ok(Response::new(pb::RevokeKeyResponse {
            key: Some(key_info(&record)),
        }))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let by = actor(&request);
        let req = request.into_inner();
        check_key_id(&req.key_id)?;
        let grace = match req.grace_period {
            None => None,
            Some(d) if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 => {
                return Err(Error::invalid("grace_period", "must be a non-negative duration").into());
            }
            Some(d) => Some(Duration::new(d.seconds as u64, d.nanos as u32)),
        };
        let (record, text, previous) = self.keys.rotate(&req.key_id, grace).await?;
        tracing::info!(old_key_id = %req.key_id, key_id = %record.key_id, by = %by, "admin rotated key");
        Ok(Response::new(pb::RotateKeyResponse {
            key: Some(key_info(&record)),
            api_key: text,
            previous: Some(key_info(&previous)),
        }))
    }
}
