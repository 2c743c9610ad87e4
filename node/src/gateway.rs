//! The IPFS trustless gateway on the node's HTTP API, and a client for any
//! trustless gateway.
//!
//! `GET /ipfs/{cid}[/{path}]` answers verifiable data only
//! (specs.ipfs.tech/http-gateways/trustless-gateway): one raw block, or a
//! CARv1 of the blocks that resolve the path followed by the terminal's
//! blocks under a `dag-scope`. It serves from the local store alone and
//! only what [`crate::serve`] allows: it never fetches, so a request costs
//! this node local reads and nothing else, and an IPFS peer learns nothing
//! it could not learn over Bitswap.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use shoal_storage::block::{DAG_PB, RAW, SHA2_256};
use shoal_storage::pb::{DataType, PbNode, UnixFs};
use shoal_storage::{Block, BlockStore, Cid};

use crate::api::{bad, internal, ApiError, ChannelWriter, CAR_CHUNKS};
use crate::serve::{Policy, Servable};
use crate::views::{Binary, ErrorBody};

/// Most blocks one gateway CAR carries, and one [`fetch_car`] accepts.
pub const MAX_CAR_BLOCKS: usize = crate::fetch::MAX_FETCH_BLOCKS;
/// Most path segments after the CID.
pub const MAX_PATH_SEGMENTS: usize = shoal_storage::MAX_DIR_DEPTH;
/// The content type of the CARs the gateway sends: CARv1, blocks depth
/// first from the root, each once.
pub const CAR_CONTENT_TYPE: &str = "application/vnd.ipld.car; version=1; order=dfs; dups=n";
/// The content type of one raw block.
pub const RAW_CONTENT_TYPE: &str = "application/vnd.ipld.raw";
/// Content is addressed by hash and never changes (a year, as Kubo sends).
const CACHE_CONTROL: &str = "public, max-age=29030400, immutable";
/// Largest CAR header [`fetch_car`] accepts (it only lists roots).
const MAX_CAR_HEADER: u64 = 1 << 20;

/// Which blocks of the path's terminal a CAR carries (`dag-scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// The terminal block alone.
    Block,
    /// Every block of a file; a directory's own blocks (HAMT shards
    /// included), not its entries.
    Entity,
    /// The whole DAG under the terminal.
    #[default]
    All,
}

impl Scope {
    /// The `dag-scope` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Block => "block",
            Scope::Entity => "entity",
            Scope::All => "all",
        }
    }

    fn parse(s: &str) -> Result<Scope, ApiError> {
        match s {
            "block" => Ok(Scope::Block),
            "entity" => Ok(Scope::Entity),
            "all" => Ok(Scope::All),
            other => Err(bad(format!("unknown dag-scope {other:?}: ask for dag-scope=block, entity or all"))),
        }
    }
}

/// What the gateway routes need: the node's store, its serve policy and
/// the CAR streams it allows at once.
#[derive(Clone)]
pub struct Gateway {
    pub store: Arc<dyn BlockStore>,
    pub servable: Arc<Servable>,
    /// Shared with `GET /v1/car` (see [`crate::api::MAX_CAR_EXPORTS`]): a
    /// CAR holds a blocking thread while it streams.
    pub streams: Arc<tokio::sync::Semaphore>,
}

/// The gateway's routes (GET and HEAD).
pub fn router(gw: Gateway) -> Router {
    Router::new()
        .route("/ipfs/{cid}", get(get_root))
        // A trailing slash names the same root (a directory's usual form).
        .route("/ipfs/{cid}/", get(get_root))
        .route("/ipfs/{cid}/{*path}", get(get_path))
        .with_state(gw)
}

#[derive(Deserialize, Default)]
pub(crate) struct GatewayQuery {
    format: Option<String>,
    #[serde(rename = "dag-scope")]
    dag_scope: Option<String>,
    #[serde(rename = "entity-bytes")]
    entity_bytes: Option<String>,
    #[serde(rename = "car-version")]
    car_version: Option<String>,
    #[serde(rename = "car-order")]
    car_order: Option<String>,
    #[serde(rename = "car-dups")]
    car_dups: Option<String>,
}

/// Verifiable data at a CID: one raw block or a CAR.
#[utoipa::path(get, path = "/ipfs/{cid}", operation_id = "gateway_get", tag = "gateway", params(("cid" = String, Path, description = "a cid (dag-pb or raw, sha2-256)", pattern = "^[A-Za-z0-9]+$", min_length = 1, max_length = 256), ("format" = Option<String>, Query, description = "raw (one block) or car; takes precedence over Accept", pattern = "^(raw|car)$"), ("dag-scope" = Option<String>, Query, description = "for a car: block, entity or all (default)", pattern = "^(block|entity|all)$"), ("Accept" = Option<String>, Header, description = "application/vnd.ipld.raw or application/vnd.ipld.car")), responses((status = 200, description = "a raw block (application/vnd.ipld.raw) or a CARv1 (application/vnd.ipld.car; version=1; order=dfs; dups=n)", content((Binary = "application/vnd.ipld.car"), (Binary = "application/vnd.ipld.raw"))), (status = 304, description = "not modified (If-None-Match)"), (status = 400, description = "malformed cid or path, unsupported codec or hash, unknown format or dag-scope", body = ErrorBody), (status = 401, description = "token required (never for /ipfs/ routes)", body = ErrorBody), (status = 403, description = "host refused", body = ErrorBody), (status = 404, description = "not on this node, or not served under its serve policy", body = ErrorBody), (status = 406, description = "neither a raw block nor a car asked for", body = ErrorBody), (status = 503, description = "too many car streams at once", body = ErrorBody)))]
async fn get_root(
    State(gw): State<Gateway>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<GatewayQuery>,
) -> Result<Response, ApiError> {
    serve(gw, method, uri, headers, q).await
}

/// As `GET /ipfs/{cid}`, at a path inside it: a CAR of the blocks that
/// resolve the path, then the terminal's blocks.
#[utoipa::path(get, path = "/ipfs/{cid}/{path}", operation_id = "gateway_get_path", tag = "gateway", params(("cid" = String, Path, description = "a cid (dag-pb or raw, sha2-256)", pattern = "^[A-Za-z0-9]+$", min_length = 1, max_length = 256), ("path" = String, Path, description = "a path inside the cid, a/b"), ("format" = Option<String>, Query, description = "car (raw takes no path)", pattern = "^(raw|car)$"), ("dag-scope" = Option<String>, Query, description = "block, entity or all (default)", pattern = "^(block|entity|all)$"), ("Accept" = Option<String>, Header, description = "application/vnd.ipld.car")), responses((status = 200, description = "a CARv1 (application/vnd.ipld.car; version=1; order=dfs; dups=n)", content_type = "application/vnd.ipld.car", body = Binary), (status = 304, description = "not modified (If-None-Match)"), (status = 400, description = "malformed cid or path, unsupported codec or hash, a raw block asked with a path, unknown format or dag-scope", body = ErrorBody), (status = 401, description = "token required (never for /ipfs/ routes)", body = ErrorBody), (status = 403, description = "host refused", body = ErrorBody), (status = 404, description = "not on this node, no such entry, or not served under its serve policy", body = ErrorBody), (status = 406, description = "no car asked for", body = ErrorBody), (status = 503, description = "too many car streams at once", body = ErrorBody)))]
async fn get_path(
    State(gw): State<Gateway>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<GatewayQuery>,
) -> Result<Response, ApiError> {
    serve(gw, method, uri, headers, q).await
}

