//! The objects of Airflow's template context that are more than data: `ti` (`xcom_pull`,
//! `xcom_push`), `dag_run`, `var.value` / `var.json`, `conn.NAME` (connection URIs parsed as
//! Airflow parses them), and the `macros.random` / `macros.time` / `macros.uuid` modules.

use super::dates::{When, timedelta};
use super::fail;
use minijinja::value::{Kwargs, Object, ObjectRepr, Value, from_args};
use minijinja::{Error, ErrorKind, State};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// XComs a template pushed with `ti.xcom_push(key=..., value=...)`, written when the try is claimed.
#[derive(Debug, Clone, Default)]
pub struct XcomPushes(Arc<Mutex<Vec<(String, serde_json::Value)>>>);

impl XcomPushes {
    /// What templates pushed, one value per key (the last push wins).
    pub fn take(&self) -> Vec<(String, serde_json::Value)> {
        self.0.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
    }

    fn push(&self, key: String, value: serde_json::Value) -> Result<(), Error> {
        let mut pushed = self.0.lock().map_err(|_| fail("xcom_push: internal lock poisoned".into()))?;
        pushed.retain(|(k, _)| *k != key);
        if pushed.len() >= MAX_PUSHES {
            return Err(fail(format!("a task's templates may push at most {MAX_PUSHES} XComs")));
        }
        pushed.push((key, value));
        Ok(())
    }
}

const MAX_PUSHES: usize = 100;
/// Airflow's `xcom.key` column is 512 characters.
const MAX_XCOM_KEY_CHARS: usize = 512;

/// `ti` / `task_instance`.
#[derive(Debug)]
pub struct TaskInstanceObject {
    pub dag_id: String,
    pub task_id: String,
    pub run_id: String,
    pub try_number: u32,
    pub max_tries: u32,
    pub hostname: String,
    pub task: Value,
    /// XComs of the run, oldest first: `(task_id, key, value)`.
    pub xcoms: Vec<(String, String, serde_json::Value)>,
    pub pushes: XcomPushes,
    pub max_xcom_bytes: u64,
}

pub const TI_ATTRIBUTES: &[&str] = &[
    "dag_id",
    "task_id",
    "run_id",
    "try_number",
    "max_tries",
    "hostname",
    "map_index",
    "state",
    "task",
    "xcom_pull",
    "xcom_push",
];

impl TaskInstanceObject {
    /// The newest XCom named `key` of `task_id` (of any task when `None`).
    fn pull_one(&self, task_id: Option<&str>, key: &str) -> Option<Value> {
        self.xcoms
            .iter()
            .rev()
            .find(|(t, k, _)| k == key && task_id.is_none_or(|id| id == t))
            .map(|(_, _, v)| super::json_value(v))
    }

    /// Airflow 2.10's `xcom_pull(task_ids=None, dag_id=None, key='return_value',
    /// include_prior_dates=False, *, map_indexes=None, default=None)`.
    fn xcom_pull(&self, args: &[Value]) -> Result<Value, Error> {
        let (positional, kwargs): (&[Value], Kwargs) = from_args(args)?;
        if positional.len() > 4 {
            return Err(fail(
                "`xcom_pull` takes at most 4 positional arguments (task_ids, dag_id, key, include_prior_dates)".into(),
            ));
        }
        let arg = |i: usize, name: &str| -> Result<Option<Value>, Error> {
            let kw: Option<Value> = kwargs.get(name)?;
            Ok(positional.get(i).cloned().or(kw).filter(|v| !v.is_none()))
        };
        let task_ids = arg(0, "task_ids")?;
        let dag_id = arg(1, "dag_id")?;
        let key = arg(2, "key")?;
        let prior = arg(3, "include_prior_dates")?;
        let default = kwargs.get::<Option<Value>>("default")?.unwrap_or(Value::from(()));
        let _: Option<Value> = kwargs.get("map_indexes")?;
        kwargs.assert_all_used()?;
        if let Some(dag) = dag_id.as_ref().and_then(|d| d.as_str().map(str::to_owned))
            && dag != self.dag_id
        {
            return Err(fail(format!(
                "`xcom_pull` from another DAG (`{dag}`) is not supported: pass the value through `dag_run.conf` or a variable"
            )));
        }
        if prior.is_some_and(|p| p.is_true()) {
            return Err(fail(
                "`xcom_pull(include_prior_dates=True)` is not supported: XComs are read from this run only".into(),
            ));
        }
        let key = match &key {
            Some(k) => k.as_str().ok_or_else(|| fail(format!("an XCom key is a string, not `{k}`")))?.to_string(),
            None => "return_value".to_string(),
        };
        match task_ids {
            None => Ok(self.pull_one(None, &key).unwrap_or(default)),
            Some(one) if one.as_str().is_some() => Ok(self.pull_one(one.as_str(), &key).unwrap_or(default)),
            Some(many) => {
                let mut out = Vec::new();
                for id in many.try_iter()? {
                    let id = id.as_str().ok_or_else(|| fail(format!("a task id is a string, not `{id}`")))?;
                    out.extend(self.pull_one(Some(id), &key));
                }
                Ok(Value::from(out))
            }
        }
    }

