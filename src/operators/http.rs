//! `HttpOperator` and `HttpSensor`: one HTTP request, made as Airflow's `HttpHook.run` makes it.
//!
//! The base URL comes from a connection (`http_conn_id`, default `http_default`: its host, port,
//! schema, basic auth from its login and password, default headers from its extra), or the
//! `endpoint` is a full URL. `GET` sends `data` as the query, `HEAD` sends none, the other methods
//! as the body (a map as JSON). A status of 400 or more is an error, as `raise_for_status`; its
//! body's head goes to the log (bounded, secrets masked). The operator's XCom is the response text,
//! or what `response_filter` makes of the response; the sensor is done on a good answer, and an
//! error status in its `response_error_codes_allowlist` (404) means "not yet".

use super::closure;
use super::sensor::{self, Poke};
use super::{Outcome, Start, TaskRun, WorkerSettings, mask_secrets, size};
use crate::executor::template::{Connection, TemplateContext, render};
use crate::model::{CallbackRef, HttpSpec, Operator, SensorKind, TimeSpan};
use crate::script::CallArg;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A request's timeout when the task gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Airflow's `HttpHook.default_conn_name`.
pub const DEFAULT_CONN_ID: &str = "http_default";
/// The most of a response body read: a longer answer fails the task rather than fill the memory.
pub const MAX_BODY_BYTES: u64 = 16 << 20;
/// The most of an error response's body written to the log.
const LOGGED_BODY_BYTES: usize = 2048;
/// Keys of a connection's extra that configure the session rather than being headers (Airflow's
/// `HttpHook.get_conn` pops them); rhaiflow does not act on them.
const SESSION_EXTRA_KEYS: &[&str] = &[
    "timeout",
    "allow_redirects",
    "proxies",
    "proxy",
    "stream",
    "verify",
    "verify_ssl",
    "cert",
    "max_redirects",
    "trust_env",
];

/// What both operators send, unrendered, as the spec holds it.
struct RequestSpec<'a> {
    http_conn_id: Option<&'a str>,
    endpoint: &'a str,
    method: &'a str,
    data: Option<&'a serde_json::Value>,
    headers: &'a BTreeMap<String, String>,
    timeout: Duration,
}

/// A request ready to send: rendered, its URL resolved, its connection's auth and headers applied.
#[derive(Debug)]
pub struct Request {
    method: reqwest::Method,
    url: String,
    headers: HeaderMap,
    /// Basic auth from the connection's login and password.
    auth: Option<(String, Option<String>)>,
    body: Option<Vec<u8>>,
    timeout: Duration,
}

/// What came back: status, headers and the body as text (bounded by [`MAX_BODY_BYTES`]).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: BTreeMap<String, String>,
    pub text: String,
}

impl Response {
    fn is_error(&self) -> bool {
        self.status >= 400
    }

    fn status_line(&self) -> String {
        format!("{} {}", self.status, self.reason).trim_end().to_string()
    }

    /// The response as a closure sees it: `status_code`, `reason`, `headers` (lower-case names),
    /// `text`, and `json` (the parsed body, or `()` when the body is not JSON).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::json!({
            "status_code": self.status,
            "reason": self.reason,
            "headers": self.headers,
            "text": self.text,
            "json": serde_json::from_str::<serde_json::Value>(&self.text).unwrap_or(serde_json::Value::Null),
        })
    }
}

pub fn templated(operator: &Operator) -> Vec<&str> {
    let mut texts = Vec::new();
    if let Some(spec) = request_spec(operator) {
        texts.push(spec.endpoint);
        texts.extend(spec.headers.values().map(String::as_str));
        if let Some(data) = spec.data {
            strings_of(data, &mut texts);
        }
    }
    texts
}

pub(super) fn strings_of<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings_of(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| strings_of(v, out)),
        _ => {}
    }
}

