//! A minimal HTTP/1.1 endpoint for Prometheus scrapes, load balancers' health checks and
//! Kubernetes probes: one short request per connection (`Connection: close`), answered by a
//! handler. `GET` and `HEAD` only; anything else is refused without calling the handler.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A slow or silent client is dropped after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Health checks send a few hundred bytes at most.
const MAX_REQUEST_HEAD: usize = 8192;

/// What a handler sees of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    /// The part after `?`, undecoded.
    pub query: String,
}

impl Request {
    /// The value of `name` in the query string, if given.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: format!("{body}\n"),
        }
    }

    /// Prometheus' text exposition format.
    pub fn metrics(body: String) -> Response {
        Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body,
        }
    }
}

pub type Answer = Pin<Box<dyn Future<Output = Response> + Send>>;
pub type Handler = Arc<dyn Fn(Request) -> Answer + Send + Sync>;

/// A handler that serves `/metrics` from `render` and nothing else.
pub fn metrics_only(render: impl Fn() -> String + Send + Sync + 'static) -> Handler {
    Arc::new(move |request: Request| {
        let response = if request.path == "/metrics" {
            Response::metrics(render())
        } else {
            Response::text(404, "not found: try /metrics\n")
        };
        Box::pin(async move { response }) as Answer
    })
}

/// Binds `address` and answers requests with `handler` until `shutdown`.
pub async fn serve(
    address: SocketAddr,
    handler: Handler,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(address = %address, "serving HTTP (metrics, health)");
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            if let Ok((stream, _)) = accepted {
                let handler = handler.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, handler)).await;
                });
            }
        }
    });
    Ok(())
}

/// What the request line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Get(Request),
    Head(Request),
    /// A method we do not serve.
    OtherMethod,
    Malformed,
}

fn parse(head: &[u8]) -> Parsed {
    let Some(line) = head
        .split(|b| *b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
    else {
        return Parsed::Malformed;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Malformed;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Parsed::Malformed;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let request = Request {
        path: path.to_string(),
        query: query.to_string(),
    };
    match method {
        "GET" => Parsed::Get(request),
        "HEAD" => Parsed::Head(request),
        _ => Parsed::OtherMethod,
    }
}

async fn answer(mut stream: TcpStream, handler: Handler) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let (response, with_body) = match parse(&head) {
        Parsed::Get(request) => (handler(request).await, true),
        Parsed::Head(request) => (handler(request).await, false),
        Parsed::OtherMethod => (Response::text(405, "only GET and HEAD\n"), true),
        Parsed::Malformed => (Response::text(400, "bad request\n"), true),
    };
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if with_body {
        out.push_str(&response.body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, query: &str) -> Request {
        Request {
            path: path.into(),
            query: query.into(),
        }
    }

    #[test]
    fn request_lines() {
        let check = |head: &str, expected: Parsed| assert_eq!(parse(head.as_bytes()), expected);
        check(
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            Parsed::Get(request("/metrics", "")),
        );
        check(
            "HEAD /replica?lag=1024 HTTP/1.0\r\n\r\n",
            Parsed::Head(request("/replica", "lag=1024")),
        );
        check("POST /primary HTTP/1.1\r\n\r\n", Parsed::OtherMethod);
        check("GET /primary\r\n\r\n", Parsed::Malformed);
        check("GET primary HTTP/1.1\r\n\r\n", Parsed::Malformed);
        check("GET /a b HTTP/1.1\r\n\r\n", Parsed::Malformed);
        check("\u{0}\u{1}garbage", Parsed::Malformed);
        check("", Parsed::Malformed);
    }

    #[test]
    fn query_parameters() {
        let r = request("/replica", "lag=1024&verbose&x=");
        assert_eq!(r.param("lag"), Some("1024"));
        assert_eq!(r.param("verbose"), Some(""));
        assert_eq!(r.param("x"), Some(""));
        assert_eq!(r.param("other"), None);
    }
}
