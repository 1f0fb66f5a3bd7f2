//! HTTP client plumbing shared by the demo app and the generator: `HTTP_PROXY`/`NO_PROXY` and a proxy-aware connector.
//!
//! The sidecar's outbound HTTP proxy listener routes absolute-form requests
//! (`GET http://orders:8080/ HTTP/1.1`), so a proxied connection is marked
//! `Connected::proxy(true)`: hyper-util's client then keeps the absolute form
//! instead of rewriting the request line to origin form.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::LoadtestError;

/// Largest body the demo's calls and probes read.
pub const MAX_FETCH_BODY_BYTES: usize = 1024 * 1024;

/// An HTTP (not HTTPS) forward proxy, as `HTTP_PROXY` and `NO_PROXY` describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// `host:port` of the proxy.
    pub authority: String,
    /// `NO_PROXY` entries, lowercased: host names, domain suffixes (`.example.com`) or `*`.
    pub no_proxy: Vec<String>,
}

// === impl ProxyConfig ===

impl ProxyConfig {
    /// Parses a proxy URL (`http://127.0.0.1:15001`, or a bare `127.0.0.1:15001`) and a `NO_PROXY` list.
    pub fn parse(proxy: &str, no_proxy: Option<&str>) -> Result<ProxyConfig, LoadtestError> {
        let invalid = |reason: &str| LoadtestError::InvalidUrl {
            url: proxy.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = proxy.trim();
        let rest = if let Some(rest) = trimmed.strip_prefix("http://") {
            rest
        } else if trimmed.contains("://") {
            return Err(invalid("only http:// proxies are supported"));
        } else {
            trimmed
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let authority = authority.rsplit('@').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(invalid("missing host"));
        }
        let authority = if has_port(authority) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let no_proxy = no_proxy
            .unwrap_or_default()
            .split(',')
            .map(|entry| entry.trim().to_ascii_lowercase())
            .filter(|entry| !entry.is_empty())
            .collect();
        Ok(ProxyConfig {
            authority,
            no_proxy,
        })
    }

    /// Reads `HTTP_PROXY` (or `http_proxy`) and `NO_PROXY` (or `no_proxy`) from the environment.
    pub fn from_env() -> Option<ProxyConfig> {
        Self::from_vars(|key| std::env::var(key).ok())
    }

    /// Like [`ProxyConfig::from_env`] with a variable lookup of the caller's (for tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Option<ProxyConfig> {
        let proxy = get("HTTP_PROXY")
            .or_else(|| get("http_proxy"))
            .filter(|value| !value.trim().is_empty())?;
        let no_proxy = get("NO_PROXY").or_else(|| get("no_proxy"));
        match ProxyConfig::parse(&proxy, no_proxy.as_deref()) {
            Ok(config) => Some(config),
            Err(error) => {
                tracing::warn!(%error, "ignoring HTTP_PROXY");
                None
            }
        }
    }

    /// Whether `NO_PROXY` says to reach `host` directly. Only what `NO_PROXY` lists is bypassed.
    pub fn bypasses(&self, host: &str) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.no_proxy.iter().any(|entry| {
            let entry = strip_port(entry);
            if entry == "*" {
                return true;
            }
            let domain = entry.trim_start_matches('.');
            host == domain || host.ends_with(&format!(".{domain}"))
        })
    }
}

fn has_port(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    }
}

fn strip_port(entry: &str) -> &str {
    let entry = entry.trim_start_matches('[');
    if let Some((host, _)) = entry.split_once(']') {
        return host;
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => entry,
    }
}

/// A connector that dials the proxy for every host `NO_PROXY` does not exempt.
#[derive(Clone, Debug)]
pub struct ProxyConnector {
    http: HttpConnector,
    proxy: Option<ProxyConfig>,
}

