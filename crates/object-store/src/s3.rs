//! S3 or any S3-compatible store (MinIO, a test server) through aws-sdk-s3.
//! Create-only writes use `If-None-Match: *`: the store itself refuses to
//! overwrite (412 Precondition Failed, or 409 on a concurrent conditional write).

use std::ops::Range;

use aws_sdk_s3::{
    Client,
    config::{BehaviorVersion, Credentials, Region, http::HttpResponse, timeout::TimeoutConfig},
    error::{ProvideErrorMetadata, SdkError},
    primitives::ByteStream,
};
use bytes::Bytes;

use crate::{ObjectMeta, ObjectStore, Result, S3Config, StoreError, check_key};

/// Objects in one bucket, under an optional key prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
}

fn status<E>(error: &SdkError<E, HttpResponse>) -> Option<u16> {
    error.raw_response().map(|r| r.status().as_u16())
}

fn describe<E: ProvideErrorMetadata + std::fmt::Debug>(error: &SdkError<E, HttpResponse>) -> String {
    match error {
        SdkError::ServiceError(e) => {
            let e = e.err();
            format!("{}: {}", e.code().unwrap_or("error"), e.message().unwrap_or(""))
        }
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(e) => format!("could not reach the store: {e:?}"),
        other => format!("{other:?}"),
    }
}

fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(key: &str, error: SdkError<E, HttpResponse>) -> StoreError {
    match status(&error) {
        Some(404) => StoreError::NotFound(key.to_owned()),
        Some(409 | 412) => StoreError::AlreadyExists(key.to_owned()),
        Some(401 | 403) => StoreError::Config(format!("access denied: {}", describe(&error))),
        _ => StoreError::Unavailable(describe(&error)),
    }
}

impl S3Store {
    /// A store for `bucket`, keys under `prefix`.
    pub fn new(bucket: &str, prefix: &str, config: &S3Config) -> Result<Self> {
        let key_id = if config.access_key_id.is_empty() {
            std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default()
        } else {
            config.access_key_id.clone()
        };
        let secret = if config.secret_access_key.is_empty() {
            std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default()
        } else {
            config.secret_access_key.clone()
        };
        if key_id.is_empty() || secret.is_empty() {
            return Err(StoreError::Config(
                "S3 credentials missing: set access_key_id/secret_access_key or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".into(),
            ));
        }
        let timeout = config.request_timeout;
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(Credentials::new(key_id, secret, None, None, "cairn-config"))
            .force_path_style(config.path_style)
            .timeout_config(TimeoutConfig::builder().operation_timeout(timeout).build());
        if !config.endpoint.is_empty() {
            builder = builder.endpoint_url(config.endpoint.clone());
        }
        let prefix = prefix.trim_matches('/').to_owned();
        if !prefix.is_empty() {
            check_key(&prefix)?;
        }
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            bucket: bucket.to_owned(),
            prefix,
        })
    }

    fn full(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    /// Creates the bucket if it does not exist (for development and tests).
    pub async fn ensure_bucket(&self) -> Result<()> {
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(error) => match error
                .as_service_error()
                .map(|e| e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists())
            {
                Some(true) => Ok(()),
                _ => Err(classify(&self.bucket, error)),
            },
        }
    }
}

#[tonic::async_trait]
impl ObjectStore for S3Store {
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<()> {
        let full = self.full(key)?;
        let sent = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(bytes))
            .if_none_match("*")
            .send()
            .await;
        sent.map(|_| ()).map_err(|e| classify(key, e))
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let full = self.full(key)?;
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        let body = object
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(body.into_bytes())
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let full = self.full(key)?;
        if range.start >= range.end {
            // Still report a missing object as missing.
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
                .map_err(|e| classify(key, e))?;
            return Ok(Bytes::new());
        }
        let sent = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await;
        match sent {
            Ok(object) => Ok(object
                .body
                .collect()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
                .into_bytes()),
            // 416: the range starts past the end, which a clamped read answers with nothing.
            Err(e) if status(&e) == Some(416) => Ok(Bytes::new()),
            Err(e) => Err(classify(key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full_prefix = if self.prefix.is_empty() {
            prefix.to_owned()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| classify(prefix, e))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    out.push(ObjectMeta {
                        key: key[strip.min(key.len())..].to_owned(),
                        size: object.size().unwrap_or(0) as u64,
                    });
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full(key)?;
        match self.client.delete_object().bucket(&self.bucket).key(&full).send().await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(classify(key, e)),
        }
    }
}
