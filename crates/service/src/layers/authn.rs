//! API keys and the access each RPC declares (see [`crate::auth`]).

use tonic::body::Body;
use tower::Service;

use super::{BoxFuture, Concern, ConcernLayer, is_infrastructure};
use crate::auth::Auth;

/// Authenticates every non-infrastructure call.
#[derive(Clone)]
pub struct Authenticate {
    auth: Option<Auth>,
}

/// Checks calls with `auth`, or lets everything through when `None` (a
/// private test setup: every caller may do everything).
pub fn layer(auth: Option<Auth>) -> ConcernLayer<Authenticate> {
    ConcernLayer(Authenticate { auth })
}

impl Concern for Authenticate {
    fn call<S>(
        &self,
        mut request: http::Request<Body>,
        mut inner: S,
    ) -> BoxFuture<Result<http::Response<Body>, S::Error>>
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
    {
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
