//! What an alert says: the context built from an outbox row (one shape for every channel, the
//! one templates see, and the `ctx` a callback and `stdlib/alerts.rhai` read: [`AlertContext`]),
//! and each channel's text from its minijinja template.

use super::channel::{Channel, ChannelKind};
use crate::store::OutboxRow;
use serde::{Deserialize, Serialize};

/// Everything a message may say about one event: the one alert context. Channel templates see
/// these names, and so do callbacks (`ctx.error`, `ctx.log_url`, `ctx.ti.try_number`: see
/// [`callback_context`]) and the helpers of `stdlib/alerts.rhai`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertContext {
    /// `failed`, `up_for_retry`, `success`, `dag_run_failed`, `dag_run_success`, `summary`, `test`.
    pub event: String,
    /// The task instance's new state (`failed`, `up_for_retry`, `success`), or the run's for a
    /// DAG-level event (`failed`, `success`).
    #[serde(default)]
    pub state: String,
    /// "failed", "up for retry", "succeeded", as a person reads it.
    pub event_text: String,
    pub dag_id: String,
    pub task_id: Option<String>,
    pub run_id: String,
    pub logical_date: Option<String>,
    pub try_number: Option<u32>,
    /// Tries in all (`retries + 1`): "try 2 of 3".
    pub tries: Option<u32>,
    /// Airflow's `max_tries` (the retries): a failure retries while `try_number <= max_tries`.
    #[serde(default)]
    pub max_tries: Option<u32>,
    /// When the next try is due (retries only).
    pub next_try_at: Option<String>,
    pub error: Option<String>,
    /// The last lines of the try's log, capped.
    pub log_tail: Option<String>,
    /// Seconds the try took.
    pub duration: Option<f64>,
    /// `1m 5s`.
    pub duration_text: Option<String>,
    /// The UI's page for the try's log (`[webserver] base_url`).
    pub log_url: Option<String>,
    pub hostname: Option<String>,
    /// A burst folded into one message.
    pub summary: Option<Summary>,
    /// Recipients (email).
    pub email: Vec<String>,
}

/// Alerts folded into one message because the robot's budget was spent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: usize,
    /// "failures", "retries", "alerts".
    pub what: String,
    /// `etl.load try 2/3`, at most [`SUMMARY_ITEMS`].
    pub items: Vec<String>,
    /// Items beyond those listed.
    pub more: usize,
}

pub const SUMMARY_ITEMS: usize = 10;

/// A rendered message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Title (DingTalk markdown title, mail subject).
    pub title: String,
    pub text: String,
    pub context: AlertContext,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("template of channel `{channel}`: {reason}")]
pub struct RenderError {
    pub channel: String,
    pub reason: String,
}

/// Lines and bytes of a log's tail a message carries.
const TAIL_LINES: usize = 20;
const TAIL_BYTES: usize = 2_000;
/// Longest error text a message carries.
const ERROR_CHARS: usize = 1_000;

fn event_text(event: &str) -> &str {
    match event {
        "failed" => "failed",
        "up_for_retry" => "up for retry",
        "success" => "succeeded",
        "dag_run_failed" => "run failed",
        "dag_run_success" => "run succeeded",
        "summary" => "summary",
        "test" => "test",
        "import_error" => "import error",
        other => other,
    }
}

