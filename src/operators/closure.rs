//! Calling a task's Rhai closure from an operator (`RhaiOperator`, `BranchOperator`,
//! `ShortCircuitOperator`, `HttpOperator`'s `response_check`/`response_filter`).
//!
//! [`call`] runs the closure of the DAG version the run is pinned to on a blocking thread
//! (`spawn_blocking`), never on the async threads, bounded by [`timeout`] (the task's
//! `execution_timeout`, else `[core] task_script_timeout`). The closure reaches the outside only
//! through [`RunServices`]: XCom in the store, `[variables]`, the try's log, and `env.http`.
//! [`context`] is the `ctx` argument (Airflow's context as plain values).

use super::TaskRun;
use crate::model::CallbackRef;
use crate::script::{CallArg, ClosureCall, HttpRequest, HttpResponse, ScriptFailure, TaskServices, VersionSource};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The largest HTTP answer a closure gets (Rhai's string limit for DAG files).
const MAX_HTTP_BODY: usize = 4 << 20;

/// A closure's wall-clock limit: the task's `execution_timeout`, else `[core] task_script_timeout`.
pub fn timeout(run: &TaskRun) -> Duration {
    match run.task.task().execution_timeout {
        Some(t) => Duration::from_millis(t.as_millis()),
        None => run.env.settings.task_script_timeout,
    }
}

/// `ctx` as closures see it: `ds`, `ts`, `logical_date`, `params` (with `--conf` overrides, as
/// Airflow's `dag_run_conf_overrides_params`), `dag_run` (`conf`, `run_id`, ...), `run_id`,
/// `ti` (`try_number`, ...; `xcom_pull`/`xcom_push` are methods). Dates are RFC 3339 text.
pub fn context(run: &TaskRun) -> CallArg {
    let c = &run.ctx;
    let iso = |at: chrono::DateTime<chrono::Utc>| at.format("%Y-%m-%dT%H:%M:%S%:z").to_string();
    let ds = c.logical_date.format("%Y-%m-%d").to_string();
    let ts = iso(c.logical_date);
    CallArg::Context(serde_json::json!({
        "ds": ds,
        "ds_nodash": ds.replace('-', ""),
        "ts": ts,
        "ts_nodash": c.logical_date.format("%Y%m%dT%H%M%S").to_string(),
        "logical_date": ts,
        "data_interval_start": iso(c.data_interval_start),
        "data_interval_end": iso(c.data_interval_end),
        "params": c.params,
        "run_id": c.run_id,
        "dag_id": c.dag_id,
        "task_id": c.task_id,
        "dag_run": {
            "dag_id": c.dag_id,
            "run_id": c.run_id,
            "run_type": c.run_type,
            "conf": c.conf,
            "logical_date": ts,
            "data_interval_start": iso(c.data_interval_start),
            "data_interval_end": iso(c.data_interval_end),
        },
        "ti": {
            "try_number": c.try_number,
            "max_tries": c.max_tries,
            "task_id": c.task_id,
            "dag_id": c.dag_id,
            "run_id": c.run_id,
        },
    }))
}

/// Calls `callback` of the run's pinned DAG version with `args` on a blocking thread. A failure
/// carries the message and the place in the DAG file.
pub async fn call(
    run: &Arc<TaskRun>,
    callback: &CallbackRef,
    args: Vec<CallArg>,
) -> Result<serde_json::Value, ScriptFailure> {
    let run = run.clone();
    let settings = run.env.settings.clone();
    let call = ClosureCall { callback: callback.clone(), args, timeout: timeout(&run) };
    let handle = tokio::runtime::Handle::current();
    let joined = tokio::task::spawn_blocking(move || {
        let services: Arc<dyn TaskServices> = Arc::new(RunServices { run: run.clone(), handle });
        let version = run.task.run.version_hash.clone();
        let store = run.env.store.clone();
        let load = move || -> Result<Option<VersionSource>, String> {
            let Some(store) = &store else {
                return Err("no database: create it with `rhaiflow db migrate`".into());
            };
            let found = store.read(|tx| tx.dag_version_source(&version)).map_err(|e| e.to_string())?;
            Ok(found.map(|k| VersionSource::kept(k.file, k.text, k.modules)))
        };
        run.env.scripts.call(&run.task.run.version_hash, &load, call, services)
    })
    .await;
    let result = joined.unwrap_or_else(|_| {
        Err(ScriptFailure {
            message: "internal error while calling the closure (a bug in rhaiflow)".into(),
            position: None,
        })
    });
    // A message may quote a URL or a value built from a secret variable; it goes to logs and alerts.
    result.map_err(|f| ScriptFailure { message: super::mask_secrets(&f.message, &settings), ..f })
}

/// What a closure of one try may reach.
pub struct RunServices {
    run: Arc<TaskRun>,
    handle: tokio::runtime::Handle,
}

impl TaskServices for RunServices {
    fn xcom_pull(&self, task_id: &str, key: &str) -> Result<Option<serde_json::Value>, String> {
        let key_of = &self.run.task.key;
        if task_id == key_of.task_id
            && let Ok(pushed) = self.run.pushed.lock()
            && let Some((_, v)) = pushed.iter().find(|(k, _)| k == key)
        {
            return Ok(Some(v.clone()));
        }
        let Some(store) = &self.run.env.store else {
            // `tasks test` without a database: only what the template context already read.
            return Ok(self.run.ctx.xcoms.iter().rev().find(|(t, k, _)| t == task_id && k == key).map(|x| x.2.clone()));
        };
        store.read(|tx| tx.xcom(&key_of.dag_id, &key_of.run_id, task_id, key)).map_err(|e| e.to_string())
    }

    fn xcom_push(&self, key: &str, value: serde_json::Value) -> Result<(), String> {
        let bytes = value.to_string().len() as u64;
        let max = self.run.env.settings.max_xcom_bytes;
        if bytes > max {
            return Err(format!(
                "the XCom `{key}` is {} (`[core] max_xcom_bytes` is {})",
                super::size(bytes),
                super::size(max)
            ));
        }
        self.run.push_xcom(key.to_string(), value);
        Ok(())
    }

    fn variable(&self, name: &str) -> Option<String> {
        self.run.env.settings.variables.get(name).cloned()
    }

    fn log(&self, line: &str) {
        self.handle.block_on(self.run.log(line));
    }

    fn http(&self, request: HttpRequest) -> Result<HttpResponse, String> {
        http_request(&self.run.env.http, &self.handle, request)
    }

    fn send_alert(&self, channel: &str, title: Option<&str>, text: &str) -> Result<String, String> {
        let notify = self.notify()?;
        let origin = super::Origin::of_try(&self.run.task.key, self.run.task.try_number);
        send_text(notify.as_ref(), &self.handle, &origin, channel, title, text)
    }
}

impl RunServices {
    fn notify(&self) -> Result<Arc<dyn super::Notify>, String> {
        self.run.env.notify.get().cloned().ok_or_else(|| "this command does not load the alert channels".to_string())
    }
}

/// `alerts::send` from a closure: through the named channel, with the channel's own shape.
pub fn send_text(
    notify: &dyn super::Notify,
    handle: &tokio::runtime::Handle,
    origin: &super::Origin,
    channel: &str,
    title: Option<&str>,
    text: &str,
) -> Result<String, String> {
    let title = title.map(str::to_string).unwrap_or_else(|| super::notify::title_of(text));
    let notification = super::Notification::Text { title, text: text.to_string() };
    handle.block_on(notify.send(origin, channel, notification))
}

/// A closure's `http::get`/`http::post` (task closures and callbacks): made on `client` from a
/// blocking thread; the answer is read up to 4 MiB.
pub fn http_request(
    client: &reqwest::Client,
    handle: &tokio::runtime::Handle,
    request: HttpRequest,
) -> Result<HttpResponse, String> {
    let client = client.clone();
    handle.block_on(async move {
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).map_err(|e| e.to_string())?;
        let mut builder = client.request(method, &request.url).timeout(request.timeout);
        for (k, v) in &request.headers {
            builder = builder.header(k, v);
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        let timed_out = |e: &reqwest::Error| e.is_timeout();
        let secs = request.timeout.as_secs_f64();
        let describe = |e: reqwest::Error| {
            if timed_out(&e) { format!("no answer within {secs} s") } else { error_chain(&e) }
        };
        let mut response = builder.send().await.map_err(describe)?;
        let status = response.status().as_u16();
        let headers: BTreeMap<String, String> = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > MAX_HTTP_BODY {
                return Err(format!("the answer is larger than {}", super::size(MAX_HTTP_BODY as u64)));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse { status, headers, text: String::from_utf8_lossy(&body).into_owned() })
    })
}

/// An error and its causes, `a: b: c` (reqwest's own message says little: "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