    /// `xcom_push(key, value)`: recorded now, written as this task's XCom when its try starts (as
    /// Airflow writes it while rendering); renders as nothing.
    fn xcom_push(&self, args: &[Value]) -> Result<Value, Error> {
        let (key, value, kwargs): (Option<Value>, Option<Value>, Kwargs) = from_args(args)?;
        let key = key.or(kwargs.get("key")?).ok_or_else(|| fail("`xcom_push` needs `key=`".into()))?;
        let value = value.or(kwargs.get("value")?).ok_or_else(|| fail("`xcom_push` needs `value=`".into()))?;
        let _: Option<Value> = kwargs.get("execution_date")?;
        kwargs.assert_all_used()?;
        let key = key.as_str().ok_or_else(|| fail(format!("an XCom key is a string, not `{key}`")))?.to_string();
        if key.is_empty() || key.chars().count() > MAX_XCOM_KEY_CHARS {
            return Err(fail(format!("an XCom key has 1 to {MAX_XCOM_KEY_CHARS} characters")));
        }
        // A date or other object is stored as it renders (`2024-01-01T00:00:00+00:00`).
        let json = if value.as_object().is_some_and(|o| matches!(o.repr(), ObjectRepr::Plain)) {
            serde_json::Value::String(value.to_string())
        } else {
            serde_json::to_value(&value).map_err(|e| fail(format!("XCom `{key}` cannot be stored: {e}")))?
        };
        let bytes = json.to_string().len() as u64;
        if bytes > self.max_xcom_bytes {
            return Err(fail(format!(
                "XCom `{key}` is {bytes} bytes, over `core.max_xcom_bytes` ({})",
                self.max_xcom_bytes
            )));
        }
        self.pushes.push(key, json)?;
        Ok(Value::from(""))
    }
}

impl fmt::Display for TaskInstanceObject {
    /// Airflow's repr: `<TaskInstance: etl.load manual__x [running]>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<TaskInstance: {}.{} {} [running]>", self.dag_id, self.task_id, self.run_id)
    }
}

impl Object for TaskInstanceObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(match key.as_str()? {
            "dag_id" => Value::from(self.dag_id.clone()),
            "task_id" => Value::from(self.task_id.clone()),
            "run_id" => Value::from(self.run_id.clone()),
            "try_number" => Value::from(self.try_number),
            "max_tries" => Value::from(self.max_tries),
            "hostname" => Value::from(self.hostname.clone()),
            "map_index" => Value::from(-1),
            "state" => Value::from("running"),
            "task" => self.task.clone(),
            _ => return None,
        })
    }

    fn call_method(self: &Arc<Self>, _state: &mut State<'_, '_>, method: &str, args: &[Value]) -> Result<Value, Error> {
        match method {
            "xcom_pull" => self.xcom_pull(args),
            "xcom_push" => self.xcom_push(args),
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_ref(), f)
    }
}

