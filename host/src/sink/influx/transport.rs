//! One write request: the HTTP client (reqwest) and what its answer means.
//!
//! The writer talks to a [`Transport`], so its retry, split and isolation
//! logic is unit-tested with a scripted transport under paused time; the real
//! one is [`HttpTransport`].

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use crate::config::influx::{ApiVersion, Credentials, InfluxConfig};

/// Largest part of a response body kept (error messages are short; a proxy's
/// HTML error page is not worth more).
const MAX_RESPONSE_BODY: usize = 64 << 10;
/// The longest `Retry-After` honoured; a larger one is clamped.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// A request body.
#[derive(Debug, Clone)]
pub struct Body {
    /// The bytes (gzip-compressed when `gzip`).
    pub bytes: Bytes,
    /// Whether `bytes` is gzip.
    pub gzip: bool,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The server answered.
    Status {
        /// HTTP status code.
        status: u16,
        /// `Retry-After`, if present and parseable.
        retry_after: Option<Duration>,
        /// The body (at most 64 KiB, lossy UTF-8).
        body: String,
    },
    /// No answer: connection refused/reset, timeout, TLS error.
    Failed(String),
}

/// Sends one write request.
pub trait Transport: Send + Sync + 'static {
    /// POSTs `body` to the write endpoint.
    fn write(&self, body: Body) -> impl Future<Output = Reply> + Send;
}

/// Could not build the HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Bad URL (validated earlier; kept for direct use).
    #[error("influx.url: {0}")]
    Url(String),
    /// The credential is not a valid header value.
    #[error("influx.{0}: the credential contains characters not allowed in an HTTP header")]
    Header(&'static str),
    /// reqwest refused to build.
    #[error("influx: cannot build the HTTP client: {0}")]
    Client(String),
}

/// The real transport.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    url: reqwest::Url,
    authorization: Option<HeaderValue>,
}

impl HttpTransport {
    /// Builds the client and the write URL (`/write`, `/api/v2/write` or
    /// `/api/v3/write_lp` below the configured base, with its query).
    pub fn new(config: &InfluxConfig, credentials: &Credentials) -> Result<Self, TransportError> {
        let url = write_url(config)?;
        let authorization = match credentials {
            Credentials::None => None,
            Credentials::Basic { username, password } => {
                use base64::Engine as _;
                let raw = format!("{username}:{}", password.expose());
                let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
                Some(header(&format!("Basic {encoded}"), "password_env")?)
            }
            Credentials::Token(token) => {
                Some(header(&format!("Token {}", token.expose()), "token_env")?)
            }
            Credentials::Bearer(token) => {
                Some(header(&format!("Bearer {}", token.expose()), "token_env")?)
            }
        };
        let timeout = Duration::from_millis(config.request_timeout_ms.get());
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TransportError::Client(e.to_string()))?;
        Ok(HttpTransport {
            client,
            url,
            authorization,
        })
    }

    /// The write URL (no secrets in it).
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }
}

fn header(value: &str, key: &'static str) -> Result<HeaderValue, TransportError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| TransportError::Header(key))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The full write URL for `config`.
pub fn write_url(config: &InfluxConfig) -> Result<reqwest::Url, TransportError> {
    let mut base =
        reqwest::Url::parse(&config.url).map_err(|e| TransportError::Url(e.to_string()))?;
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    let path = match config.api {
        ApiVersion::V1 => "write",
        ApiVersion::V2 => "api/v2/write",
        ApiVersion::V3 => "api/v3/write_lp",
    };
    let mut url = base
        .join(path)
        .map_err(|e| TransportError::Url(e.to_string()))?;
    {
        let mut query = url.query_pairs_mut();
        let precision = config.precision.query_value(config.api);
        match config.api {
            ApiVersion::V1 => {
                query.append_pair("db", config.database.as_deref().unwrap_or_default());
                if let Some(rp) = &config.retention_policy {
                    query.append_pair("rp", rp);
                }
            }
            ApiVersion::V2 => {
                query.append_pair("org", config.org.as_deref().unwrap_or_default());
                query.append_pair("bucket", config.bucket.as_deref().unwrap_or_default());
            }
            ApiVersion::V3 => {
                query.append_pair("db", config.database.as_deref().unwrap_or_default());
            }
        }
        query.append_pair("precision", precision);
    }
    Ok(url)
}

impl Transport for HttpTransport {
    async fn write(&self, body: Body) -> Reply {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body.bytes);
        if body.gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(err) => return Reply::Failed(describe(&err)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut kept = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_RESPONSE_BODY.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if kept.len() >= MAX_RESPONSE_BODY {
                        break;
                    }
                }
                Ok(None) => break,
                // The status is what counts; a body cut short is still a message.
                Err(_) => break,
            }
        }
        Reply::Status {
            status,
            retry_after,
            body: String::from_utf8_lossy(&kept).into_owned(),
        }
    }
}

/// A transport error without the URL's query noise, but with its cause.
fn describe(err: &reqwest::Error) -> String {
    use std::error::Error as _;
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut message = kind.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// `Retry-After`: delay-seconds or an HTTP date; clamped to [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let when = httpdate::parse_http_date(value).ok()?;
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> InfluxConfig {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn urls_per_api() {
        let cases = [
            (
                "url = \"http://h:8086\"\ndatabase = \"my db\"\nretention_policy = \"rp\"\nprecision = \"us\"",
                "http://h:8086/write?db=my+db&rp=rp&precision=u",
            ),
            (
                "url = \"http://h:8086/prefix\"\napi = \"v2\"\norg = \"o&x\"\nbucket = \"b\"\nprecision = \"ms\"",
                "http://h:8086/prefix/api/v2/write?org=o%26x&bucket=b&precision=ms",
            ),
            (
                "url = \"https://h/\"\napi = \"v3\"\ndatabase = \"d\"\nprecision = \"s\"",
                "https://h/api/v3/write_lp?db=d&precision=second",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(write_url(&config(text)).expect("url").as_str(), want);
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("99999"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let future =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        let parsed = parse_retry_after(&future).expect("date");
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn authorization_header_is_sensitive() {
        let c = config(
            "url = \"http://h\"\napi = \"v2\"\norg = \"o\"\nbucket = \"b\"\ntoken_env = \"T\"",
        );
        let creds = c.credentials(|_| Some("tok-123".into())).expect("creds");
        let transport = HttpTransport::new(&c, &creds).expect("transport");
        let auth = transport.authorization.as_ref().expect("header");
        assert!(auth.is_sensitive());
        assert_eq!(auth.to_str().expect("ascii"), "Token tok-123");
        assert!(!format!("{transport:?}").contains("tok-123"));
    }
}