fn request_spec(operator: &Operator) -> Option<RequestSpec<'_>> {
    match operator {
        Operator::HttpOperator(spec) => Some(RequestSpec {
            http_conn_id: spec.http_conn_id.as_deref(),
            endpoint: &spec.endpoint,
            method: &spec.method,
            data: spec.data.as_ref(),
            headers: &spec.headers,
            timeout: spec.timeout.map_or(DEFAULT_TIMEOUT, TimeSpan::as_std),
        }),
        Operator::Sensor(sensor) => match &sensor.kind {
            SensorKind::Http { http_conn_id, endpoint, method, headers, request_params, .. } => Some(RequestSpec {
                http_conn_id: http_conn_id.as_deref(),
                endpoint,
                method,
                data: request_params.as_ref(),
                headers,
                // One poke never waits longer than the sensor would.
                timeout: DEFAULT_TIMEOUT.min(sensor.timeout.as_std()).max(Duration::from_secs(1)),
            }),
            _ => None,
        },
        _ => None,
    }
}

/// `HttpOperator`: the request once claimed; its answer checked, filtered, and made the XCom.
pub async fn start(run: Arc<TaskRun>) -> Start {
    let Operator::HttpOperator(spec) = &run.task.task().operator else {
        return Start::Done(Outcome::fail("not an HttpOperator"));
    };
    let spec: HttpSpec = (**spec).clone();
    let request = match prepare(&run) {
        Ok(request) => request,
        Err(reason) => return Start::Done(Outcome::fail(mask_secrets(&reason, &run.env.settings))),
    };
    Start::Later(Box::pin(async move {
        let outcome = execute(&run, &spec, request).await;
        match outcome {
            Outcome::Fail { reason, final_try } => {
                Outcome::Fail { reason: mask_secrets(&reason, &run.env.settings), final_try }
            }
            other => other,
        }
    }))
}

async fn execute(run: &Arc<TaskRun>, spec: &HttpSpec, request: Request) -> Outcome {
    run.log("Calling HTTP method").await;
    let what = format!("`{} {}`", request.method, request.url);
    let response = match send(run, request).await {
        Ok(response) => response,
        Err(reason) => return Outcome::fail(reason),
    };
    if response.is_error() {
        log_error_body(run, &response).await;
        return Outcome::fail(format!("HTTP error: {} from {what}", response.status_line()));
    }
    if let Some(check) = &spec.response_check {
        match call_closure(run, "response_check", check, &response).await {
            Ok(value) if truthy(&value) => {}
            Ok(_) => {
                log_error_body(run, &response).await;
                return Outcome::fail("Response check returned False.");
            }
            Err(reason) => return Outcome::fail(reason),
        }
    }
    let xcom = match &spec.response_filter {
        Some(filter) => match call_closure(run, "response_filter", filter, &response).await {
            // `()`, as Python's `None`, pushes nothing.
            Ok(serde_json::Value::Null) => return Outcome::Success { xcom: None },
            Ok(value) => value,
            Err(reason) => return Outcome::fail(reason),
        },
        None => serde_json::Value::String(response.text),
    };
    let bytes = match &xcom {
        serde_json::Value::String(s) => s.len(),
        other => other.to_string().len(),
    } as u64;
    let cap = run.env.settings.max_xcom_bytes;
    if bytes > cap {
        return Outcome::fail(format!(
            "XCom `return_value` of task `{}` is {}, over `core.max_xcom_bytes` ({})",
            run.task.key.task_id,
            size(bytes),
            size(cap)
        ));
    }
    Outcome::Success { xcom: Some(xcom) }
}

/// `HttpSensor`: the same request each poke.
pub async fn start_sensor(run: Arc<TaskRun>) -> Start {
    if let Err(reason) = prepare(&run) {
        return Start::Done(Outcome::fail(mask_secrets(&reason, &run.env.settings)));
    }
    sensor::start(run, |run| async move {
        match poke(&run).await {
            Poke::Fail(reason) => Poke::Fail(mask_secrets(&reason, &run.env.settings)),
            other => other,
        }
    })
}