fn cut(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

fn duration_text(seconds: f64) -> String {
    let total = seconds.max(0.0);
    if total < 60.0 {
        return format!("{total:.1}s");
    }
    let s = total.round() as u64;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 { format!("{h}h {m}m {s}s") } else { format!("{m}m {s}s") }
}

/// The UI's page of one try: `{base_url}/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/tries/{n}`.
pub fn log_url(base_url: &str, dag_id: &str, run_id: &str, task_id: &str, try_number: u32) -> Option<String> {
    let mut url = reqwest::Url::parse(base_url).ok()?;
    {
        let mut path = url.path_segments_mut().ok()?;
        path.pop_if_empty();
        let n = try_number.to_string();
        path.extend(["dags", dag_id, "runs", run_id, "tasks", task_id, "tries", &n]);
    }
    Some(url.to_string())
}

/// The last lines of a try's log, capped: the text the store kept for it (a quick in-process
/// try's, `executor::try_log`), then its file's; `None` when neither has any.
pub async fn log_tail(stored: Option<String>, path: &std::path::Path) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut text = stored.unwrap_or_default();
    if let Ok(mut file) = tokio::fs::File::open(path).await {
        let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(TAIL_BYTES as u64 * 2);
        if file.seek(std::io::SeekFrom::Start(start)).await.is_ok() {
            let mut bytes = Vec::new();
            if file.take(TAIL_BYTES as u64 * 2).read_to_end(&mut bytes).await.is_ok() {
                let read = String::from_utf8_lossy(&bytes).into_owned();
                if start > 0 {
                    // Enough in the file alone; its first line is partial.
                    text = read.split_once('\n').map(|(_, rest)| rest.to_string()).unwrap_or_default();
                } else {
                    text.push_str(&read);
                }
            }
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    let keep: Vec<&str> = lines.iter().rev().take(TAIL_LINES).rev().copied().collect();
    let mut tail = keep.join("\n");
    while tail.len() > TAIL_BYTES {
        match tail.find('\n') {
            Some(i) => tail.drain(..=i),
            None => tail.drain(..tail.len() - TAIL_BYTES.min(tail.len())),
        };
    }
    (!tail.trim().is_empty()).then_some(tail)
}

/// The stored log text of the try an outbox row is about (see `log_tail`).
pub async fn stored_log(store: &crate::store::Store, row: &OutboxRow) -> Option<String> {
    let (task_id, try_number) = (row.task_id.clone()?, row.try_number?);
    let key = crate::model::TiKey { dag_id: row.dag_id.clone(), run_id: row.run_id.clone(), task_id };
    store.read_async(move |tx| tx.task_log(&key, try_number)).await.ok().flatten()
}

fn s(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key).and_then(|x| x.as_str()).map(str::to_string)
}

fn u(v: &serde_json::Value, key: &str) -> Option<u32> {
    v.get(key).and_then(|x| x.as_u64()).and_then(|x| u32::try_from(x).ok())
}

/// The context of an outbox row. `log_tail` is read by the caller (it is I/O).
pub fn context_of(row: &OutboxRow, base_url: Option<&str>, log_tail: Option<String>) -> AlertContext {
    let p = &row.payload;
    let try_number = row.try_number.or_else(|| u(p, "try_number"));
    let log_url = match (base_url, &row.task_id, try_number) {
        (Some(base), Some(task), Some(n)) if row.event != "summary" => log_url(base, &row.dag_id, &row.run_id, task, n),
        _ => None,
    };
    let summary = p.get("summary").and_then(|s| serde_json::from_value::<Summary>(s.clone()).ok());
    let duration = p.get("duration").and_then(|d| d.as_f64());
    let state = s(p, "state").unwrap_or_else(|| row.event.trim_start_matches("dag_run_").to_string());
    AlertContext {
        event: row.event.clone(),
        state,
        event_text: event_text(&row.event).to_string(),
        dag_id: row.dag_id.clone(),
        task_id: row.task_id.clone(),
        run_id: row.run_id.clone(),
        logical_date: s(p, "logical_date"),
        try_number,
        tries: u(p, "max_tries").map(|m| m.saturating_add(1)),
        max_tries: u(p, "max_tries"),
        next_try_at: s(p, "next_try_at"),
        // A run's end carries its `reason` (`dagrun_timeout`), a try's its `error`.
        error: s(p, "error").or_else(|| s(p, "reason")).map(|e| cut(&e, ERROR_CHARS)),
        log_tail,
        duration,
        duration_text: duration.map(duration_text),
        log_url,
        hostname: s(p, "hostname"),
        summary,
        email: p
            .get("email")
            .and_then(|e| e.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
    }
}

/// The `ctx` a callback gets: every field of the alert context, Airflow's names for some of them
/// (`exception` and `reason` for the error, `ds`, `ts`, `dag_run`), and `ti` (`task_instance`)
/// holding the try's own fields. `script::CallArg::Context` turns it into the read-only `ctx`.
pub fn callback_context(ctx: &AlertContext) -> serde_json::Value {
    let mut v = serde_json::to_value(ctx).unwrap_or_else(|_| serde_json::json!({}));
    let date = ctx.logical_date.clone().unwrap_or_default();
    let ds = date.get(..10).unwrap_or("").to_string();
    if let Some(map) = v.as_object_mut() {
        map.insert("exception".into(), ctx.error.clone().into());
        map.insert("reason".into(), ctx.error.clone().into());
        map.insert("ds".into(), ds.clone().into());
        map.insert("ds_nodash".into(), ds.replace('-', "").into());
        map.insert("ts".into(), date.clone().into());
        map.insert(
            "dag_run".into(),
            serde_json::json!({
                "dag_id": ctx.dag_id, "run_id": ctx.run_id, "logical_date": date,
                "state": if ctx.task_id.is_none() { Some(&ctx.state) } else { None },
            }),
        );
        map.insert(
            "ti".into(),
            serde_json::json!({
                "dag_id": ctx.dag_id, "task_id": ctx.task_id, "run_id": ctx.run_id,
                "try_number": ctx.try_number, "max_tries": ctx.max_tries, "tries": ctx.tries,
                "state": ctx.state, "log_url": ctx.log_url, "hostname": ctx.hostname,
                "duration": ctx.duration, "next_try_at": ctx.next_try_at,
            }),
        );
    }
    v
}

const TITLE: &str = "{% if summary %}[rhaiflow] {{ summary.count }} more {{ summary.what }}\
{% elif event == 'test' %}[rhaiflow] test message\
{% elif event == 'import_error' %}[rhaiflow] import error in {{ dag_id }}{% else %}[rhaiflow] {{ dag_id }}.{{ task_id }} {{ event_text }}\
{% if try_number %} (try {{ try_number }} of {{ tries }}){% endif %}{% endif %}";

const MARKDOWN: &str = r#"{% if summary -%}
### {{ summary.count }} more {{ summary.what }}: {{ summary.items | join(", ") }}{% if summary.more %}, … ({{ summary.more }} more){% endif %}
{%- elif event == "test" -%}
### rhaiflow test message
This is a test of the alert channel.
{%- elif event == "import_error" -%}
### ❌ import error in {{ dag_id }}
```
{{ error }}
```
{%- else -%}
### {% if event == "success" %}✅{% elif event == "up_for_retry" %}🔁{% else %}❌{% endif %} {{ dag_id }}.{{ task_id }} {{ event_text }}
- **DAG**: {{ dag_id }}
- **Task**: {{ task_id }}
- **Run**: {{ run_id }}
- **Logical date**: {{ logical_date }}
- **Try**: {{ try_number }} of {{ tries }}{% if event == "up_for_retry" %} (retrying{% if next_try_at %} at {{ next_try_at }}{% endif %}){% endif %}
{% if duration_text %}- **Duration**: {{ duration_text }}
{% endif %}{% if error %}- **Error**: {{ error }}
{% endif %}{% if log_tail %}
```
{{ log_tail }}
```
{% endif %}{% if log_url %}
[Log of try {{ try_number }}]({{ log_url }})
{% endif %}{% endif %}"#;

const PLAIN: &str = r#"{% if summary -%}
{{ summary.count }} more {{ summary.what }}: {{ summary.items | join(", ") }}{% if summary.more %}, … ({{ summary.more }} more){% endif %}
{%- elif event == "test" -%}
rhaiflow test message: this is a test of the alert channel.
{%- elif event == "import_error" -%}
Import error in {{ dag_id }}:
{{ error }}
{%- else -%}
{{ dag_id }}.{{ task_id }} {{ event_text }} (try {{ try_number }} of {{ tries }})
DAG: {{ dag_id }}
Task: {{ task_id }}
Run: {{ run_id }}
Logical date: {{ logical_date }}
Try: {{ try_number }} of {{ tries }}{% if event == "up_for_retry" %} (retrying{% if next_try_at %} at {{ next_try_at }}{% endif %}){% endif %}
{% if duration_text %}Duration: {{ duration_text }}
{% endif %}{% if hostname %}Host: {{ hostname }}
{% endif %}{% if error %}Error: {{ error }}
{% endif %}{% if log_tail %}
Last lines of the log:
{{ log_tail }}
{% endif %}{% if log_url %}
Log: {{ log_url }}
{% endif %}{% endif %}"#;

/// The default body template of a kind: markdown where the service renders it.
fn default_template(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::DingTalk | ChannelKind::WeCom => MARKDOWN,
        ChannelKind::Email | ChannelKind::Feishu | ChannelKind::Slack | ChannelKind::Webhook => PLAIN,
    }
}

/// Work one template may do (minijinja fuel): a user's template is bounded like a DAG's.
const FUEL: u64 = 100_000;
/// The longest message text.
const MAX_TEXT: usize = 16_000;

fn render_one(channel: &str, source: &str, ctx: &AlertContext) -> Result<String, RenderError> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    let err = |e: minijinja::Error| RenderError { channel: channel.to_string(), reason: e.to_string() };
    let out = env.render_str(source, minijinja::Value::from(minijinja::value::Serde(ctx))).map_err(err)?;
    Ok(cut(out.trim_end(), MAX_TEXT))
}