/// `dag_run`.
#[derive(Debug)]
pub struct DagRunObject {
    pub dag_id: String,
    pub run_id: String,
    pub run_type: String,
    pub logical_date: When,
    pub data_interval_start: When,
    pub data_interval_end: When,
    pub conf: Value,
}

pub const DAG_RUN_ATTRIBUTES: &[&str] = &[
    "dag_id",
    "run_id",
    "run_type",
    "logical_date",
    "execution_date",
    "data_interval_start",
    "data_interval_end",
    "conf",
    "external_trigger",
    "state",
];

impl fmt::Display for DagRunObject {
    /// Airflow's repr: `<DagRun etl @ 2024-01-01 00:00:00+00:00: manual__…, state:running, …>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<DagRun {} @ {}: {}, state:running, externally triggered: {}>",
            self.dag_id,
            self.logical_date.isoformat(" "),
            self.run_id,
            if self.run_type == "manual" { "True" } else { "False" }
        )
    }
}

impl Object for DagRunObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(match key.as_str()? {
            "dag_id" => Value::from(self.dag_id.clone()),
            "run_id" => Value::from(self.run_id.clone()),
            "run_type" => Value::from(self.run_type.clone()),
            "logical_date" | "execution_date" => Value::from_object(self.logical_date),
            "data_interval_start" => Value::from_object(self.data_interval_start),
            "data_interval_end" => Value::from_object(self.data_interval_end),
            "conf" => self.conf.clone(),
            "external_trigger" => Value::from(self.run_type == "manual"),
            "state" => Value::from("running"),
            _ => return None,
        })
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_ref(), f)
    }
}

/// `var.value` (text) or `var.json` (parsed JSON), over `[variables]`.
#[derive(Debug)]
pub struct VarAccessor {
    pub variables: Arc<BTreeMap<String, String>>,
    pub json: bool,
}

impl VarAccessor {
    fn lookup(&self, name: &str) -> Option<Result<Value, String>> {
        let text = self.variables.get(name)?;
        if !self.json {
            return Some(Ok(Value::from(text.clone())));
        }
        Some(
            serde_json::from_str::<serde_json::Value>(text)
                .map(|v| super::json_value(&v))
                .map_err(|e| format!("variable `{name}` is not JSON ({e}); read it with `var.value.{name}`")),
        )
    }

    /// Why `name` is missing, for the undefined-name message.
    pub fn explain(&self, name: &str) -> String {
        match self.lookup(name) {
            Some(Err(why)) => why,
            _ => {
                let known: Vec<&str> = self.variables.keys().map(String::as_str).collect();
                let hint = crate::model::suggest::nearest(name, &known)
                    .map(|k| format!(" — did you mean `{k}`?"))
                    .unwrap_or_else(|| " (set it under `[variables]` in rhaiflow.toml)".into());
                format!("variable `{name}` is not set{hint}")
            }
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.variables.keys().cloned().collect()
    }
}

impl Object for VarAccessor {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.json { "<var.json>" } else { "<var.value>" })
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.lookup(key.as_str()?)?.ok()
    }

    /// `var.value.get('name', default)`: the default when the variable is not set; without one, an error.
    fn call_method(self: &Arc<Self>, _state: &mut State<'_, '_>, method: &str, args: &[Value]) -> Result<Value, Error> {
        if method != "get" {
            return Err(Error::from(ErrorKind::UnknownMethod));
        }
        let (name, default, kwargs): (String, Option<Value>, Kwargs) = from_args(args)?;
        let default = default.or(kwargs.get("default_var")?);
        kwargs.assert_all_used()?;
        match (self.lookup(&name), default) {
            (Some(found), _) => found.map_err(fail),
            (None, Some(default)) => Ok(default),
            (None, None) => Err(fail(self.explain(&name))),
        }
    }
}