/// One poke, as Airflow's `HttpSensor.poke`: done on a good answer that passes `response_check`;
/// not yet on an error status of the allowlist or a false check; any other error fails.
pub async fn poke(run: &Arc<TaskRun>) -> Poke {
    let Operator::Sensor(sensor) = &run.task.task().operator else { return Poke::Fail("not an HttpSensor".into()) };
    let SensorKind::Http { response_check, response_error_codes_allowlist, .. } = &sensor.kind else {
        return Poke::Fail("not an HttpSensor".into());
    };
    let request = match prepare(run) {
        Ok(request) => request,
        Err(reason) => return Poke::Fail(reason),
    };
    let what = format!("`{} {}`", request.method, request.url);
    run.log(&format!("Poking: {}", request.url)).await;
    let response = match send(run, request).await {
        Ok(response) => response,
        Err(reason) => return Poke::Fail(reason),
    };
    if response.is_error() {
        if response_error_codes_allowlist.contains(&response.status) {
            run.log(&format!("HTTP {}: not yet", response.status_line())).await;
            return Poke::NotYet;
        }
        log_error_body(run, &response).await;
        return Poke::Fail(format!("HTTP error: {} from {what}", response.status_line()));
    }
    match response_check {
        None => Poke::Done { xcom: None },
        Some(check) => match call_closure(run, "response_check", check, &response).await {
            Ok(value) if truthy(&value) => Poke::Done { xcom: None },
            Ok(_) => Poke::NotYet,
            Err(reason) => Poke::Fail(reason),
        },
    }
}

/// Renders the spec's templates and resolves its URL and connection.
fn prepare(run: &TaskRun) -> Result<Request, String> {
    let operator = &run.task.task().operator;
    let spec = request_spec(operator).ok_or_else(|| format!("`{}` makes no HTTP request", operator.name()))?;
    build(&spec, &run.ctx, &run.env.settings)
}

fn build(spec: &RequestSpec<'_>, ctx: &TemplateContext, settings: &WorkerSettings) -> Result<Request, String> {
    let endpoint = render("endpoint", spec.endpoint, ctx).map_err(|e| e.to_string())?;
    let mut rendered_headers = Vec::new();
    for (name, value) in spec.headers {
        rendered_headers
            .push((name.clone(), render(&format!("headers.{name}"), value, ctx).map_err(|e| e.to_string())?));
    }
    let data = match spec.data {
        Some(data) => Some(render_json(data, "data", ctx)?),
        None => None,
    };
    let method = reqwest::Method::from_bytes(spec.method.as_bytes())
        .map_err(|_| format!("`method` `{}` is not an HTTP method", spec.method))?;

    let absolute = is_absolute(&endpoint);
    let conn_id = match (spec.http_conn_id, absolute) {
        (Some(id), _) => Some(id),
        (None, false) => Some(DEFAULT_CONN_ID),
        (None, true) => None,
    };
    let conn = match conn_id {
        Some(id) => Some(connection(id, settings)?),
        None => None,
    };
    let mut url = match &conn {
        Some(conn) if !absolute => url_from_endpoint(&base_url(conn)?, &endpoint),
        _ => endpoint.clone(),
    };

    let mut headers = HeaderMap::new();
    if let Some(conn) = &conn {
        for (name, value) in extra_headers(conn)? {
            insert_header(&mut headers, &name, &value, &format!("the extra of connection `{}`", conn.conn_id))?;
        }
    }
    for (name, value) in &rendered_headers {
        insert_header(&mut headers, name, value, "`headers`")?;
    }

    let mut body = None;
    match (method.as_str(), data) {
        (_, None) | ("HEAD", _) => {}
        ("GET", Some(data)) => add_query(&mut url, &data),
        (_, Some(serde_json::Value::String(text))) => body = Some(text.into_bytes()),
        (_, Some(json)) => {
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            body = Some(json.to_string().into_bytes());
        }
    }
    let auth = conn.as_ref().and_then(|c| c.login.clone().filter(|l| !l.is_empty()).map(|l| (l, c.password.clone())));
    reqwest::Url::parse(&url).map_err(|e| format!("`{url}` is not a valid URL ({e})"))?;
    Ok(Request { method, url, headers, auth, body, timeout: spec.timeout })
}