/// What a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Raw,
    Car(Scope),
}

const RAW_MEDIA: &str = "application/vnd.ipld.raw";
const CAR_MEDIA: &str = "application/vnd.ipld.car";

/// The answer's format: `format` first (the spec lets it override
/// `Accept`, so that a browser link can ask for a CAR), then the first
/// gateway type `Accept` lists.
fn negotiate(q: &GatewayQuery, headers: &HeaderMap) -> Result<Format, ApiError> {
    let mut car_params: Vec<(String, String)> = Vec::new();
    let wanted = match q.format.as_deref() {
        Some("raw") => Some(RAW_MEDIA),
        Some("car") => Some(CAR_MEDIA),
        Some(other) => {
            return Err(bad(format!(
                "unknown format {other:?}: this trustless gateway answers format=raw (one block) or format=car"
            )))
        }
        None => None,
    };
    let accept = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    let mut from_accept = None;
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let params: Vec<(String, String)> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"').to_ascii_lowercase()))
            .collect();
        if params.iter().any(|(k, v)| k == "q" && v.parse::<f32>().is_ok_and(|q| q <= 0.0)) {
            continue;
        }
        if media == RAW_MEDIA || media == CAR_MEDIA {
            if media == CAR_MEDIA {
                car_params = params;
            }
            from_accept = Some(if media == RAW_MEDIA { RAW_MEDIA } else { CAR_MEDIA });
            break;
        }
    }
    let Some(media) = wanted.or(from_accept) else {
        return Err(ApiError(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "this is a trustless gateway: it answers only verifiable data. ask for one block with \
                 `Accept: {RAW_MEDIA}` (or ?format=raw), or for a car with `Accept: {CAR_MEDIA}` (or ?format=car); \
                 got accept {:?}",
                if accept.is_empty() { "none" } else { accept.as_str() }
            ),
        ));
    };
    if media == RAW_MEDIA {
        return Ok(Format::Raw);
    }
    if q.entity_bytes.is_some() {
        return Err(bad("entity-bytes is not supported by this gateway: ask for dag-scope=entity (the whole file)"));
    }
    let param = |query: &Option<String>, name: &str| {
        query.clone().or_else(|| car_params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    };
    // Whatever order or duplicates are asked for, the answer is depth
    // first without duplicates, and says so in its content type (the
    // spec lets a gateway answer the order and dups it has).
    if let Some(v) = param(&q.car_version, "version").filter(|v| v != "1") {
        return Err(bad(format!("car version {v:?} is not supported: this gateway sends car version 1")));
    }
    if let Some(v) = param(&q.car_order, "order").filter(|v| v != "dfs" && v != "unk") {
        return Err(bad(format!("car order {v:?} is not supported: this gateway sends order=dfs")));
    }
    if let Some(v) = param(&q.car_dups, "dups").filter(|v| v != "y" && v != "n") {
        return Err(bad(format!("car dups {v:?} is not y or n")));
    }
    let scope = q.dag_scope.as_deref().map(Scope::parse).transpose()?.unwrap_or_default();
    Ok(Format::Car(scope))
}

/// Decodes `%XX` escapes; `None` for a broken escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The CID and path segments of a request path `/ipfs/{cid}[/{path}]`,
/// checked: segments are read from the raw path, so that an encoded `/`
/// cannot pass for a segment boundary (nor be taken for part of a name).
fn parse_request_path(raw: &str) -> Result<(Cid, Vec<String>), ApiError> {
    let rest = raw.strip_prefix("/ipfs/").ok_or_else(|| bad(format!("{raw:?} is not an /ipfs/ path")))?;
    let (cid_text, path) = rest.split_once('/').unwrap_or((rest, ""));
    let cid_text = percent_decode(cid_text)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| bad(format!("malformed cid {cid_text:?}: a cid looks like bafy… or Qm…")))?;
    let cid = Cid::try_from(cid_text.as_str()).map_err(|e| {
        bad(format!("malformed cid {cid_text:?}: {}; a cid looks like bafy… or Qm…", e.to_string().to_lowercase()))
    })?;
    match cid.codec() {
        DAG_PB | RAW => {}
        other => {
            let name = match other {
                shoal_storage::block::DAG_CBOR => " (dag-cbor)",
                0x0129 => " (dag-json)",
                0x0200 => " (json)",
                _ => "",
            };
            return Err(bad(format!(
                "{cid} has codec {other:#x}{name}: this gateway serves dag-pb (0x70) and raw (0x55) blocks only"
            )));
        }
    }
    if cid.hash().code() != SHA2_256 {
        return Err(bad(format!(
            "{cid} uses multihash {:#x}: this gateway serves sha2-256 (0x12) blocks only",
            cid.hash().code()
        )));
    }
    // One trailing slash is a directory's usual form; any other empty
    // segment is a malformed path.
    let path = path.strip_suffix('/').unwrap_or(path);
    let mut segments = Vec::new();
    if !path.is_empty() {
        for seg in path.split('/') {
            let decoded = percent_decode(seg)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| bad(format!("path segment {seg:?} has a broken %-escape or is not utf-8")))?;
            if decoded.is_empty()
                || decoded == "."
                || decoded == ".."
                || decoded.contains('/')
                || decoded.contains('\0')
            {
                return Err(bad(format!(
                    "path segment {seg:?} is not allowed: no empty, '.' or '..' segments, no encoded '/' or nul"
                )));
            }
            segments.push(decoded);
        }
    }
    if segments.len() > MAX_PATH_SEGMENTS {
        return Err(bad(format!("path has {} segments, more than {MAX_PATH_SEGMENTS}", segments.len())));
    }
    Ok((cid, segments))
}

