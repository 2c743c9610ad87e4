//! Keeps web pages from driving a node's API.
//!
//! A browser lets any page send some requests to any address, the
//! loopback API included: a form post, or a `fetch` with a "simple"
//! content type (`text/plain`, a form encoding), needs no permission from
//! the server. And a page whose domain is rebound to 127.0.0.1 (DNS
//! rebinding) becomes same-origin with the API and can read its answers.
//! So every request passes three checks before it reaches a route:
//!
//! 1. **Host.** The `Host` header must name the node by an IP address,
//!    `localhost`, or a name the operator allowed (`--api-host`). A
//!    rebinding page sends its own domain there.
//! 2. **Token.** When the node requires one (any non-loopback bind, or
//!    `--require-token`), `Authorization: Bearer <token>`; except for the
//!    dashboard's own files and reads of the IPFS gateway (`/ipfs/`),
//!    which serves only what any IPFS peer may already have.
//! 3. **State-changing requests** (anything but GET, HEAD and OPTIONS)
//!    must carry a content type that a form cannot send and a page cannot
//!    send without a CORS preflight (JSON, YAML, a CAR), or the
//!    `X-Shoal-Request` header (which also forces a preflight), and must
//!    not come from another origin (`Origin`, `Sec-Fetch-Site`).
//!
//! CORS stays closed: no response carries `Access-Control-Allow-*`, so a
//! preflight never succeeds and a cross-origin page cannot read answers.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// The header a client may send instead of a JSON/YAML/CAR content type.
pub const CLIENT_HEADER: &str = "x-shoal-request";

/// Content types a state-changing request may carry: none of them can be
/// sent by a form, nor by a page without a preflight.
pub const ALLOWED_CONTENT_TYPES: &[&str] =
    &["application/json", "application/yaml", "application/x-yaml", "text/yaml", "application/vnd.ipld.car"];

/// What the guard accepts.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Required bearer token, if any.
    pub token: Option<String>,
    /// Host names accepted besides IP addresses and `localhost`
    /// (lowercase, without port).
    pub hosts: Vec<String>,
}

/// An error answer, in the API's JSON form.
fn refuse(status: StatusCode, msg: String) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

/// The host part of a `Host` value (`[::1]:80` → `::1`, `a:1` → `a`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Why `host` is refused, if it is.
fn check_host(policy: &Policy, host: Option<&str>) -> Result<(), Response> {
    let Some(host) = host else {
        return Err(refuse(StatusCode::BAD_REQUEST, "the request has no host header; send one (HTTP/1.1)".into()));
    };
    let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
    if name.parse::<IpAddr>().is_ok() || name == "localhost" || policy.hosts.contains(&name) {
        return Ok(());
    }
    Err(refuse(
        StatusCode::FORBIDDEN,
        format!(
            "host {name:?} is not a name of this node: use its ip address or localhost, or start the node with \
             --api-host {name} (names are checked so that a web page cannot reach the api by dns rebinding)"
        ),
    ))
}

/// The dashboard's own files: a browser cannot send a bearer token for the
/// page it loads, and they hold nothing secret (the page asks for the token
/// and sends it with every API call).
fn is_dashboard_file(req: &Request) -> bool {
    let path = req.uri().path();
    matches!(*req.method(), Method::GET | Method::HEAD) && (path == "/" || path.starts_with("/ui/"))
}

/// A read of the IPFS trustless gateway (`crate::gateway`): what it
/// serves is what the serve policy already gives any IPFS peer over
/// Bitswap, so a token would protect nothing, and IPFS tools (Kubo,
/// Helia, Lassie) have no way to send Shoal's. Reads only: any other
/// method on these paths still needs the token.
fn is_gateway_read(req: &Request) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD) && req.uri().path().starts_with("/ipfs/")
}

