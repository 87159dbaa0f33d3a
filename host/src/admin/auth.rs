//! Bearer-token authentication for the admin API's mutating endpoints.
//!
//! [`require_token`] is an axum middleware; [`protect`] applies it to every
//! route of a router (as a route layer, so unknown paths stay 404);
//! [`TokenCheck::authorizes`] lets an open endpoint show more to the
//! operator (`GET /transforms` shows config values only to them). Rules:
//!
//! * no token configured (`admin.token_env` / `admin.token_file` absent):
//!   403 `admin token not configured` — a mutating endpoint is never open;
//! * no `Authorization: Bearer …` header, or a wrong token: 401 with a JSON
//!   error and `WWW-Authenticate: Bearer`; the handler does not run;
//! * the comparison is constant-time: both tokens are hashed (SHA-256, so
//!   the length does not leak either) and the digests compared without an
//!   early exit;
//! * a refused request is answered before its body is read, and the
//!   connection is closed after the answer (`Connection: close`): an
//!   unauthenticated upload costs the host nothing but the headers. A
//!   client that sends `Expect: 100-continue` (curl does for large bodies)
//!   gets the answer instead of the `100 Continue` and never sends the body;
//!   one that sends the body without waiting may see the connection reset
//!   after the answer arrived (Linux still delivers the answer to a client
//!   that reads it).
//!
//! Only the digest of the configured token is kept in memory here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::ratelimit::RateLimiter;
use crate::secret::Secret;
use crate::sync::lock;

/// What [`require_token`] checks against.
pub struct TokenCheck {
    /// SHA-256 of the configured token; `None` when none is configured.
    digest: Option<[u8; 32]>,
    /// Refused requests are logged, a few per minute.
    log_limit: Mutex<RateLimiter>,
}

impl TokenCheck {
    /// Checks against `token` (`None`: every mutating request gets 403).
    pub fn new(token: Option<&Secret>) -> Self {
        TokenCheck {
            digest: token.map(|t| digest(t.expose())),
            log_limit: Mutex::new(RateLimiter::new(5, Duration::from_secs(60))),
        }
    }

    /// Whether `headers` carry the configured bearer token (never true when
    /// none is configured): for endpoints that answer everyone but show
    /// more to an operator.
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        self.digest
            .as_ref()
            .and_then(|expected| presented(expected, headers))
            == Some(true)
    }

    /// Whether a token is configured at all.
    pub fn configured(&self) -> bool {
        self.digest.is_some()
    }

    fn log_refusal(&self, status: StatusCode, why: &str) {
        let allowed = lock(&self.log_limit).check();
        if let Some(suppressed) = allowed {
            tracing::warn!(
                status = status.as_u16(),
                suppressed,
                "admin API: request refused: {why}"
            );
        }
    }
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// Constant-time equality of two digests.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer <token>` header (scheme
/// case-insensitive, RFC 7235), if there is one.
fn bearer(value: &HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The answer to a refused request. Its body is never read: the request
/// (and with it the unread body) is dropped when the answer is sent, and
/// `Connection: close` tells the client this connection is done.
fn refuse(status: StatusCode, message: &'static str, challenge: Option<&'static str>) -> Response {
    let mut response = (
        status,
        [(header::CONNECTION, HeaderValue::from_static("close"))],
        Json(serde_json::json!({ "error": message })),
    )
        .into_response();
    if let Some(challenge) = challenge {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    response
}

/// Whether `headers` present a bearer token, and if so whether it is
/// `expected`.
fn presented(expected: &[u8; 32], headers: &HeaderMap) -> Option<bool> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(bearer)
        .map(|token| same(&digest(token), expected))
}

/// axum middleware: lets the request through only with the configured
/// bearer token (see the module docs for the responses).
pub async fn require_token(
    State(check): State<Arc<TokenCheck>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &check.digest else {
        check.log_refusal(StatusCode::FORBIDDEN, "no admin token configured");
        return refuse(StatusCode::FORBIDDEN, "admin token not configured", None);
    };
    match presented(expected, request.headers()) {
        None => {
            check.log_refusal(StatusCode::UNAUTHORIZED, "no bearer token");
            refuse(
                StatusCode::UNAUTHORIZED,
                "missing bearer token",
                Some("Bearer realm=\"sluice\""),
            )
        }
        Some(false) => {
            check.log_refusal(StatusCode::UNAUTHORIZED, "wrong bearer token");
            refuse(
                StatusCode::UNAUTHORIZED,
                "invalid bearer token",
                Some("Bearer realm=\"sluice\", error=\"invalid_token\""),
            )
        }
        Some(true) => next.run(request).await,
    }
}

/// `router` with [`require_token`] in front of each of its routes.
pub fn protect<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    check: Arc<TokenCheck>,
) -> axum::Router<S> {
    router.route_layer(axum::middleware::from_fn_with_state(check, require_token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_parsing() {
        let parse = |v: &'static str| bearer(&HeaderValue::from_static(v)).map(str::to_owned);
        assert_eq!(parse("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(parse("bearer  abc ").as_deref(), Some("abc"));
        assert_eq!(parse("Basic abc"), None);
        assert_eq!(parse("Bearer"), None);
        assert_eq!(parse("Bearer "), None);
    }

    #[test]
    fn digests_compare_by_value() {
        assert!(same(&digest("token"), &digest("token")));
        assert!(!same(&digest("token"), &digest("token2")));
        assert!(!same(&digest(""), &digest("token")));
        let check = TokenCheck::new(None);
        assert!(!check.configured());
        assert!(TokenCheck::new(Some(&Secret::new("x"))).configured());
    }
}