/// Why a block is not given out. The same answer whether the node holds
/// it or not: under the default policy a peer must not learn what this
/// node merely cached by telling "not here" from "not served".
fn not_served(policy: Policy, cid: &Cid) -> ApiError {
    let why = match policy {
        Policy::Pinned => {
            "this node serves only blocks of data it pinned, from its own store: it does not serve blocks it has \
             not pinned, and fetches nothing from the network"
        }
        Policy::All => "this node does not hold it, and its gateway fetches nothing from the network",
        Policy::Off => "this node serves no blocks (serve policy off)",
    };
    ApiError(StatusCode::NOT_FOUND, format!("{cid} is not served here: {why}"))
}

/// 64-bit FNV-1a: a stable digest of the request's parameters for its
/// Etag (the same request gets the same tag across restarts).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

async fn serve(
    gw: Gateway,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    q: GatewayQuery,
) -> Result<Response, ApiError> {
    let raw_path = uri.path().to_owned();
    let (root, segments) = parse_request_path(&raw_path)?;
    let format = negotiate(&q, &headers)?;
    let etag = match format {
        Format::Raw if !segments.is_empty() => {
            return Err(bad(format!(
                "a raw block is asked for by its cid alone; for the blocks of {raw_path} ask for a car \
                 (Accept: {CAR_MEDIA}, or ?format=car)"
            )))
        }
        Format::Raw => format!("\"{root}.raw\""),
        Format::Car(scope) => {
            format!("\"{root}.car.{}.{:016x}\"", scope.as_str(), fnv1a(&[&segments.join("/"), scope.as_str()]))
        }
    };
    let common = |b: axum::http::response::Builder| {
        b.header(header::ETAG, &etag)
            .header(header::CACHE_CONTROL, CACHE_CONTROL)
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .header(header::VARY, "Accept")
            .header("x-ipfs-path", HeaderValue::from_str(&raw_path).unwrap_or(HeaderValue::from_static("/ipfs/")))
    };
    let none_match = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let cached = none_match.split(',').any(|t| t.trim().trim_start_matches("W/") == etag || t.trim() == "*");
    match format {
        Format::Raw => {
            let (store, servable) = (gw.store.clone(), gw.servable.clone());
            let block = tokio::task::spawn_blocking(move || -> Result<Block, ApiError> {
                servable.refresh(&*store).map_err(internal)?;
                if !servable.allows_indexed(&*store, &root).map_err(internal)? {
                    return Err(not_served(servable.policy(), &root));
                }
                match store.get(&root) {
                    Ok(b) => Ok(b),
                    Err(shoal_storage::Error::NotFound { .. }) => Err(not_served(servable.policy(), &root)),
                    Err(e) => Err(internal(e)),
                }
            })
            .await
            .map_err(internal)??;
            if cached {
                return common(Response::builder().status(StatusCode::NOT_MODIFIED))
                    .body(axum::body::Body::empty())
                    .map_err(internal);
            }
            common(Response::builder())
                .header(header::CONTENT_TYPE, RAW_CONTENT_TYPE)
                .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{root}.bin\""))
                .body(axum::body::Body::from(block.into_data()))
                .map_err(internal)
        }
        Format::Car(scope) => {
            let permit = gw.streams.clone().try_acquire_owned().map_err(|_| {
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("this node already streams {} cars; retry later", crate::api::MAX_CAR_EXPORTS),
                )
            })?;
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), ApiError>>();
            // As `GET /v1/car`: streamed from a blocking thread through a
            // bounded channel, so that a CAR of any size holds at most
            // CAR_CHUNKS chunks here and stops when the client goes away.
            let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(CAR_CHUNKS);
            let body_wanted = method != Method::HEAD && !cached;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let plan = match plan_car(&gw, &root, &segments, scope) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if ready_tx.send(Ok(())).is_err() || !body_wanted {
                    return;
                }
                let mut w = ChannelWriter::new(tx);
                let done = write_car(&gw, &root, &plan, &mut w)
                    .and_then(|()| w.flush().map_err(|e| anyhow::anyhow!("cannot send the car: {e}")));
                if let Err(e) = done {
                    tracing::debug!("gateway car of {root} ended early: {e:#}");
                    // The client sees the stream break, not a short CAR
                    // that looks whole.
                    w.fail(format!("{e:#}"));
                }
            });
            ready_rx.await.map_err(internal)??;
            if cached {
                return common(Response::builder().status(StatusCode::NOT_MODIFIED))
                    .body(axum::body::Body::empty())
                    .map_err(internal);
            }
            let body = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
            common(Response::builder())
                .header(header::CONTENT_TYPE, CAR_CONTENT_TYPE)
                .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{root}.car\""))
                .body(axum::body::Body::from_stream(body))
                .map_err(internal)
        }
    }
}

/// A CAR's blocks decided before its first byte: the blocks resolving the
/// path (checked against the policy, so a refusal is still a 404) and the
/// terminal, with whether its whole DAG is servable.
struct CarPlan {
    path: Vec<Cid>,
    terminal: Cid,
    scope: Scope,
    /// Every block under the terminal may be given out: no check per block.
    dag_allowed: bool,
}

fn plan_car(gw: &Gateway, root: &Cid, segments: &[String], scope: Scope) -> Result<CarPlan, ApiError> {
    let store = &*gw.store;
    let servable = &gw.servable;
    servable.refresh(store).map_err(internal)?;
    let allowed = |cid: &Cid| -> Result<(), ApiError> {
        if servable.allows_indexed(store, cid).map_err(internal)? && store.has(cid).map_err(internal)? {
            Ok(())
        } else {
            Err(not_served(servable.policy(), cid))
        }
    };
    allowed(root)?;
    let mut path = Vec::new();
    let mut cur = *root;
    for (i, name) in segments.iter().enumerate() {
        let at = || format!("/ipfs/{root}/{}", segments[..i].join("/"));
        let next = step(store, &cur, name, &mut path).map_err(|e| match e {
            Step::NoEntry => ApiError(
                StatusCode::NOT_FOUND,
                format!("no entry {name:?} under {}; ask for its directory with dag-scope=entity to list it", at()),
            ),
            Step::NotDirectory => ApiError(
                StatusCode::NOT_FOUND,
                format!("{} ({cur}) is not a directory, so it has no entry {name:?}", at()),
            ),
            Step::Store(e) => match e {
                shoal_storage::Error::NotFound { cid } => not_served(servable.policy(), &cid),
                e => internal(e),
            },
        })?;
        cur = next;
    }
    for c in &path {
        allowed(c)?;
    }
    allowed(&cur)?;
    let dag_allowed = servable.allows_dag_indexed(store, &cur).map_err(internal)?;
    Ok(CarPlan { path, terminal: cur, scope, dag_allowed })
}

enum Step {
    NoEntry,
    NotDirectory,
    Store(shoal_storage::Error),
}

impl From<shoal_storage::Error> for Step {
    fn from(e: shoal_storage::Error) -> Step {
        Step::Store(e)
    }
}