/// A connection, from a `[connections.NAME] uri` parsed as Airflow's `Connection(uri=...)` does.
#[derive(Clone, PartialEq)]
pub struct Connection {
    pub conn_id: String,
    pub conn_type: String,
    pub host: String,
    pub login: Option<String>,
    pub password: Option<String>,
    pub port: Option<u16>,
    pub schema: String,
    pub extra: Option<String>,
    uri: String,
}

pub const CONNECTION_ATTRIBUTES: &[&str] =
    &["conn_id", "conn_type", "host", "login", "password", "port", "schema", "extra", "extra_dejson", "get_uri"];

/// Python's `urllib.parse.unquote` (`plus`: `unquote_plus`): `%XX` decoded, invalid UTF-8 replaced.
fn unquote(text: &str, plus: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Connection {
    /// Airflow's `Connection._parse_from_uri`: `type://login:password@host:port/schema?k=v`,
    /// `type://protocol://host...` for a host with a protocol, `__extra__=<json>` for nested extras.
    /// The error never repeats the URI (it holds the password).
    pub fn parse(conn_id: &str, uri: &str) -> Result<Connection, String> {
        let invalid = |why: &str| format!("connection `{conn_id}`: `[connections.{conn_id}] uri` is not valid: {why}");
        let schemes = uri.matches("://").count();
        if schemes == 0 {
            return Err(invalid("it has no `type://` prefix (write `postgres://login:password@host:5432/schema`)"));
        }
        if schemes > 2 {
            return Err(invalid("it has more than two `://`"));
        }
        let (scheme, after) = uri.split_once("://").ok_or_else(|| invalid("it has no `type://` prefix"))?;
        let valid_scheme = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !valid_scheme {
            return Err(invalid(
                "its type (before `://`) must start with a letter and hold letters, digits, `+`, `-` or `.`",
            ));
        }
        let scheme = scheme.to_ascii_lowercase();
        let conn_type = match scheme.as_str() {
            "postgresql" => "postgres".to_string(),
            other => other.replace('-', "_"),
        };
        let (protocol, rest) = if schemes == 2 {
            let (protocol, rest) =
                after.split_once("://").ok_or_else(|| invalid("it has a malformed host protocol"))?;
            if protocol.contains(['@', ':']) {
                return Err(invalid("a `://` appears after the login part"));
            }
            (Some(protocol), rest)
        } else {
            (None, after)
        };
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let (netloc, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i..]),
            None => (before_query, ""),
        };
        let (userinfo, hostport) = match netloc.rfind('@') {
            Some(i) => (Some(&netloc[..i]), &netloc[i + 1..]),
            None => (None, netloc),
        };
        let (login, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, pass)) => (Some(user), Some(pass)),
                None => (Some(info), None),
            },
        };
        let (host, port_text) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (inside, after) = bracketed.split_once(']').ok_or_else(|| invalid("an IPv6 host lacks its `]`"))?;
            (inside, after.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let port = match port_text.filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| invalid("its port is not a number from 0 to 65535"))?,
            ),
        };
        let mut host = unquote(&host.to_lowercase(), false);
        if host.contains('/') {
            // As Airflow: a host holding `/` (a socket path, percent-encoded) is taken as written.
            host = unquote(hostport.split_once(':').map_or(hostport, |(h, _)| h), false);
        }
        if let Some(protocol) = protocol {
            host = format!("{protocol}://{host}");
        }
        let extra = query.filter(|q| !q.is_empty()).map(|q| {
            let mut pairs: Vec<(String, String)> = Vec::new();
            for part in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = part.split_once('=').unwrap_or((part, ""));
                let (k, v) = (unquote(k, true), unquote(v, true));
                match pairs.iter_mut().find(|(existing, _)| *existing == k) {
                    Some(slot) => slot.1 = v,
                    None => pairs.push((k, v)),
                }
            }
            match pairs.iter().find(|(k, _)| k == "__extra__") {
                Some((_, json)) => json.clone(),
                None => {
                    let object: serde_json::Map<String, serde_json::Value> =
                        pairs.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
                    serde_json::Value::Object(object).to_string()
                }
            }
        });
        Ok(Connection {
            conn_id: conn_id.to_string(),
            conn_type,
            host,
            login: login.map(|l| unquote(l, false)),
            password: password.map(|p| unquote(p, false)),
            port,
            schema: unquote(path.strip_prefix('/').unwrap_or(path), false),
            extra,
            uri: uri.to_string(),
        })
    }

    fn extra_dejson(&self) -> Result<Value, Error> {
        let Some(extra) = &self.extra else {
            return Ok(super::json_value(&serde_json::Value::Object(serde_json::Map::new())));
        };
        serde_json::from_str::<serde_json::Value>(extra)
            .map(|v| super::json_value(&v))
            .map_err(|e| fail(format!("connection `{}`: its extra is not JSON ({e})", self.conn_id)))
    }
}