/// The connection a [`ProxyConnector`] makes; it tells hyper-util whether it leads to a proxy.
#[derive(Debug)]
pub struct MaybeProxied {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// === impl ProxyConnector ===

impl ProxyConnector {
    pub fn new(proxy: Option<ProxyConfig>, connect_timeout: Duration) -> ProxyConnector {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        ProxyConnector { http, proxy }
    }
}

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = MaybeProxied;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<MaybeProxied, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let proxy = self
            .proxy
            .as_ref()
            .filter(|proxy| !proxy.bypasses(dst.host().unwrap_or_default()));
        let (target, proxied) = match proxy {
            Some(proxy) => {
                let uri = Uri::builder()
                    .scheme("http")
                    .authority(proxy.authority.as_str())
                    .path_and_query("/")
                    .build();
                match uri {
                    Ok(uri) => (uri, true),
                    Err(error) => return Box::pin(async move { Err(error.into()) }),
                }
            }
            None => (dst, false),
        };
        let mut http = self.http.clone();
        Box::pin(async move {
            let io = http.call(target).await?;
            Ok(MaybeProxied { io, proxied })
        })
    }
}

// === impl MaybeProxied ===

impl Connection for MaybeProxied {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for MaybeProxied {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MaybeProxied {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// A pooled GET client, through `proxy` when one is given.
pub type GetClient = Client<ProxyConnector, Empty<Bytes>>;

pub fn get_client(proxy: Option<ProxyConfig>, connect_timeout: Duration) -> GetClient {
    Client::builder(TokioExecutor::new()).build(ProxyConnector::new(proxy, connect_timeout))
}

/// GETs `url` within `timeout` and reads at most [`MAX_FETCH_BODY_BYTES`] of its body.
pub async fn fetch(
    client: &GetClient,
    url: &str,
    timeout: Duration,
) -> Result<(http::StatusCode, Bytes), String> {
    let uri: Uri = url.parse().map_err(|e| format!("invalid url: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// urls are supported".to_string());
    }
    let request = http::Request::get(uri)
        .body(Empty::new())
        .map_err(|e| format!("invalid request: {e}"))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(describe_client_error)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_FETCH_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading body failed: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
    }
}

fn describe_client_error(error: hyper_util::client::legacy::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_urls() {
        let config = ProxyConfig::parse("http://127.0.0.1:15001/", None).unwrap();
        assert_eq!(config.authority, "127.0.0.1:15001");
        assert!(config.no_proxy.is_empty());
        let config = ProxyConfig::parse("localhost", Some(" a.com, .b.org ,")).unwrap();
        assert_eq!(config.authority, "localhost:80");
        assert_eq!(config.no_proxy, vec!["a.com", ".b.org"]);
        assert!(ProxyConfig::parse("https://x:1", None).is_err());
        assert!(ProxyConfig::parse("http://", None).is_err());
        let config = ProxyConfig::parse("http://user:pw@[::1]:3128", None).unwrap();
        assert_eq!(config.authority, "[::1]:3128");
    }

    #[test]
    fn no_proxy_matches_hosts_and_suffixes_only_when_listed() {
        let none = ProxyConfig::parse("p:1", None).unwrap();
        assert!(!none.bypasses("localhost"));
        assert!(!none.bypasses("127.0.0.1"));
        let some = ProxyConfig::parse("p:1", Some("localhost,127.0.0.1:8080,.internal")).unwrap();
        assert!(some.bypasses("localhost"));
        assert!(some.bypasses("LOCALHOST"));
        assert!(some.bypasses("127.0.0.1"));
        assert!(some.bypasses("orders.prod.internal"));
        assert!(some.bypasses("internal"));
        assert!(!some.bypasses("orders"));
        assert!(!some.bypasses("notlocalhost"));
        let all = ProxyConfig::parse("p:1", Some("*")).unwrap();
        assert!(all.bypasses("anything"));
        let v6 = ProxyConfig::parse("p:1", Some("[::1]")).unwrap();
        assert!(v6.bypasses("[::1]"));
    }

    #[test]
    fn env_lookup_prefers_upper_case_and_ignores_empty() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(ProxyConfig::from_vars(vars(&[])), None);
        assert_eq!(ProxyConfig::from_vars(vars(&[("HTTP_PROXY", " ")])), None);
        let config =
            ProxyConfig::from_vars(vars(&[("http_proxy", "h:2"), ("no_proxy", "x")])).unwrap();
        assert_eq!(config.authority, "h:2");
        assert_eq!(config.no_proxy, vec!["x"]);
        let config =
            ProxyConfig::from_vars(vars(&[("HTTP_PROXY", "a:1"), ("http_proxy", "b:2")])).unwrap();
        assert_eq!(config.authority, "a:1");
    }
}