fn decode(block: &Block) -> Result<Option<(PbNode, UnixFs)>, shoal_storage::Error> {
    if block.cid().codec() != DAG_PB {
        return Ok(None);
    }
    let cid = *block.cid();
    let pb =
        PbNode::decode(block.data()).map_err(|e| shoal_storage::Error::Malformed { cid, reason: e.to_string() })?;
    let Some(data) = pb.data.as_deref() else { return Ok(None) };
    let u = UnixFs::decode(data).map_err(|e| shoal_storage::Error::Malformed { cid, reason: e.to_string() })?;
    Ok(Some((pb, u)))
}

/// The entry `name` of directory `dir`, recording in `path` the blocks a
/// client needs to verify the step: the directory block, and for a HAMT
/// only the shard nodes on the name's hash path.
fn step(store: &dyn BlockStore, dir: &Cid, name: &str, path: &mut Vec<Cid>) -> Result<Cid, Step> {
    let block = store.get(dir)?;
    path.push(*dir);
    let Some((pb, u)) = decode(&block)? else { return Err(Step::NotDirectory) };
    match u.kind {
        DataType::Directory => {
            pb.links.into_iter().find(|l| l.name.as_deref() == Some(name)).map(|l| l.hash).ok_or(Step::NoEntry)
        }
        DataType::HamtShard => {
            // Kubo's HAMT (see shoal_storage::hamt): murmur3-x64-64 of the
            // name, one byte per level, links named by the slot in two
            // upper-case hex digits, followed by the name for an entry.
            let hash = murmur3::murmur3_x64_128(&mut std::io::Cursor::new(name.as_bytes()), 0)
                .map(|x| (x as u64).to_be_bytes())
                .map_err(|e| Step::Store(shoal_storage::Error::Unsupported(format!("cannot hash {name:?}: {e}"))))?;
            let mut shard = pb;
            // One level per byte of the 64-bit hash, eight at most.
            for byte in hash {
                let slot = format!("{byte:02X}");
                let entry = format!("{slot}{name}");
                let link = shard.links.iter().find(|l| {
                    let n = l.name.as_deref().unwrap_or_default();
                    n == slot || n == entry
                });
                let Some(link) = link else { return Err(Step::NoEntry) };
                if link.name.as_deref() == Some(entry.as_str()) {
                    return Ok(link.hash);
                }
                let child = link.hash;
                let block = store.get(&child)?;
                path.push(child);
                match decode(&block)? {
                    Some((pb, u)) if u.kind == DataType::HamtShard => shard = pb,
                    _ => {
                        return Err(Step::Store(shoal_storage::Error::Malformed {
                            cid: child,
                            reason: "hamt link to a node that is not a shard".into(),
                        }))
                    }
                }
            }
            Err(Step::NoEntry)
        }
        _ => Err(Step::NotDirectory),
    }
}

/// The links a CAR follows from `block` under `scope`: everything for
/// `all` and for a file's blocks, a HAMT's own shard nodes for `entity`
/// on a directory, nothing for `block`.
fn scope_links(block: &Block, scope: Scope, in_file: bool) -> anyhow::Result<(Vec<Cid>, bool)> {
    if scope == Scope::Block || block.cid().codec() != DAG_PB {
        return Ok((Vec::new(), in_file));
    }
    let cid = *block.cid();
    let pb = PbNode::decode(block.data()).with_context(|| format!("block {cid} is not valid dag-pb"))?;
    if scope == Scope::All || in_file {
        return Ok((pb.links.into_iter().map(|l| l.hash).collect(), in_file));
    }
    let kind = match pb.data.as_deref().map(UnixFs::decode) {
        Some(Ok(u)) => u.kind,
        Some(Err(e)) => bail!("block {cid} has malformed unixfs data: {e}"),
        None => return Ok((Vec::new(), false)),
    };
    Ok(match kind {
        DataType::File | DataType::Raw => (pb.links.into_iter().map(|l| l.hash).collect(), true),
        DataType::HamtShard => (
            pb.links.into_iter().filter(|l| l.name.as_deref().is_some_and(|n| n.len() == 2)).map(|l| l.hash).collect(),
            false,
        ),
        DataType::Directory | DataType::Symlink | DataType::Metadata => (Vec::new(), false),
    })
}

fn write_varint(w: &mut dyn Write, mut v: u64) -> std::io::Result<()> {
    let mut buf = [0u8; 10];
    let mut n = 0;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[n] = b;
            n += 1;
            break;
        }
        buf[n] = b | 0x80;
        n += 1;
    }
    w.write_all(&buf[..n])
}

/// A CARv1 header naming `root`: the dag-cbor map `{roots: [root],
/// version: 1}`, encoded by hand (canonical key order: shorter first).
fn car_header(root: &Cid) -> Vec<u8> {
    let cid = root.to_bytes();
    let mut h = vec![0xa2, 0x65];
    h.extend_from_slice(b"roots");
    // An array of one tag-42 byte string: 0x00 (identity multibase) + cid.
    h.extend_from_slice(&[0x81, 0xd8, 0x2a]);
    let len = cid.len() + 1;
    if len < 24 {
        h.push(0x40 | len as u8);
    } else if len < 256 {
        h.extend_from_slice(&[0x58, len as u8]);
    } else {
        h.push(0x59);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    }
    h.push(0x00);
    h.extend_from_slice(&cid);
    h.push(0x67);
    h.extend_from_slice(b"version");
    h.push(0x01);
    h
}

fn write_section(w: &mut dyn Write, cid: &Cid, data: &[u8]) -> std::io::Result<()> {
    let c = cid.to_bytes();
    write_varint(w, (c.len() + data.len()) as u64)?;
    w.write_all(&c)?;
    w.write_all(data)
}

/// Writes the CAR of `plan`: header, path blocks, then the terminal's
/// blocks under its scope, depth first, each once.
fn write_car(gw: &Gateway, root: &Cid, plan: &CarPlan, w: &mut dyn Write) -> anyhow::Result<()> {
    let store = &*gw.store;
    let header = car_header(root);
    write_varint(w, header.len() as u64)?;
    w.write_all(&header)?;
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    for cid in &plan.path {
        if seen.insert(cid.hash().to_bytes()) {
            let b = store.get(cid).with_context(|| format!("cannot read block {cid} of the path"))?;
            write_section(w, cid, b.data())?;
        }
    }
    let mut stack = vec![(plan.terminal, false)];
    while let Some((cid, in_file)) = stack.pop() {
        if !seen.insert(cid.hash().to_bytes()) {
            continue;
        }
        if seen.len() > MAX_CAR_BLOCKS {
            bail!("the car of {root} would hold more than {MAX_CAR_BLOCKS} blocks; ask for a smaller dag-scope");
        }
        if !plan.dag_allowed && !gw.servable.allows_indexed(store, &cid)? {
            bail!("block {cid} under {} is not served by this node (serve policy)", plan.terminal);
        }
        let block = store.get(&cid).with_context(|| format!("cannot read block {cid} under {}", plan.terminal))?;
        write_section(w, &cid, block.data())?;
        let (links, file) = scope_links(&block, plan.scope, in_file)?;
        stack.extend(links.into_iter().rev().map(|l| (l, file)));
    }
    Ok(())
}