impl fmt::Debug for Connection {
    /// Without the password or the URI that holds it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("conn_id", &self.conn_id)
            .field("conn_type", &self.conn_type)
            .field("host", &self.host)
            .field("login", &self.login)
            .field("port", &self.port)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Connection {
    /// Airflow's `str(conn)` is its id (never the password).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.conn_id)
    }
}

impl Object for Connection {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let opt = |v: &Option<String>| v.clone().map(Value::from).unwrap_or(Value::from(()));
        Some(match key.as_str()? {
            "conn_id" => Value::from(self.conn_id.clone()),
            "conn_type" => Value::from(self.conn_type.clone()),
            "host" => Value::from(self.host.clone()),
            "login" => opt(&self.login),
            "password" => opt(&self.password),
            "port" => self.port.map(Value::from).unwrap_or(Value::from(())),
            "schema" => Value::from(self.schema.clone()),
            "extra" => opt(&self.extra),
            "extra_dejson" => self.extra_dejson().ok()?,
            "description" => Value::from(()),
            _ => return None,
        })
    }

    fn call_method(self: &Arc<Self>, _state: &mut State<'_, '_>, method: &str, args: &[Value]) -> Result<Value, Error> {
        let () = from_args(args)?;
        match method {
            "get_uri" => Ok(Value::from(self.uri.clone())),
            "get_password" => Ok(self.password.clone().map(Value::from).unwrap_or(Value::from(()))),
            "get_extra" => Ok(self.extra.clone().map(Value::from).unwrap_or(Value::from(()))),
            "extra_dejson" => self.extra_dejson(),
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_ref(), f)
    }
}

/// `conn`: connections by name, each parsed once when the context is built.
pub struct ConnAccessor {
    pub connections: BTreeMap<String, Result<Arc<Connection>, String>>,
}

impl fmt::Debug for ConnAccessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.connections.keys()).finish()
    }
}

impl ConnAccessor {
    pub fn new(uris: &BTreeMap<String, String>) -> ConnAccessor {
        let connections =
            uris.iter().map(|(name, uri)| (name.clone(), Connection::parse(name, uri).map(Arc::new))).collect();
        ConnAccessor { connections }
    }

    pub fn explain(&self, name: &str) -> String {
        match self.connections.get(name) {
            Some(Err(why)) => why.clone(),
            _ => {
                let known: Vec<&str> = self.connections.keys().map(String::as_str).collect();
                let hint = crate::model::suggest::nearest(name, &known)
                    .map(|k| format!(" — did you mean `{k}`?"))
                    .unwrap_or_else(|| " (declare it as `[connections.NAME] uri = \"...\"` in rhaiflow.toml)".into());
                format!("connection `{name}` is not defined{hint}")
            }
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.connections.keys().cloned().collect()
    }
}

impl Object for ConnAccessor {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<conn>")
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match self.connections.get(key.as_str()?)? {
            Ok(conn) => Some(Value::from_dyn_object(conn.clone())),
            Err(_) => None,
        }
    }