/// The message `channel` sends for `ctx`.
pub fn render(channel: &Channel, ctx: &AlertContext) -> Result<Message, RenderError> {
    let body = channel.template().unwrap_or(default_template(channel.kind()));
    let title_source = match &channel.target {
        super::Target::Email(c) => c.subject_template.as_deref().unwrap_or(TITLE),
        _ => TITLE,
    };
    Ok(Message {
        title: render_one(&channel.name, title_source, ctx)?,
        text: render_one(&channel.name, body, ctx)?,
        context: ctx.clone(),
    })
}

/// Renders every channel's templates with a sample context, so a broken `template` is an error
/// at start rather than a failed alert later.
pub fn check_templates(channels: &super::Channels) -> Result<(), RenderError> {
    let sample = AlertContext {
        event: "failed".into(),
        event_text: "failed".into(),
        dag_id: "dag".into(),
        task_id: Some("task".into()),
        run_id: "manual__2024-01-01T00:00:00+00:00".into(),
        try_number: Some(1),
        tries: Some(1),
        error: Some("exit code 1".into()),
        ..Default::default()
    };
    for name in channels.names() {
        if let Ok(channel) = channels.get(&name) {
            render(channel, &sample)?;
        }
    }
    Ok(())
}

/// The summary a burst is folded into.
pub fn summary_of(rows: &[OutboxRow]) -> Summary {
    let count: usize = rows.iter().map(summary_count).sum();
    let events: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| if r.event == "summary" { "summary" } else { r.event.as_str() }).collect();
    let what = match events.iter().copied().collect::<Vec<_>>().as_slice() {
        ["failed"] => "failures",
        ["up_for_retry"] => "retries",
        ["success"] => "successes",
        _ => "alerts",
    };
    let mut items = Vec::new();
    for r in rows {
        if r.event == "summary" {
            if let Some(s) = r.payload.get("summary").and_then(|s| serde_json::from_value::<Summary>(s.clone()).ok()) {
                items.extend(s.items);
            }
            continue;
        }
        let task = r.task_id.as_deref().unwrap_or("");
        let item = match (r.try_number, r.payload.get("max_tries").and_then(|m| m.as_u64())) {
            (Some(n), Some(m)) => format!("{}.{task} try {n}/{}", r.dag_id, m + 1),
            _ => format!("{}.{task}", r.dag_id),
        };
        items.push(item);
    }
    let more = items.len().saturating_sub(SUMMARY_ITEMS).max(count.saturating_sub(items.len().min(SUMMARY_ITEMS)));
    items.truncate(SUMMARY_ITEMS);
    Summary { count, what: what.into(), items, more: more.min(count) }
}