/// The `Accept` header [`fetch_car`] sends.
const CAR_ACCEPT: &str = "application/vnd.ipld.car; version=1; order=dfs; dups=n";

/// Gets `cid`'s blocks from a trustless gateway at `base` (e.g.
/// "http://127.0.0.1:5001"), as a CAR with `dag-scope` `scope`, verifying
/// every block against its CID; bounded: at most `max_bytes` read and
/// [`MAX_CAR_BLOCKS`] blocks.
///
/// Beyond the hashes, every block must belong to the DAG: the first is
/// `cid`, each later one is linked from a block before it, so a gateway
/// cannot slip in blocks nobody asked for. With [`Scope::All`] and
/// [`Scope::Block`] the answer must also be complete.
pub async fn fetch_car(
    base: &str,
    cid: &shoal_storage::Cid,
    scope: Scope,
    max_bytes: u64,
    timeout: std::time::Duration,
) -> anyhow::Result<Vec<shoal_storage::Block>> {
    let base = base.trim_end_matches('/').to_owned();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("gateway url {base:?} is not http(s); give one like http://127.0.0.1:5001 to fetch {cid}");
    }
    let cid = *cid;
    tokio::task::spawn_blocking(move || fetch_car_blocking(&base, &cid, scope, max_bytes, timeout))
        .await
        .with_context(|| format!("the thread fetching {cid} from a gateway panicked"))?
}

fn fetch_car_blocking(
    base: &str,
    cid: &Cid,
    scope: Scope,
    max_bytes: u64,
    timeout: Duration,
) -> anyhow::Result<Vec<Block>> {
    let url = format!("{base}/ipfs/{cid}?format=car&dag-scope={}", scope.as_str());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .build()
        .into();
    let resp = agent
        .get(&url)
        .header("accept", CAR_ACCEPT)
        .call()
        .with_context(|| format!("cannot get {cid} from gateway {base}; check that it runs and is reachable"))?;
    let status = resp.status();
    let ctype = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut body = resp.into_body();
    if !status.is_success() {
        let mut text = String::new();
        let _ = body.as_reader().take(4096).read_to_string(&mut text);
        bail!("gateway {base} answered {status} for {cid}: {}", text.trim());
    }
    if !ctype.starts_with(CAR_MEDIA) {
        bail!("gateway {base} answered {cid} with content type {ctype:?}, not a car; is it a trustless gateway?");
    }
    let reader = body.into_with_config().limit(max_bytes).reader();
    read_car(reader, cid, scope, base).map_err(|e| {
        // ureq reports its body limit as an i/o error with this text.
        let too_big = e.chain().any(|c| c.to_string().contains("larger than request limit"));
        if too_big {
            anyhow::anyhow!(
                "gateway {base} sent more than {max_bytes} bytes for {cid}; raise the limit or ask a smaller dag-scope"
            )
        } else {
            e
        }
    })
}

