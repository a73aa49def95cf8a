//! API keys and the access each RPC declares (see [`crate::auth`]).

use std::task::{Context, Poll};

use tonic::body::Body;
use tower::{Layer, Service};

use super::{BoxFuture, is_infrastructure, take_ready};
use crate::auth::Auth;

/// Authenticates every non-infrastructure call with `auth` (none: every
/// caller may do everything, a private test setup).
#[derive(Clone)]
pub struct AuthLayer {
    auth: Option<Auth>,
}

impl AuthLayer {
    /// Checks calls with `auth`, or lets everything through when `None`.
    pub fn new(auth: Option<Auth>) -> Self {
        AuthLayer { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: Option<Auth>,
}

impl<S> Service<http::Request<Body>> for Authenticated<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        let auth = self.auth.clone().filter(|_| !is_infrastructure(request.uri().path()));
        Box::pin(async move {
            if let Some(auth) = auth
                && let Err(refusal) = auth.check(&mut request).await
            {
                return Ok(refusal.into_http());
            }
            inner.call(request).await
        })
    }
}