fn summary_count(r: &OutboxRow) -> usize {
    if r.event == "summary" {
        r.payload.get("summary").and_then(|s| s.get("count")).and_then(|c| c.as_u64()).unwrap_or(1) as usize
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_urls_escape_run_ids() {
        let url = log_url("https://ui.example.com/base/", "etl", "manual__2024-01-01T00:00:00+00:00", "load", 2);
        assert_eq!(
            url.as_deref(),
            Some("https://ui.example.com/base/dags/etl/runs/manual__2024-01-01T00:00:00+00:00/tasks/load/tries/2")
        );
        assert_eq!(log_url("not a url", "a", "b", "c", 1), None);
    }

    #[test]
    fn a_callbacks_ctx_is_the_alert_context_with_airflows_names() {
        let row = OutboxRow {
            id: 1,
            created_at: chrono::Utc::now(),
            event: "up_for_retry".into(),
            dag_id: "etl".into(),
            run_id: "r1".into(),
            task_id: Some("load".into()),
            try_number: Some(1),
            channel: "callback:etl.load.on_retry_callback#anon$1".into(),
            payload: serde_json::json!({
                "state": "up_for_retry", "try_number": 1, "max_tries": 2, "error": "exit 3",
                "logical_date": "2026-03-04T00:00:00+00:00",
            }),
            state: "pending".into(),
            attempts: 0,
            last_error: None,
            sent_at: None,
            attempted_at: None,
            next_attempt_at: None,
            coalesced_into: None,
        };
        let ctx = context_of(&row, Some("https://ui.example.com"), Some("last line".into()));
        assert_eq!((ctx.state.as_str(), ctx.tries, ctx.max_tries), ("up_for_retry", Some(3), Some(2)));
        let v = callback_context(&ctx);
        assert_eq!(v["exception"], "exit 3");
        assert_eq!(v["error"], "exit 3");
        assert_eq!(v["ds"], "2026-03-04");
        assert_eq!(v["log_tail"], "last line");
        assert_eq!(v["ti"]["try_number"], 1);
        assert_eq!(v["ti"]["state"], "up_for_retry");
        assert_eq!(v["ti"]["log_url"], "https://ui.example.com/dags/etl/runs/r1/tasks/load/tries/1");
        // A run's end: its reason is the error, its state the run's.
        let run_row = OutboxRow {
            event: "dag_run_failed".into(),
            task_id: None,
            try_number: None,
            payload: serde_json::json!({ "state": "failed", "reason": "dagrun_timeout of 1h reached" }),
            ..row
        };
        let ctx = context_of(&run_row, None, None);
        assert_eq!((ctx.state.as_str(), ctx.event_text.as_str()), ("failed", "run failed"));
        assert_eq!(ctx.error.as_deref(), Some("dagrun_timeout of 1h reached"));
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration_text(1.25), "1.2s");
        assert_eq!(duration_text(65.0), "1m 5s");
        assert_eq!(duration_text(3725.0), "1h 2m 5s");
    }
}