/// Reads and checks a gateway's CAR for `root` (see [`fetch_car`]).
fn read_car(r: impl Read, root: &Cid, scope: Scope, base: &str) -> anyhow::Result<Vec<Block>> {
    let mut r = std::io::BufReader::with_capacity(1 << 16, r);
    let from = || format!("the car of {root} from gateway {base}");
    let hlen = shoal_storage::car::read_varint(&mut r)
        .with_context(|| format!("cannot read {}", from()))?
        .with_context(|| format!("{} is empty", from()))?;
    if hlen == 0 || hlen > MAX_CAR_HEADER {
        bail!("{} has a header of {hlen} bytes (1..={MAX_CAR_HEADER}): not a car", from());
    }
    // The roots are not checked: the spec leaves them to the gateway, and
    // the blocks themselves are (the first must be `root`).
    std::io::copy(&mut (&mut r).take(hlen), &mut std::io::sink()).with_context(|| format!("cannot read {}", from()))?;
    let mut blocks = Vec::new();
    let mut expected: HashSet<Vec<u8>> = HashSet::from([root.hash().to_bytes()]);
    let mut got: HashSet<Vec<u8>> = HashSet::new();
    while let Some(len) = shoal_storage::car::read_varint(&mut r).with_context(|| format!("{} is truncated", from()))? {
        if len == 0 || len > shoal_storage::car::MAX_SECTION {
            bail!("{} has a block section of {len} bytes (1..={})", from(), shoal_storage::car::MAX_SECTION);
        }
        if blocks.len() >= MAX_CAR_BLOCKS {
            bail!("{} holds more than {MAX_CAR_BLOCKS} blocks; ask a smaller dag-scope", from());
        }
        let mut section = vec![0u8; len as usize];
        r.read_exact(&mut section).with_context(|| format!("{} ends inside a block: the gateway broke off", from()))?;
        let mut cursor = std::io::Cursor::new(&section[..]);
        let cid = Cid::read_bytes(&mut cursor).with_context(|| format!("{} has a malformed cid", from()))?;
        let data = section[usize::try_from(cursor.position()).unwrap_or(section.len())..].to_vec();
        let key = cid.hash().to_bytes();
        if blocks.is_empty() && key != root.hash().to_bytes() {
            bail!("{} starts with block {cid}, not {root}", from());
        }
        if !expected.contains(&key) {
            bail!("{} holds block {cid}, which no block before it links to: not part of the dag", from());
        }
        let block = Block::verified(cid, data).map_err(|_| {
            anyhow::anyhow!(
                "gateway {base} sent block {cid} (for {root}) whose bytes do not match its cid: the gateway is \
                 corrupt or lying; use another gateway"
            )
        })?;
        if got.insert(key) {
            if block.cid().codec() == DAG_PB {
                let pb = PbNode::decode(block.data())
                    .map_err(|e| anyhow::anyhow!("block {cid} from gateway {base} is not valid dag-pb: {e}"))?;
                expected.extend(pb.links.iter().map(|l| l.hash.hash().to_bytes()));
            }
            blocks.push(block);
        }
    }
    if blocks.is_empty() {
        bail!("{} holds no block", from());
    }
    if scope == Scope::All {
        if let Some(missing) = expected.iter().find(|k| !got.contains(*k)) {
            bail!(
                "{} is incomplete: a block with multihash {} is linked but missing; the gateway does not hold \
                 the whole dag",
                from(),
                hex::encode(missing)
            );
        }
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::response::IntoResponse;
    use shoal_storage::importer::{Importer, Options};
    use shoal_storage::{CidVersion, MemStore, PinMode};
    use tower::ServiceExt;

    fn gateway(store: &Arc<MemStore>, policy: Policy) -> Gateway {
        Gateway {
            store: store.clone(),
            servable: Arc::new(Servable::new(policy)),
            streams: Arc::new(tokio::sync::Semaphore::new(crate::api::MAX_CAR_EXPORTS)),
        }
    }

    struct Answer {
        status: u16,
        headers: HeaderMap,
        body: Vec<u8>,
    }

    impl Answer {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    async fn send(gw: &Gateway, method: &str, uri: &str, accept: Option<&str>) -> Answer {
        let mut req = axum::http::Request::builder().method(method).uri(uri).header("host", "127.0.0.1");
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let r = router(gw.clone()).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = axum::body::to_bytes(r.into_body(), 256 << 20).await.unwrap().to_vec();
        Answer { status, headers, body }
    }

    async fn get(gw: &Gateway, uri: &str) -> Answer {
        send(gw, "GET", uri, None).await
    }

    fn pinned(store: &MemStore, cid: &Cid) {
        shoal_storage::pin::add(store, cid, PinMode::Recursive).unwrap();
    }

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A directory `top` with `sub/file.txt`, `big.bin` (several blocks)
    /// and `note`, pinned.
    fn tree(store: &MemStore) -> (Cid, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        std::fs::create_dir_all(top.join("sub")).unwrap();
        std::fs::write(top.join("sub/file.txt"), b"hello gateway").unwrap();
        std::fs::write(top.join("big.bin"), random(600_000, 3)).unwrap();
        std::fs::write(top.join("note"), b"note").unwrap();
        let root = Importer::new(store, Options::default()).add_path(&top).unwrap().root;
        pinned(store, &root);
        (root, dir)
    }

    /// The blocks of a CAR body, checked by the client's reader.
    fn car_blocks(body: &[u8], root: &Cid, scope: Scope) -> Vec<Block> {
        read_car(body, root, scope, "test").unwrap()
    }

    #[tokio::test]
    async fn a_raw_block_comes_back_verified_with_the_gateway_headers() {
        let store = Arc::new(MemStore::new());
        let (root, _dir) = tree(&store);
        let gw = gateway(&store, Policy::Pinned);
        for (uri, accept) in [
            (format!("/ipfs/{root}"), Some(RAW_MEDIA)),
            (format!("/ipfs/{root}?format=raw"), None),
            (format!("/ipfs/{root}?format=raw"), Some("text/html")),
        ] {
            let a = send(&gw, "GET", &uri, accept).await;
            assert_eq!(a.status, 200, "{uri}: {}", a.text());
            Block::verified(root, a.body.clone()).unwrap();
            assert_eq!(a.headers[header::CONTENT_TYPE], RAW_CONTENT_TYPE);
            assert_eq!(a.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(a.headers[header::CACHE_CONTROL], CACHE_CONTROL);
            assert_eq!(a.headers["x-ipfs-path"], format!("/ipfs/{root}").as_str());
            assert!(a.headers[header::CONTENT_DISPOSITION].to_str().unwrap().starts_with("attachment"));
            let etag = a.headers[header::ETAG].to_str().unwrap().to_owned();
            // The same request with its tag: not modified.
            let again = axum::http::Request::get(uri.as_str())
                .header("host", "127.0.0.1")
                .header("accept", RAW_MEDIA)
                .header("if-none-match", &etag)
                .body(Body::empty())
                .unwrap();
            assert_eq!(router(gw.clone()).oneshot(again).await.unwrap().status(), 304);
        }
        let head = send(&gw, "HEAD", &format!("/ipfs/{root}?format=raw"), None).await;
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
    }

    #[tokio::test]
    async fn a_car_of_a_multi_block_file_rebuilds_the_file() {
        let store = Arc::new(MemStore::new());
        let data = random(3 << 20, 7);
        let opts = Options { chunk_size: 16 << 10, ..Options::with_version(CidVersion::V1) };
        let root = Importer::new(&*store, opts).add_bytes(&data).unwrap().root;
        pinned(&store, &root);
        let gw = gateway(&store, Policy::Pinned);
        let a = send(&gw, "GET", &format!("/ipfs/{root}"), Some("application/vnd.ipld.car; version=1")).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.headers[header::CONTENT_TYPE], CAR_CONTENT_TYPE);
        let fresh = MemStore::new();
        let stats = shoal_storage::car::import(&fresh, a.body.as_slice(), "answer").unwrap();
        assert_eq!(stats.roots, vec![root]);
        assert_eq!(stats.pinned, vec![root], "the car holds the whole dag");
        assert!(stats.blocks > 190, "{} blocks", stats.blocks);
        let mut out = Vec::new();
        shoal_storage::exporter::cat(&fresh, &root, &mut out).unwrap();
        assert!(out == data, "the file read back from the car differs");
        // Depth first from the root, as the content type says.
        let blocks = car_blocks(&a.body, &root, Scope::All);
        assert_eq!(blocks[0].cid(), &root);
        assert_eq!(blocks.len() as u64, stats.blocks);
    }

    #[tokio::test]
    async fn scopes_block_and_entity() {
        let store = Arc::new(MemStore::new());
        let (root, _dir) = tree(&store);
        let gw = gateway(&store, Policy::Pinned);
        let a = get(&gw, &format!("/ipfs/{root}?format=car&dag-scope=block")).await;
        assert_eq!(a.status, 200, "{}", a.text());
        let blocks = car_blocks(&a.body, &root, Scope::Block);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].cid(), &root);
        // Entity on a directory: its own block, none of its entries.
        let a = get(&gw, &format!("/ipfs/{root}?format=car&dag-scope=entity")).await;
        assert_eq!(car_blocks(&a.body, &root, Scope::Entity).len(), 1);
        // Entity on a file: the whole file.
        let a = get(&gw, &format!("/ipfs/{root}/big.bin?format=car&dag-scope=entity")).await;
        assert_eq!(a.status, 200, "{}", a.text());
        let fresh = MemStore::new();
        shoal_storage::car::import(&fresh, a.body.as_slice(), "answer").unwrap();
        let big = shoal_storage::exporter::resolve(&fresh, &root, &["big.bin".into()]).unwrap();
        let mut out = Vec::new();
        shoal_storage::exporter::cat(&fresh, &big, &mut out).unwrap();
        assert_eq!(out, random(600_000, 3));
        assert!(shoal_storage::exporter::ls(&fresh, &root).is_ok());
        assert!(
            shoal_storage::exporter::resolve(&fresh, &root, &["sub".into(), "file.txt".into()]).is_err(),
            "the other entries stay out"
        );
    }

    #[tokio::test]
    async fn a_path_car_carries_the_blocks_that_resolve_the_path() {
        let store = Arc::new(MemStore::new());
        let (root, _dir) = tree(&store);
        let gw = gateway(&store, Policy::Pinned);
        let a = send(&gw, "GET", &format!("/ipfs/{root}/sub/file.txt"), Some(CAR_MEDIA)).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.headers["x-ipfs-path"], format!("/ipfs/{root}/sub/file.txt").as_str());
        let fresh = MemStore::new();
        let stats = shoal_storage::car::import(&fresh, a.body.as_slice(), "answer").unwrap();
        assert_eq!(stats.roots, vec![root]);
        assert_eq!(stats.blocks, 3, "top, sub and the file");
        let file = shoal_storage::exporter::resolve(&fresh, &root, &["sub".into(), "file.txt".into()]).unwrap();
        let mut out = Vec::new();
        shoal_storage::exporter::cat(&fresh, &file, &mut out).unwrap();
        assert_eq!(out, b"hello gateway");
        // A trailing slash names the directory itself.
        let a = get(&gw, &format!("/ipfs/{root}/sub/?format=car&dag-scope=block")).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(car_blocks(&a.body, &root, Scope::Entity).len(), 2);
        // No such entry: 404 before any byte.
        let a = get(&gw, &format!("/ipfs/{root}/sub/nope?format=car")).await;
        assert_eq!(a.status, 404, "{}", a.text());
        assert!(a.text().contains("nope"), "{}", a.text());
    }

    #[tokio::test]
    async fn a_hamt_path_carries_only_the_shards_on_its_hash_path() {
        let store = Arc::new(MemStore::new());
        let dir = tempfile::tempdir().unwrap();
        // Past Kubo's 256 KiB sharding threshold: 3,000 long names.
        let names: Vec<String> = (0..3000).map(|i| format!("{i:05}-{}", "n".repeat(90))).collect();
        for n in &names {
            std::fs::write(dir.path().join(n), n.as_bytes()).unwrap();
        }
        let root = Importer::new(&*store, Options::default()).add_path(dir.path()).unwrap().root;
        assert_eq!(shoal_storage::exporter::stat(&*store, &root).unwrap(), shoal_storage::exporter::Kind::Sharded);
        pinned(&store, &root);
        let gw = gateway(&store, Policy::Pinned);
        let a = get(&gw, &format!("/ipfs/{root}?format=car&dag-scope=entity")).await;
        let shards = car_blocks(&a.body, &root, Scope::Entity);
        assert!(shards.len() > 1, "a sharded directory has several shard nodes");
        assert!(shards.iter().all(|b| decode(b).unwrap().is_some_and(|(_, u)| u.kind == DataType::HamtShard)));
        let name = &names[1234];
        let a = get(&gw, &format!("/ipfs/{root}/{name}?format=car&dag-scope=block")).await;
        assert_eq!(a.status, 200, "{}", a.text());
        let fresh = MemStore::new();
        let stats = shoal_storage::car::import(&fresh, a.body.as_slice(), "answer").unwrap();
        assert!(
            stats.blocks <= 4 && (stats.blocks as usize) < shards.len(),
            "{} blocks: only the hash path",
            stats.blocks
        );
        let path_blocks = car_blocks(&a.body, &root, Scope::Block);
        let file = path_blocks.last().unwrap().cid();
        let mut out = Vec::new();
        shoal_storage::exporter::cat(&fresh, file, &mut out).unwrap();
        assert_eq!(out, name.as_bytes());
    }

    #[tokio::test]
    async fn unknown_and_unpinned_blocks_are_not_found_and_nothing_is_fetched() {
        let store = Arc::new(MemStore::new());
        let (root, _dir) = tree(&store);
        let cached = Block::new(CidVersion::V1, RAW, b"cached, never pinned".to_vec());
        store.put(&cached).unwrap();
        let unknown = Block::new(CidVersion::V1, RAW, b"on no node at all".to_vec());
        let gw = gateway(&store, Policy::Pinned);
        for c in [cached.cid(), unknown.cid()] {
            for q in ["format=raw", "format=car"] {
                let a = get(&gw, &format!("/ipfs/{c}?{q}")).await;
                assert_eq!(a.status, 404, "{c} {q}: {}", a.text());
                assert!(a.text().contains(&c.to_string()), "{}", a.text());
                assert!(a.text().contains("does not serve blocks it has not pinned"), "{}", a.text());
            }
        }
        // Unpinned, the tree is refused as a whole and by its parts.
        store.pin_rm(&root).unwrap();
        assert_eq!(get(&gw, &format!("/ipfs/{root}/sub/file.txt?format=car")).await.status, 404);
        // Under `all` the cached block is served, the unknown one is not.
        let all = gateway(&store, Policy::All);
        assert_eq!(get(&all, &format!("/ipfs/{}?format=raw", cached.cid())).await.status, 200);
        assert_eq!(get(&all, &format!("/ipfs/{}?format=raw", unknown.cid())).await.status, 404);
        let off = gateway(&store, Policy::Off);
        assert_eq!(get(&off, &format!("/ipfs/{}?format=raw", cached.cid())).await.status, 404);
    }

    #[tokio::test]
    async fn bad_requests_are_400_and_other_formats_406() {
        let store = Arc::new(MemStore::new());
        let (root, _dir) = tree(&store);
        let gw = gateway(&store, Policy::Pinned);
        let cbor = Cid::new_v1(shoal_storage::block::DAG_CBOR, *root.hash());
        let cases = [
            ("/ipfs/notacid?format=raw".to_owned(), "notacid"),
            (format!("/ipfs/{cbor}?format=car"), "dag-cbor"),
            ("/ipfs/bafkqaaa?format=raw".to_owned(), "multihash 0x0"),
            (format!("/ipfs/{root}/sub/../note?format=car"), ".."),
            (format!("/ipfs/{root}/./note?format=car"), "'.'"),
            (format!("/ipfs/{root}/sub%2Ffile.txt?format=car"), "encoded '/'"),
            (format!("/ipfs/{root}/no%00te?format=car"), "nul"),
            (format!("/ipfs/{root}/%2e%2e?format=car"), ".."),
            (format!("/ipfs/{root}/sub//file.txt?format=car"), "empty"),
            (format!("/ipfs/{root}/bad%zzescape?format=car"), "%-escape"),
            (format!("/ipfs/{root}?format=car&dag-scope=everything"), "dag-scope"),
            (format!("/ipfs/{root}?format=html"), "format"),
            (format!("/ipfs/{root}/note?format=raw"), "ask for a car"),
            (format!("/ipfs/{root}?format=car&car-version=2"), "version"),
            (format!("/ipfs/{root}?format=car&entity-bytes=0:10"), "entity-bytes"),
        ];
        for (uri, says) in cases {
            let a = get(&gw, &uri).await;
            assert_eq!(a.status, 400, "{uri}: {}", a.text());
            assert!(a.text().contains(says), "{uri}: {}", a.text());
        }
        for accept in [None, Some("text/html"), Some("*/*"), Some("application/vnd.ipld.car;q=0")] {
            let a = send(&gw, "GET", &format!("/ipfs/{root}"), accept).await;
            assert_eq!(a.status, 406, "{accept:?}: {}", a.text());
            assert!(a.text().contains("trustless gateway") && a.text().contains(CAR_MEDIA), "{}", a.text());
        }
    }

    #[tokio::test]
    async fn car_streams_are_limited() {
        let store = Arc::new(MemStore::new());
        let (root, _dir) = tree(&store);
        let gw = gateway(&store, Policy::Pinned);
        let _held = gw.streams.clone().acquire_many_owned(crate::api::MAX_CAR_EXPORTS as u32).await.unwrap();
        let a = get(&gw, &format!("/ipfs/{root}?format=car")).await;
        assert_eq!(a.status, 503, "{}", a.text());
        // A raw block holds no stream.
        assert_eq!(get(&gw, &format!("/ipfs/{root}?format=raw")).await.status, 200);
    }

    #[tokio::test]
    async fn the_node_api_serves_the_gateway_without_the_token() {
        let home = tempfile::tempdir().unwrap();
        let store = Arc::new(MemStore::new());
        let (root, _dir) = tree(&store);
        let deps = crate::Deps {
            home: home.path().to_owned(),
            store: store.clone(),
            key: libp2p::identity::Keypair::generate_ed25519(),
            clock: crate::system_clock(),
            transport: crate::Transport::Memory,
            api: None,
        };
        let config = crate::Config { compute: false, listen: "/memory/0".parse().unwrap(), ..crate::Config::default() };
        let running = crate::start(config, deps).await.unwrap();
        let policy = crate::guard::Policy { token: Some("s3cret".into()), ..Default::default() };
        let app = crate::api::router(running.node.clone(), policy);
        let call = |uri: String, token: bool| {
            let app = app.clone();
            async move {
                let mut req = axum::http::Request::get(uri).header("host", "127.0.0.1");
                if token {
                    req = req.header("authorization", "Bearer s3cret");
                }
                let req = req.body(Body::empty()).unwrap();
                let r = app.oneshot(req).await.unwrap();
                let status = r.status().as_u16();
                (status, axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap())
            }
        };
        let (status, body) = call(format!("/ipfs/{root}?format=raw"), false).await;
        assert_eq!(status, 200);
        Block::verified(root, body.to_vec()).unwrap();
        let (status, _) = call("/v1/jobs".into(), false).await;
        assert_eq!(status, 401, "the rest of the api still needs the token");
        let doc = call("/openapi.json".into(), true).await.1;
        let doc: serde_json::Value = serde_json::from_slice(&doc).unwrap_or_default();
        assert_eq!(doc["paths"]["/ipfs/{cid}"]["get"]["operationId"], "gateway_get", "{doc}");
        drop(app);
        running.stop().await.unwrap();
    }

    /// Serves `app` on a loopback port; returns its base url.
    async fn listen(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn the_client_fetches_and_verifies_a_car() {
        let store = Arc::new(MemStore::new());
        let (root, _dir) = tree(&store);
        let base = listen(router(gateway(&store, Policy::Pinned))).await;
        let t = Duration::from_secs(30);
        let blocks = fetch_car(&base, &root, Scope::All, 64 << 20, t).await.unwrap();
        let mut want = Vec::new();
        shoal_storage::exporter::walk(&*store, &root, &mut |c, _| {
            want.push(*c);
            Ok(())
        })
        .unwrap();
        assert_eq!(blocks.iter().map(|b| *b.cid()).collect::<Vec<_>>(), want, "the whole dag, depth first");
        assert_eq!(fetch_car(&base, &root, Scope::Block, 1 << 20, t).await.unwrap().len(), 1);
        // Too small a budget, an unknown cid, a gateway that is not http.
        let err = format!("{:#}", fetch_car(&base, &root, Scope::All, 1000, t).await.unwrap_err());
        assert!(err.contains("more than 1000 bytes") && err.contains(&root.to_string()), "{err}");
        let unknown = Block::new(CidVersion::V1, RAW, b"nowhere".to_vec());
        let err = format!("{:#}", fetch_car(&base, unknown.cid(), Scope::All, 1 << 20, t).await.unwrap_err());
        assert!(err.contains("404") && err.contains(&base), "{err}");
        let err = format!("{:#}", fetch_car("ftp://x", &root, Scope::All, 1 << 20, t).await.unwrap_err());
        assert!(err.contains("not http"), "{err}");
    }

    #[tokio::test]
    async fn the_client_refuses_a_corrupt_block_and_a_stranger() {
        let good = Block::new(CidVersion::V1, RAW, b"the real bytes".to_vec());
        let stranger = Block::new(CidVersion::V1, RAW, b"not asked for".to_vec());
        let root = *good.cid();
        let car = |sections: Vec<(Cid, Vec<u8>)>| {
            let mut out = Vec::new();
            let h = car_header(&root);
            write_varint(&mut out, h.len() as u64).unwrap();
            out.extend_from_slice(&h);
            for (c, d) in sections {
                write_section(&mut out, &c, &d).unwrap();
            }
            out
        };
        let corrupt = car(vec![(root, b"the fake bytes".to_vec())]);
        let extra = car(vec![(root, good.data().to_vec()), (*stranger.cid(), stranger.data().to_vec())]);
        let serve_car =
            |bytes: Vec<u8>| move || async move { ([(header::CONTENT_TYPE, CAR_CONTENT_TYPE)], bytes).into_response() };
        let app = Router::new()
            .route("/ipfs/{cid}", axum::routing::get(serve_car(corrupt)))
            .route("/stranger/ipfs/{cid}", axum::routing::get(serve_car(extra)));
        let base = listen(app).await;
        let t = Duration::from_secs(30);
        let err = format!("{:#}", fetch_car(&base, &root, Scope::All, 1 << 20, t).await.unwrap_err());
        assert!(err.contains(&root.to_string()) && err.contains(&base) && err.contains("do not match"), "{err}");
        // Right bytes, followed by a block that nothing links to.
        let err =
            format!("{:#}", fetch_car(&format!("{base}/stranger"), &root, Scope::All, 1 << 20, t).await.unwrap_err());
        assert!(err.contains(&stranger.cid().to_string()) && err.contains("not part of the dag"), "{err}");
    }
}