    /// `conn.get('name', default)`.
    fn call_method(self: &Arc<Self>, _state: &mut State<'_, '_>, method: &str, args: &[Value]) -> Result<Value, Error> {
        if method != "get" {
            return Err(Error::from(ErrorKind::UnknownMethod));
        }
        let (name, default): (String, Option<Value>) = from_args(args)?;
        match (self.connections.get(&name), default) {
            (Some(Ok(conn)), _) => Ok(Value::from_dyn_object(conn.clone())),
            (Some(Err(why)), _) => Err(fail(why.clone())),
            (None, Some(default)) => Ok(default),
            (None, None) => Err(fail(self.explain(&name))),
        }
    }
}

/// A random `u64` from the standard library's per-process random keys and the clock.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.finish()
}

fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `macros.random`: Python's `random.random` (callable), with `random()`, `randint(a, b)` and `choice(seq)`.
#[derive(Debug)]
pub struct RandomModule;

impl Object for RandomModule {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<built-in method random>")
    }

    fn call(self: &Arc<Self>, _state: &mut State<'_, '_>, args: &[Value]) -> Result<Value, Error> {
        let () = from_args(args)?;
        Ok(Value::from(random_unit()))
    }

    fn call_method(self: &Arc<Self>, _state: &mut State<'_, '_>, method: &str, args: &[Value]) -> Result<Value, Error> {
        match method {
            "random" => {
                let () = from_args(args)?;
                Ok(Value::from(random_unit()))
            }
            "randint" => {
                let (low, high): (i64, i64) = from_args(args)?;
                let span = high.checked_sub(low).and_then(|s| u64::try_from(s).ok()).and_then(|s| s.checked_add(1));
                let span = span.ok_or_else(|| fail(format!("`randint({low}, {high})` needs low <= high")))?;
                Ok(Value::from(low.wrapping_add((random_u64() % span) as i64)))
            }
            "choice" => {
                let (seq,): (Value,) = from_args(args)?;
                let len = seq.len().filter(|n| *n > 0).ok_or_else(|| fail("`choice` needs a non-empty list".into()))?;
                seq.get_item(&Value::from((random_u64() % len as u64) as usize))
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

/// `macros.time`: `time()` (seconds since the epoch, as a float).
#[derive(Debug)]
pub struct TimeModule;

impl Object for TimeModule {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<module 'time'>")
    }

    fn call_method(self: &Arc<Self>, _state: &mut State<'_, '_>, method: &str, args: &[Value]) -> Result<Value, Error> {
        match method {
            "time" => {
                let () = from_args(args)?;
                let now = chrono::Utc::now();
                Ok(Value::from(now.timestamp() as f64 + f64::from(now.timestamp_subsec_micros()) / 1e6))
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

/// `macros.uuid`: `uuid4()` (renders `8-4-4-4-12` hex; `.hex` without dashes).
#[derive(Debug)]
pub struct UuidModule;

#[derive(Debug)]
struct Uuid(u128);

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = format!("{:032x}", self.0);
        write!(f, "{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
    }
}

impl Object for Uuid {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "hex" => Some(Value::from(format!("{:032x}", self.0))),
            _ => None,
        }
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_ref(), f)
    }
}

impl Object for UuidModule {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<module 'uuid'>")
    }

    fn call_method(self: &Arc<Self>, _state: &mut State<'_, '_>, method: &str, args: &[Value]) -> Result<Value, Error> {
        match method {
            "uuid4" => {
                let () = from_args(args)?;
                let bits = (u128::from(random_u64()) << 64) | u128::from(random_u64());
                // Version 4, RFC 4122 variant.
                let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
                Ok(Value::from_object(Uuid(bits)))
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

/// `macros.timedelta`: Python's `datetime.timedelta` class.
#[derive(Debug)]
pub struct TimedeltaClass;

impl Object for TimedeltaClass {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn call(self: &Arc<Self>, _state: &mut State<'_, '_>, args: &[Value]) -> Result<Value, Error> {
        timedelta(args)
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<class 'datetime.timedelta'>")
    }
}