fn is_absolute(endpoint: &str) -> bool {
    let lower = endpoint.get(..8).unwrap_or(endpoint).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn connection(conn_id: &str, settings: &WorkerSettings) -> Result<Connection, String> {
    let uri = settings.connections.get(conn_id).ok_or_else(|| {
        format!(
            "connection `{conn_id}` is not defined: add `[connections.{conn_id}] uri = \"http://host:port\"` to \
             rhaiflow.toml, or give a full URL (`http://…`) as the `endpoint`"
        )
    })?;
    Connection::parse(conn_id, uri)
}

/// Airflow's base URL: the host as written when it holds `://`, else `schema://host` (the schema
/// is the URI's path, `http` by default; a connection of type `https` defaults to `https`), then
/// the port.
fn base_url(conn: &Connection) -> Result<String, String> {
    if conn.host.is_empty() {
        return Err(format!("connection `{}` has no host to send the request to", conn.conn_id));
    }
    let mut base = if conn.host.contains("://") {
        conn.host.clone()
    } else {
        let schema = match conn.schema.as_str() {
            "" if conn.conn_type == "https" => "https",
            "" => "http",
            other => other,
        };
        let host = if conn.host.contains(':') { format!("[{}]", conn.host) } else { conn.host.clone() };
        format!("{schema}://{host}")
    };
    if let Some(port) = conn.port {
        base.push_str(&format!(":{port}"));
    }
    Ok(base)
}

/// Airflow's `HttpHook.url_from_endpoint`.
fn url_from_endpoint(base: &str, endpoint: &str) -> String {
    if !base.is_empty() && !base.ends_with('/') && !endpoint.is_empty() && !endpoint.starts_with('/') {
        format!("{base}/{endpoint}")
    } else {
        format!("{base}{endpoint}")
    }
}

/// The connection's extra as default headers, less the session settings Airflow pops.
fn extra_headers(conn: &Connection) -> Result<Vec<(String, String)>, String> {
    let Some(extra) = conn.extra.as_deref().filter(|e| !e.trim().is_empty()) else { return Ok(Vec::new()) };
    let json: serde_json::Value = serde_json::from_str(extra)
        .map_err(|e| format!("connection `{}`: its extra is not JSON ({e})", conn.conn_id))?;
    let serde_json::Value::Object(map) = json else {
        return Err(format!("connection `{}`: its extra must be a JSON object of headers", conn.conn_id));
    };
    let mut headers = Vec::new();
    for (name, value) in map {
        if SESSION_EXTRA_KEYS.contains(&name.as_str()) {
            continue;
        }
        let value = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => if b { "True" } else { "False" }.to_string(),
            _ => {
                return Err(format!(
                    "connection `{}`: extra key `{name}` is not a header value (a string, number or bool)",
                    conn.conn_id
                ));
            }
        };
        headers.push((name, value));
    }
    Ok(headers)
}

/// A header, replacing one of the same name (names are case-insensitive). The value is never
/// repeated in an error: it may be a token.
fn insert_header(headers: &mut HeaderMap, name: &str, value: &str, place: &str) -> Result<(), String> {
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("header `{name}` in {place} is not a valid HTTP header name"))?;
    let value = HeaderValue::from_str(value)
        .map_err(|_| format!("header `{name}` in {place} has a value that is not a valid HTTP header value"))?;
    headers.insert(header, value);
    Ok(())
}

