//! A minimal HTTP/1.1 client over a raw socket for the ops API tests: one
//! request per connection (`Connection: close`), fixed-length or chunked
//! bodies. Enough to test status codes, headers and JSON bodies exactly.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::HANG_GUARD;

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// `host:port` of a hub from its `ws://host:port/path` URL.
pub fn authority(ws_url: &str) -> String {
    let rest = ws_url.strip_prefix("ws://").expect("ws:// URL");
    rest.split('/').next().expect("authority").to_owned()
}

pub async fn request(
    authority: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> HttpResponse {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    if let Some(token) = bearer {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let exchange = async {
        let mut stream = TcpStream::connect(authority).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("write");
        if let Some(body) = body {
            stream.write_all(body.as_bytes()).await.expect("write body");
        }
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(HANG_GUARD, exchange)
        .await
        .expect("HTTP request hung");
    parse(&raw)
}

pub async fn get(authority: &str, path: &str, bearer: Option<&str>) -> HttpResponse {
    request(authority, "GET", path, bearer, None).await
}

pub async fn post(authority: &str, path: &str, bearer: Option<&str>, body: &str) -> HttpResponse {
    request(authority, "POST", path, bearer, Some(body)).await
}

fn parse(raw: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("no header end");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// `promhub_refusals_total{what}` from the `/metrics` of the hub at
/// `ws_url`, read with the admin token.
pub async fn refusals(ws_url: &str, admin_token: &str, what: &str) -> f64 {
    let response = get(&authority(ws_url), "/metrics", Some(admin_token)).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let scrape = prometheus_parse::Scrape::parse(response.body.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == "promhub_refusals_total" && s.labels.get("what") == Some(what))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("not a counter: {other:?}"),
        })
        .unwrap_or_else(|| panic!("no refusals_total{{what={what:?}}}"))
}