fn check_token(policy: &Policy, req: &Request) -> Result<(), Response> {
    let Some(t) = &policy.token else { return Ok(()) };
    if is_dashboard_file(req) || is_gateway_read(req) {
        return Ok(());
    }
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.as_bytes(), t.as_bytes()));
    if ok {
        return Ok(());
    }
    Err(refuse(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token: send `Authorization: Bearer <token>` with the token from the node's \
         <home>/api-token (or set SHOAL_TOKEN)"
            .into(),
    ))
}

/// Refuses a state-changing request a web page could have sent.
fn check_write(req: &Request, host: Option<&str>) -> Result<(), Response> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let headers = req.headers();
    let what = format!("{} {}", req.method(), req.uri().path());
    // Another origin: a page elsewhere (the node serves no page of its own
    // to other origins, and CORS is closed).
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let same = host.is_some_and(|h| {
            origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")).is_some_and(|o| o == h)
        });
        if !same {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!("{what} from the web origin {origin:?} is refused: the api takes no cross-origin requests"),
            ));
        }
    }
    if headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("cross-site") {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("{what} from another site is refused: the api takes no cross-site requests"),
        ));
    }
    if headers.contains_key(CLIENT_HEADER) {
        return Ok(());
    }
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    match essence {
        Some(ct) if ALLOWED_CONTENT_TYPES.contains(&ct.as_str()) => Ok(()),
        given => Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{what} needs a content type of {} (or an {CLIENT_HEADER} header), got {}: a web page can send \
                 the others without asking, so they are refused",
                ALLOWED_CONTENT_TYPES.join(", "),
                given.map_or("none".into(), |g| format!("{g:?}"))
            ),
        )),
    }
}