/// `data` of a GET, as `requests`' `params`: a map's pairs (an array repeats its key, `()` is left
/// out), or a string appended as it is.
fn add_query(url: &mut String, data: &serde_json::Value) {
    let query = match data {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(map) => {
            // Encoded as `urlencode` does (a space is `+`), through a scratch URL's query.
            let mut scratch = reqwest::Url::parse("http://localhost/").expect("a constant URL parses");
            let mut pairs = scratch.query_pairs_mut();
            for (key, value) in map {
                let values = match value {
                    serde_json::Value::Array(items) => items.iter().collect(),
                    other => vec![other],
                };
                for value in values {
                    match value {
                        serde_json::Value::Null => {}
                        serde_json::Value::String(s) => drop(pairs.append_pair(key, s)),
                        other => drop(pairs.append_pair(key, &other.to_string())),
                    }
                }
            }
            drop(pairs);
            scratch.query().unwrap_or_default().to_string()
        }
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    if query.is_empty() {
        return;
    }
    let (before, fragment) = match url.split_once('#') {
        Some((b, f)) => (b.to_string(), Some(f.to_string())),
        None => (url.clone(), None),
    };
    let joiner = if before.contains('?') { if before.ends_with(['?', '&']) { "" } else { "&" } } else { "?" };
    *url = format!("{before}{joiner}{query}");
    if let Some(fragment) = fragment {
        url.push('#');
        url.push_str(&fragment);
    }
}

/// Renders every string of templated data, as Airflow renders a dict's values.
pub(super) fn render_json(
    value: &serde_json::Value,
    field: &str,
    ctx: &TemplateContext,
) -> Result<serde_json::Value, String> {
    Ok(match value {
        serde_json::Value::String(s) => serde_json::Value::String(render(field, s, ctx).map_err(|e| e.to_string())?),
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| render_json(v, &format!("{field}[{i}]"), ctx))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, &format!("{field}.{k}"), ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Sends the request; the answer's body is read up to [`MAX_BODY_BYTES`].
async fn send(run: &TaskRun, request: Request) -> Result<Response, String> {
    let Request { method, url, headers, auth, body, timeout } = request;
    run.log(&format!("Sending '{method}' to url: {url}")).await;
    let what = format!("`{method} {url}`");
    let mut builder = run.env.http.request(method, &url).headers(headers).timeout(timeout);
    if let Some((login, password)) = auth {
        builder = builder.basic_auth(login, password);
    }
    if let Some(body) = body {
        builder = builder.body(body);
    }
    let failed = |e: reqwest::Error| request_error(&what, &e, timeout);
    let mut response = builder.send().await.map_err(failed)?;
    let status = response.status();
    // A repeated header is one value, joined with `, `, as `requests` shows it.
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let too_big = |bytes: u64| {
        format!("the answer to {what} is over {} ({}): too big to read", size(MAX_BODY_BYTES), size(bytes))
    };
    if let Some(length) = response.content_length().filter(|l| *l > MAX_BODY_BYTES) {
        return Err(too_big(length));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > MAX_BODY_BYTES {
            return Err(too_big(bytes.len() as u64));
        }
    }
    let response = Response {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("").to_string(),
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    };
    run.log(&format!("HTTP {}, {}", response.status_line(), size(bytes.len() as u64))).await;
    Ok(response)
}

fn request_error(what: &str, e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!(
            "{what} timed out after {} (the request's `timeout`)",
            TimeSpan::from_millis(timeout.as_millis() as u64)
        );
    }
    // The top error repeats the URL; its causes say what happened (`tcp connect error: Connection refused`).
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        causes.push(inner.to_string());
        source = inner.source();
    }
    let reason = if causes.is_empty() { e.to_string() } else { causes.join(": ") };
    if e.is_connect() { format!("could not connect for {what}: {reason}") } else { format!("{what} failed: {reason}") }
}

/// The status line and the head of the body of an answer that failed, bounded.
async fn log_error_body(run: &TaskRun, response: &Response) {
    let mut text = format!("HTTP error: {}", response.status_line());
    if response.text.is_empty() {
        text.push_str("\n(empty response body)");
    } else {
        let mut end = response.text.len().min(LOGGED_BODY_BYTES);
        while !response.text.is_char_boundary(end) {
            end -= 1;
        }
        text.push('\n');
        text.push_str(&response.text[..end]);
        if end < response.text.len() {
            text.push_str(&format!("\n… ({} more of the body not shown)", size((response.text.len() - end) as u64)));
        }
    }
    run.log(&text).await;
}

/// Whether a closure's answer reads as true, as Python's `bool(...)`.
fn truthy(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        serde_json::Value::String(s) => !s.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
    }
}

/// Calls a `response_check` / `response_filter` closure with the response (and `ctx`, when it
/// takes a second parameter: Airflow passes the context as keyword arguments). A failure names
/// the closure and its place in the DAG file, and says so when the body is not JSON (the usual
/// reason a closure reading `response.json` fails).
async fn call_closure(
    run: &Arc<TaskRun>,
    key: &str,
    callable: &CallbackRef,
    response: &Response,
) -> Result<serde_json::Value, String> {
    let args = vec![CallArg::Json(response.to_value()), closure::context(run)];
    closure::call(run, callable, args).await.map_err(|failure| {
        let mut reason = format!("`{key}` failed: {failure}");
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&response.text) {
            let head: String = response.text.chars().take(80).collect();
            reason.push_str(&format!(
                " (the response body is not JSON: {e}; it starts {head:?}, so `response.json` is `()`)"
            ));
        }
        reason
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(uri: &str) -> Connection {
        Connection::parse("c", uri).unwrap()
    }

    #[test]
    fn base_urls_follow_airflow() {
        assert_eq!(base_url(&conn("http://u:p@example.com:8080")).unwrap(), "http://example.com:8080");
        assert_eq!(base_url(&conn("http://example.com/https")).unwrap(), "https://example.com");
        assert_eq!(base_url(&conn("https://example.com")).unwrap(), "https://example.com");
        assert_eq!(base_url(&conn("http://https%3A%2F%2Fexample.com%2Fapi")).unwrap(), "https://example.com/api");
        assert!(base_url(&conn("http://:80")).is_err());
    }

    #[test]
    fn endpoints_join_as_airflow() {
        assert_eq!(url_from_endpoint("http://h", "a/b"), "http://h/a/b");
        assert_eq!(url_from_endpoint("http://h/", "a"), "http://h/a");
        assert_eq!(url_from_endpoint("http://h", "/a"), "http://h/a");
        assert_eq!(url_from_endpoint("http://h", ""), "http://h");
    }

    #[test]
    fn get_data_becomes_the_query() {
        let mut url = "http://h/p".to_string();
        add_query(&mut url, &serde_json::json!({"a": "x y", "n": 2, "l": [1, 2], "z": null}));
        assert_eq!(url, "http://h/p?a=x+y&l=1&l=2&n=2");
        let mut url = "http://h/p?q=1#f".to_string();
        add_query(&mut url, &serde_json::json!("b=2"));
        assert_eq!(url, "http://h/p?q=1&b=2#f");
    }

    #[test]
    fn extra_gives_headers_but_not_session_settings() {
        let c = conn("http://h?__extra__=%7B%22X-Api%22%3A%22k%22%2C%22timeout%22%3A5%2C%22n%22%3A1%7D");
        assert_eq!(extra_headers(&c).unwrap(), vec![("X-Api".to_string(), "k".to_string()), ("n".into(), "1".into())]);
    }

    #[test]
    fn truthiness_is_pythons() {
        for (v, t) in [
            (serde_json::json!(true), true),
            (serde_json::json!(0), false),
            (serde_json::json!(""), false),
            (serde_json::json!("x"), true),
            (serde_json::json!([]), false),
            (serde_json::Value::Null, false),
        ] {
            assert_eq!(truthy(&v), t, "{v}");
        }
    }
}