/// The middleware: see the module docs.
pub async fn check(State(policy): State<Arc<Policy>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    if let Err(r) = check_host(&policy, host.as_deref()) {
        return r;
    }
    if let Err(r) = check_token(&policy, &req) {
        return r;
    }
    if let Err(r) = check_write(&req, host.as_deref()) {
        return r;
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    fn app(policy: Policy) -> Router {
        Router::new()
            .route("/v1/jobs", post(|| async { (StatusCode::CREATED, "made") }).get(|| async { "list" }))
            .layer(axum::middleware::from_fn_with_state(Arc::new(policy), check))
    }

    async fn send(policy: Policy, req: axum::http::request::Builder, body: &str) -> (u16, String) {
        let r = app(policy).oneshot(req.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
        let status = r.status().as_u16();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn post_jobs(host: &str) -> axum::http::request::Builder {
        Request::builder().method("POST").uri("/v1/jobs").header("host", host)
    }

    #[tokio::test]
    async fn a_form_post_from_another_site_is_refused() {
        let req = post_jobs("127.0.0.1:8080")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", "http://evil.example");
        let (status, body) = send(Policy::default(), req, "task=x").await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("evil.example"), "{body}");
        // Without an Origin (an old browser, a privacy setting) the form
        // encoding alone is refused.
        let req = post_jobs("127.0.0.1:8080").header("content-type", "multipart/form-data; boundary=x");
        let (status, body) = send(Policy::default(), req, "").await;
        assert_eq!(status, 415, "{body}");
    }

    #[tokio::test]
    async fn a_simple_fetch_with_text_plain_or_no_content_type_is_refused() {
        for ct in [Some("text/plain;charset=UTF-8"), None] {
            let mut req = post_jobs("localhost:8080");
            if let Some(ct) = ct {
                req = req.header("content-type", ct);
            }
            let (status, body) = send(Policy::default(), req, "task: {}").await;
            assert_eq!(status, 415, "{ct:?}: {body}");
            assert!(body.contains("application/json"), "{body}");
        }
        // A cross-site fetch is refused whatever it carries.
        let req =
            post_jobs("127.0.0.1:1").header("content-type", "application/json").header("sec-fetch-site", "cross-site");
        assert_eq!(send(Policy::default(), req, "{}").await.0, 403);
    }

    #[tokio::test]
    async fn a_rebinding_host_is_refused_even_for_reads() {
        let req = Request::builder().uri("/v1/jobs").header("host", "evil.example:8080");
        let (status, body) = send(Policy::default(), req, "").await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("--api-host evil.example"), "{body}");
        let req = Request::builder().uri("/v1/jobs");
        assert_eq!(send(Policy::default(), req, "").await.0, 400, "no host at all");
        // A name the operator allowed, an IPv6 literal, localhost.
        let policy = Policy { hosts: vec!["node.lan".into()], ..Policy::default() };
        for host in ["NODE.lan:8080", "[::1]:8080", "localhost", "10.1.2.3"] {
            let req = Request::builder().uri("/v1/jobs").header("host", host);
            assert_eq!(send(policy.clone(), req, "").await, (200, "list".into()), "{host}");
        }
    }

    #[tokio::test]
    async fn clients_that_say_what_they_send_pass() {
        for (ct, extra) in
            [("application/yaml", None), ("application/json; charset=utf-8", None), ("text/plain", Some(CLIENT_HEADER))]
        {
            let mut req = post_jobs("127.0.0.1:8080").header("content-type", ct);
            if let Some(h) = extra {
                req = req.header(h, "1");
            }
            assert_eq!(send(Policy::default(), req, "{}").await, (201, "made".into()), "{ct}");
        }
        // The node's own pages are same-origin.
        let req = post_jobs("127.0.0.1:8080")
            .header("content-type", "application/json")
            .header("origin", "http://127.0.0.1:8080");
        assert_eq!(send(Policy::default(), req, "{}").await.0, 201);
    }

    #[tokio::test]
    async fn the_token_is_required_when_set() {
        let policy = Policy { token: Some("s3cret".into()), ..Policy::default() };
        let req = Request::builder().uri("/v1/jobs").header("host", "127.0.0.1");
        let (status, body) = send(policy.clone(), req, "").await;
        assert_eq!(status, 401);
        assert!(body.contains("api-token"), "{body}");
        let req =
            Request::builder().uri("/v1/jobs").header("host", "127.0.0.1").header("authorization", "Bearer s3cret");
        assert_eq!(send(policy.clone(), req, "").await.0, 200);
        // The dashboard's page loads without it (it asks for the token).
        let app = Router::new()
            .route("/", axum::routing::get(|| async { "page" }))
            .route("/ui/{f}", axum::routing::get(|| async { "asset" }))
            .layer(axum::middleware::from_fn_with_state(Arc::new(policy), check));
        for path in ["/", "/ui/app.js"] {
            let req = Request::builder().uri(path).header("host", "127.0.0.1").body(Body::empty()).unwrap();
            assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 200, "{path}");
        }
    }

    #[tokio::test]
    async fn gateway_reads_need_no_token_but_pass_the_host_check() {
        let policy = Policy { token: Some("s3cret".into()), ..Policy::default() };
        let app = Router::new()
            .route("/ipfs/{*rest}", axum::routing::get(|| async { "block" }).post(|| async { "posted" }))
            .route("/v1/jobs", axum::routing::get(|| async { "list" }))
            .route("/v1/ipfs/{x}", axum::routing::get(|| async { "other" }))
            .layer(axum::middleware::from_fn_with_state(Arc::new(policy), check));
        let send = |method: &str, path: &str, host: &str| {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", host)
                .header("content-type", "application/json")
                .body(Body::empty())
                .unwrap();
            let app = app.clone();
            async move { app.oneshot(req).await.unwrap().status().as_u16() }
        };
        assert_eq!(send("GET", "/ipfs/bafy/a", "127.0.0.1").await, 200);
        assert_eq!(send("HEAD", "/ipfs/bafy", "127.0.0.1").await, 200);
        // Everything else still needs the token, writes under /ipfs/ too.
        assert_eq!(send("POST", "/ipfs/bafy", "127.0.0.1").await, 401);
        assert_eq!(send("GET", "/v1/jobs", "127.0.0.1").await, 401);
        assert_eq!(send("GET", "/v1/ipfs/x", "127.0.0.1").await, 401);
        // A rebinding page is refused before the token is looked at.
        assert_eq!(send("GET", "/ipfs/bafy", "evil.example").await, 403);
    }
}
