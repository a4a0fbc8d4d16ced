//! What one file's evaluation has declared so far, and turning it into `DagSpec`s at the end.

use super::args::{Args, DAG_KEYS, OperatorDef, SENSOR_KEYS, ScheduleArg, TASK_KEYS, TaskHandle, Value};
use super::error::{ScriptError, ScriptResult, nearest};
use crate::model::{
    CallbackRef, DagRunState, DagSpec, Diagnostic, DingdingSpec, EmailSpec, FeishuSpec, HttpSpec, Operator, PythonSpec,
    ScheduleSpec, SensorKind, SensorMode, SensorSpec, SlackSpec, SourcePos, TaskSpec, TimeSpan, TimeZoneSpec,
    TriggerRule, TriggerSpec, WeComSpec, WeightRule,
};
use chrono::{DateTime, Offset, Utc};
use rhai::FnPtr;
use rhai::{Dynamic, Map};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Where each DAG, task and edge of a DAG was declared, for graph errors found after evaluation.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    pub dag: Option<SourcePos>,
    pub tasks: HashMap<String, Option<SourcePos>>,
    pub edges: HashMap<(String, String), Option<SourcePos>>,
}

/// A DAG a file declared, before graph validation.
#[derive(Debug, Clone)]
pub struct DeclaredDag {
    pub spec: DagSpec,
    pub source_map: SourceMap,
    /// Its own arguments had errors (reported already): checks that read them (the timetable)
    /// would only repeat those errors, so the loader skips them.
    pub tainted: bool,
}

/// Settings an evaluation reads: the clock and the defaults Airflow takes from its config.
#[derive(Debug, Clone)]
pub struct EvalContext {
    pub now: DateTime<Utc>,
    pub default_timezone: chrono_tz::Tz,
    pub catchup_by_default: bool,
    pub default_owner: String,
}

pub struct TaskDecl {
    pub pos: Option<SourcePos>,
    pub spec: TaskSpec,
    /// The operator and its checked arguments (with `default_args` applied), so a property set
    /// later (`task.retries = 3`) rebuilds the spec through the same checks.
    op: &'static OperatorDef,
    args: Args,
}

/// Errors a file may record (and go on) before the rest are only counted.
const MAX_RECORDED: usize = 50;

/// Keys whose errors stop the file: nothing sensible can be declared without them.
const VITAL_KEYS: &[&str] = &["task_id", "dag", "dag_id"];

pub struct DagDecl {
    pub dag_id: String,
    pub pos: Option<SourcePos>,
    pub args: Args,
    pub default_args: Args,
    pub tasks: Vec<TaskDecl>,
    pub(super) task_index: HashMap<String, usize>,
    pub(super) edges: Vec<(usize, usize, Option<SourcePos>)>,
    edge_set: HashSet<(usize, usize)>,
    /// `TaskGroup`s, in declaration order (`script::groups`).
    pub(super) groups: Vec<super::groups::GroupDecl>,
    /// `Label`s on edges, by `(upstream, downstream)` task index.
    pub(super) labels: HashMap<(usize, usize), String>,
}

/// What one file may spend: a wall-clock deadline and caps on what it declares, checked inside
/// the DAG API as tasks and edges are added (so a huge cross product stops early).
#[derive(Debug, Clone)]
pub struct Budget {
    /// The thread's live bytes when the file started, and how many more it may hold.
    pub memory_base: isize,
    pub max_memory: isize,
    pub deadline: Instant,
    pub deadline_ms: u64,
    pub max_tasks_per_dag: usize,
    pub max_edges_per_dag: usize,
    pub max_declared_bytes: usize,
}

impl Budget {
    /// No caps and a far deadline (for the empty state left behind after a file finishes).
    pub fn unlimited() -> Self {
        Budget {
            memory_base: 0,
            max_memory: isize::MAX,
            deadline: Instant::now() + std::time::Duration::from_secs(86_400 * 365),
            deadline_ms: u64::MAX,
            max_tasks_per_dag: usize::MAX,
            max_edges_per_dag: usize::MAX,
            max_declared_bytes: usize::MAX,
        }
    }
}

/// What a declaration costs against `Budget::max_declared_bytes`, beyond the text it holds.
const TASK_OVERHEAD: usize = 512;
const DAG_OVERHEAD: usize = 1024;
const EDGE_OVERHEAD: usize = 64;

/// The state behind the DAG API during one file's evaluation.
pub struct FileState {
    pub file: String,
    pub source: Arc<str>,
    pub ctx: EvalContext,
    pub dags: Vec<DagDecl>,
    pub callbacks: BTreeMap<String, FnPtr>,
    budget: Budget,
    /// Bytes held by the declarations so far (their text plus a fixed cost per DAG, task and edge).
    declared_bytes: usize,
    /// Edges added since the deadline was last read.
    since_clock: u32,
    /// Errors recorded while the file went on (bad keys and values), in the order found.
    recorded: Vec<Diagnostic>,
    /// Errors past `MAX_RECORDED`, counted only.
    more_errors: usize,
    /// DAGs whose own arguments had errors: their build and timetable errors would only cascade.
    tainted: HashSet<usize>,
}

/// The handle the engine's tag carries so native functions find their file's state.
#[derive(Clone)]
pub struct FileCell(pub Arc<Mutex<FileState>>);

static ID_CHARS: &str = "letters, digits, `_`, `-` and `.`";

fn check_id(kind: &str, id: &str) -> ScriptResult<()> {
    if id.is_empty() || id.len() > 250 {
        return Err(ScriptError::new(format!("`{kind}` must be 1 to 250 characters long")));
    }
    if let Some(bad) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        return Err(ScriptError::new(format!("{kind} `{id}` contains `{bad}`; use only {ID_CHARS}")));
    }
    Ok(())
}

impl FileState {
    pub fn new(file: String, source: Arc<str>, ctx: EvalContext, budget: Budget) -> Self {
        FileState {
            file,
            source,
            ctx,
            dags: Vec::new(),
            callbacks: BTreeMap::new(),
            budget,
            declared_bytes: 0,
            since_clock: 0,
            recorded: Vec::new(),
            more_errors: 0,
            tainted: HashSet::new(),
        }
    }

    /// Records errors about keys and values so evaluation goes on and every one is reported;
    /// an error about a vital key (`task_id`, `dag`, `dag_id`) or a fatal one is raised instead.
    /// `call` is the position of the call, to find the offending key after it; `dag` is tainted.
    pub fn record(
        &mut self,
        errors: Vec<ScriptError>,
        call: Option<SourcePos>,
        dag: Option<usize>,
    ) -> ScriptResult<()> {
        if let Some(vital) =
            errors.iter().find(|e| e.fatal || e.key.as_deref().is_some_and(|k| VITAL_KEYS.contains(&k)))
        {
            return Err(vital.clone());
        }
        if errors.is_empty() {
            return Ok(());
        }
        if let Some(d) = dag {
            self.tainted.insert(d);
        }
        for e in errors {
            // A call made inside the stdlib (`DummyOperator(#{ ... })`) has no place in this file:
            // the key is looked for in the whole file.
            let key_pos = match &e.key {
                Some(key) => super::api::locate_key(&self.source, call.unwrap_or(SourcePos::new(1, 1)), key),
                None => None,
            };
            let pos = e.pos.or(key_pos).or(call);
            let mut d = Diagnostic::new(&self.file, pos, e.message).with_source(&self.source);
            d.help = e.help;
            if self.recorded.contains(&d) {
                continue;
            }
            if self.recorded.len() >= MAX_RECORDED {
                self.more_errors += 1;
            } else {
                self.recorded.push(d);
            }
        }
        Ok(())
    }

    /// The recorded errors, in file order, with a count of those past the cap.
    pub fn take_recorded(&mut self) -> Vec<Diagnostic> {
        let mut out = std::mem::take(&mut self.recorded);
        out.sort_by_key(|d| d.pos);
        if self.more_errors > 0 {
            out.push(
                Diagnostic::new(&self.file, None, format!("{} more errors like these", self.more_errors))
                    .with_help("fix the errors above and check again"),
            );
            self.more_errors = 0;
        }
        out
    }

    /// Fails once the file's wall-clock deadline has passed (natives call this; Rhai's progress
    /// hook only runs between script operations).
    pub fn check_deadline(&self) -> ScriptResult<()> {
        if Instant::now() > self.budget.deadline {
            return Err(ScriptError::deadline(self.budget.deadline_ms));
        }
        let held = super::memory::live_bytes().saturating_sub(self.budget.memory_base);
        if held > self.budget.max_memory {
            let mib = usize::try_from(self.budget.max_memory >> 20).unwrap_or(usize::MAX);
            return Err(super::error::memory_error(mib));
        }
        Ok(())
    }

    pub(super) fn spend(&mut self, bytes: usize) -> ScriptResult<()> {
        self.declared_bytes = self.declared_bytes.saturating_add(bytes);
        if self.declared_bytes > self.budget.max_declared_bytes {
            let mib = self.budget.max_declared_bytes >> 20;
            return Err(ScriptError::fatal(format!(
                "this file's DAGs hold more than {mib} MiB (`[core] max_dag_file_memory_mib`)"
            ))
            .with_help(
                "keep large text out of DAG files (read it at run time, or share one copy through `default_args`), \
                 or raise `max_dag_file_memory_mib` under `[core]` in rhaiflow.toml",
            ));
        }
        Ok(())
    }

    pub(super) fn location(&self, pos: Option<SourcePos>) -> String {
        match pos {
            Some(p) => format!("{}:{}:{}", self.file, p.line, p.col),
            None => format!("{} (in the stdlib)", self.file),
        }
    }

    pub fn declare_dag(
        &mut self,
        dag_id: String,
        args: Args,
        default_args: Args,
        pos: Option<SourcePos>,
    ) -> ScriptResult<usize> {
        check_id("dag_id", &dag_id)?;
        self.check_deadline()?;
        self.spend(DAG_OVERHEAD + args.approx_bytes() + default_args.approx_bytes())?;
        if let Some(other) = self.dags.iter().find(|d| d.dag_id == dag_id) {
            return Err(ScriptError::new(format!(
                "DAG `{dag_id}` is declared twice in this file; first at {}",
                self.location(other.pos)
            )));
        }
        let idx = self.dags.len();
        self.dags.push(DagDecl {
            dag_id,
            pos,
            args,
            default_args,
            tasks: Vec::new(),
            task_index: HashMap::new(),
            edges: Vec::new(),
            edge_set: HashSet::new(),
            groups: Vec::new(),
            labels: HashMap::new(),
        });
        self.register_dag_callbacks(idx);
        Ok(idx)
    }

    /// Declares a task from an operator call; `args` are already checked against the operator's keys.
    pub fn declare_task(
        &mut self,
        op: &'static OperatorDef,
        mut args: Args,
        pos: Option<SourcePos>,
    ) -> ScriptResult<TaskHandle> {
        let group = match args.get("task_group") {
            Some(Value::Group(g)) => Some(*g),
            _ => None,
        };
        let dag_idx = match (args.get("dag"), group) {
            (Some(Value::Dag(i)), _) => *i,
            (_, Some(g)) => g.dag,
            _ => self.dags.len().checked_sub(1).ok_or_else(|| {
                let id = args.str("task_id").unwrap_or_default();
                ScriptError::new(format!("task `{id}` has no DAG"))
                    .with_help("declare `let dag = DAG(\"my_dag\", #{ ... });` before the task, or pass `dag: dag`")
            })?,
        };
        let allowed = allowed_keys(op);
        // `timeout` in `default_args` (a DAG's or a group's) is the sensors' (in Airflow only
        // sensors take it), never an `HttpOperator`'s request timeout.
        let fill: Vec<super::args::KeySpec> =
            allowed.iter().filter(|(k, _)| op.sensor || *k != "timeout").copied().collect();
        let task_id =
            args.str("task_id").ok_or_else(|| ScriptError::new(format!("`{}` needs a `task_id`", op.name)))?;
        check_id("task_id", &task_id)?;
        let task_id = match group {
            Some(g) => self.apply_group(g, dag_idx, &task_id, &mut args, &fill)?,
            None => task_id,
        };
        let defaults = self.dags[dag_idx].default_args.clone();
        args.fill_from(&defaults, &fill);
        for key in op.required {
            let alias_given = *key == "callable" && args.given("python_callable");
            if !args.given(key) && !alias_given {
                self.record(vec![ScriptError::new(format!("`{}` `{task_id}` needs `{key}`", op.name))], pos, None)?;
            }
        }
        let dag = &self.dags[dag_idx];
        if let Some(other) = dag.groups.iter().find(|g| g.full_id == task_id) {
            return Err(ScriptError::new(format!(
                "task_id `{task_id}` is the id of a TaskGroup of DAG `{}`, declared at {}",
                dag.dag_id,
                self.location(other.pos)
            )));
        }
        if let Some(&first) = dag.task_index.get(&task_id) {
            return Err(ScriptError::new(format!(
                "duplicate task_id `{task_id}` in DAG `{}`; first declared at {}",
                dag.dag_id,
                self.location(dag.tasks[first].pos)
            ))
            .with_help("every task of a DAG needs its own `task_id`"));
        }
        if dag.tasks.len() >= self.budget.max_tasks_per_dag {
            let max = self.budget.max_tasks_per_dag;
            return Err(ScriptError::fatal(format!(
                "DAG `{}` has more than {max} tasks (`[core] max_tasks_per_dag`)",
                dag.dag_id
            ))
            .with_help("split it into several DAGs, or raise `max_tasks_per_dag` under `[core]` in rhaiflow.toml"));
        }
        let scope = format!("{}.{task_id}", dag.dag_id);
        self.check_deadline()?;
        self.spend(TASK_OVERHEAD + args.approx_bytes())?;
        let (mut spec, errors) = self.task_spec(op, &args, task_id.clone(), &scope);
        self.record(errors, pos, None)?;
        spec.task_group = group.map(|g| self.group_id(g));
        let dag = &mut self.dags[dag_idx];
        let task_idx = dag.tasks.len();
        if let Some(g) = group {
            self.join_group(g, task_idx);
        }
        let dag = &mut self.dags[dag_idx];
        dag.task_index.insert(task_id, task_idx);
        dag.tasks.push(TaskDecl { pos, spec, op, args });
        Ok(TaskHandle { dag: dag_idx, task: task_idx })
    }

    fn callback(&mut self, scope: &str, field: &str, f: Option<FnPtr>) -> Option<CallbackRef> {
        let f = f?;
        let id = format!("{scope}.{field}#{}", f.fn_name());
        self.callbacks.insert(id.clone(), f);
        Some(CallbackRef(id))
    }

    /// The task's spec from its checked arguments, and the errors of values that were out of
    /// range (each replaced by its default, so the file goes on).
    fn task_spec(
        &mut self,
        op: &OperatorDef,
        args: &Args,
        task_id: String,
        scope: &str,
    ) -> (TaskSpec, Vec<ScriptError>) {
        let mut errors = Vec::new();
        let mut keep = |r: ScriptResult<_>, default| {
            r.unwrap_or_else(|e| {
                errors.push(e);
                default
            })
        };
        let retries = keep(
            non_negative(args.int("retries").unwrap_or(0), "retries")
                .and_then(|n| counted(n, "retries").map(i64::from)),
            0,
        );
        let pool_slots = keep(
            positive(args.int("pool_slots").unwrap_or(1), "pool_slots")
                .and_then(|n| counted(n, "pool_slots").map(i64::from)),
            1,
        );
        let priority_weight = keep(priority_weight(args.int("priority_weight").unwrap_or(1)), 1);
        let weight_rule = match args.str("weight_rule") {
            None => WeightRule::Downstream,
            Some(text) => WeightRule::parse(&text).unwrap_or_else(|| {
                let known: Vec<&str> = WeightRule::ALL.iter().map(|(n, _)| *n).collect();
                let hint = nearest(&text, &known).map(|b| format!(" — did you mean `{b}`?")).unwrap_or_default();
                errors.push(
                    ScriptError::new(format!("`weight_rule` must be one of {}, not `{text}`{hint}", known.join(", ")))
                        .at_key("weight_rule"),
                );
                WeightRule::Downstream
            }),
        };
        let trigger_rule = match args.str("trigger_rule") {
            None => Ok(TriggerRule::AllSuccess),
            Some(text) => TriggerRule::parse(&text).ok_or_else(|| {
                let known: Vec<&str> = TriggerRule::ALL.iter().map(|(n, _)| *n).collect();
                let message = format!("unknown trigger_rule `{text}`");
                match nearest(&text, &known) {
                    Some(best) => ScriptError::new(format!("{message} — did you mean `{best}`?")),
                    None => ScriptError::new(message).with_help(format!("trigger rules: {}", known.join(", "))),
                }
                .at_key("trigger_rule")
            }),
        };
        let trigger_rule = trigger_rule.unwrap_or_else(|e| {
            errors.push(e);
            TriggerRule::AllSuccess
        });
        let params = json_object(args.json("params"), "params").unwrap_or_else(|e| {
            errors.push(e.at_key_if_none("params"));
            BTreeMap::new()
        });
        let operator = self.operator(op, args, scope).unwrap_or_else(|e| {
            errors.push(e);
            Operator::EmptyOperator
        });
        let spec = TaskSpec {
            task_id,
            operator,
            owner: args.str("owner").unwrap_or_else(|| self.ctx.default_owner.clone()).into(),
            retries: u32::try_from(retries).unwrap_or(0),
            retry_delay: args.duration("retry_delay").unwrap_or(TimeSpan::from_secs(300)),
            retry_exponential_backoff: args.bool("retry_exponential_backoff").unwrap_or(false),
            max_retry_delay: args.duration("max_retry_delay"),
            execution_timeout: args.duration("execution_timeout"),
            trigger_rule,
            depends_on_past: args.bool("depends_on_past").unwrap_or(false),
            pool: args.str("pool").map_or_else(|| "default_pool".into(), Arc::from),
            pool_slots: u32::try_from(pool_slots).unwrap_or(1),
            priority_weight,
            weight_rule,
            queue: args.str("queue").map_or_else(|| "default".into(), Arc::from),
            email: args.str_list("email").unwrap_or_default(),
            email_on_failure: args.bool("email_on_failure").unwrap_or(true),
            email_on_retry: args.bool("email_on_retry").unwrap_or(true),
            ding_on_failure: args.bool("ding_on_failure").unwrap_or(false),
            ding_on_retry: args.bool("ding_on_retry").unwrap_or(false),
            alert_on_failure: args.str_list("alert_on_failure").unwrap_or_default(),
            alert_on_retry: args.str_list("alert_on_retry").unwrap_or_default(),
            alert_on_success: args.str_list("alert_on_success").unwrap_or_default(),
            on_failure_callback: self.callback(scope, "on_failure_callback", args.closure("on_failure_callback")),
            on_retry_callback: self.callback(scope, "on_retry_callback", args.closure("on_retry_callback")),
            on_success_callback: self.callback(scope, "on_success_callback", args.closure("on_success_callback")),
            params,
            doc_md: args.str("doc_md"),
            upstream: Vec::new(),
            task_group: None,
        };
        (spec, errors)
    }

    fn operator(&mut self, op: &OperatorDef, args: &Args, scope: &str) -> ScriptResult<Operator> {
        let s = |key: &str| args.str(key).unwrap_or_default();
        let list = |key: &str| args.str_list(key).unwrap_or_default();
        let operator = match op.name {
            "EmptyOperator" => Operator::EmptyOperator,
            "LatestOnlyOperator" => Operator::LatestOnlyOperator,
            "BashOperator" => Operator::BashOperator {
                bash_command: s("bash_command"),
                env: args.str_map("env").unwrap_or_default(),
                append_env: args.bool("append_env").unwrap_or(false),
                cwd: args.str("cwd"),
                skip_on_exit_code: args
                    .int_list("skip_on_exit_code")
                    .unwrap_or_else(|| vec![99])
                    .into_iter()
                    .map(exit_code)
                    .collect::<ScriptResult<_>>()?,
            },
            "RhaiOperator" | "BranchOperator" | "ShortCircuitOperator" => {
                let f = args.closure("callable").or_else(|| args.closure("python_callable"));
                let callable = self.callback(scope, "callable", f).unwrap_or(CallbackRef(String::new()));
                match op.name {
                    "RhaiOperator" => Operator::RhaiOperator {
                        callable,
                        op_args: match args.json("op_args") {
                            None | Some(serde_json::Value::Null) => Vec::new(),
                            Some(serde_json::Value::Array(items)) => items,
                            Some(other) => {
                                return Err(ScriptError::new(format!("`op_args` must be an array, not `{other}`"))
                                    .at_key("op_args"));
                            }
                        },
                        op_kwargs: json_object(args.json("op_kwargs"), "op_kwargs")
                            .map_err(|e| e.at_key("op_kwargs"))?,
                    },
                    "BranchOperator" => Operator::BranchOperator { callable },
                    _ => Operator::ShortCircuitOperator {
                        callable,
                        ignore_downstream_trigger_rules: args.bool("ignore_downstream_trigger_rules").unwrap_or(true),
                    },
                }
            }
            "PythonOperator" => Operator::PythonOperator(Box::new(python_operator(args)?)),
            "EmailOperator" => Operator::EmailOperator(Box::new(EmailSpec {
                to: list("to"),
                subject: s("subject"),
                html_content: s("html_content"),
                cc: list("cc"),
                bcc: list("bcc"),
                files: list("files"),
            })),
            "HttpOperator" => Operator::HttpOperator(Box::new(HttpSpec {
                http_conn_id: args.str("http_conn_id"),
                endpoint: s("endpoint"),
                method: http_method(args.str("method"), "POST")?,
                data: args.body("data"),
                headers: args.str_map("headers").unwrap_or_default(),
                response_check: self.callback(scope, "response_check", args.closure("response_check")),
                response_filter: self.callback(scope, "response_filter", args.closure("response_filter")),
                timeout: http_timeout(args.duration("timeout"))?,
            })),
            "DingdingOperator" => {
                let message_type = one_of(
                    args.str("message_type"),
                    "message_type",
                    &["text", "link", "markdown", "actionCard", "feedCard"],
                )?;
                let message = args.body("message").unwrap_or_default();
                chat_message("message", &message_type, &message, &["text", "markdown"])?;
                Operator::DingdingOperator(Box::new(DingdingSpec {
                    dingding_conn_id: args.str("dingding_conn_id"),
                    message_type,
                    message,
                    at_mobiles: list("at_mobiles"),
                    at_user_ids: list("at_user_ids"),
                    at_all: args.bool("at_all").unwrap_or(false),
                }))
            }
            "SlackWebhookOperator" => Operator::SlackWebhookOperator(Box::new(SlackSpec {
                slack_webhook_conn_id: args.str("slack_webhook_conn_id"),
                message: args.str("message").unwrap_or_default(),
                channel: args.str("channel"),
                username: args.str("username"),
                icon_emoji: args.str("icon_emoji"),
                icon_url: args.str("icon_url"),
                blocks: args.json("blocks"),
                attachments: args.json("attachments"),
            })),
            "FeishuOperator" => {
                let message_type = one_of(
                    args.str("message_type"),
                    "message_type",
                    &["text", "post", "interactive", "share_chat", "image"],
                )?;
                let message = args.body("message").unwrap_or_default();
                chat_message("message", &message_type, &message, &["text"])?;
                Operator::FeishuOperator(Box::new(FeishuSpec {
                    feishu_conn_id: args.str("feishu_conn_id"),
                    message_type,
                    message,
                }))
            }
            "WeComOperator" => Operator::WeComOperator(Box::new(WeComSpec {
                wecom_conn_id: args.str("wecom_conn_id"),
                message_type: one_of(args.str("message_type"), "message_type", &["markdown", "text"])?,
                message: s("message"),
                mentioned_list: list("mentioned_list"),
                mentioned_mobile_list: list("mentioned_mobile_list"),
            })),
            "TriggerDagRunOperator" => Operator::TriggerDagRunOperator(Box::new(TriggerSpec {
                trigger_dag_id: s("trigger_dag_id"),
                trigger_run_id: args.str("trigger_run_id"),
                conf: trigger_conf(args.json("conf"))?,
                // `execution_date`: Airflow 2's deprecated name, still accepted by 2.10.
                logical_date: args.str("logical_date").or_else(|| args.str("execution_date")),
                reset_dag_run: args.bool("reset_dag_run").unwrap_or(false),
                wait_for_completion: args.bool("wait_for_completion").unwrap_or(false),
                poke_interval: args.duration("poke_interval").unwrap_or(TimeSpan::from_secs(60)),
                allowed_states: run_states(args.str_list("allowed_states"), "allowed_states", DagRunState::Success)?,
                failed_states: run_states(args.str_list("failed_states"), "failed_states", DagRunState::Failed)?,
                skip_when_already_exists: args.bool("skip_when_already_exists").unwrap_or(false),
            })),
            sensor => {
                let kind = match sensor {
                    "FileSensor" => {
                        SensorKind::File { filepath: s("filepath"), recursive: args.bool("recursive").unwrap_or(false) }
                    }
                    "BashSensor" => SensorKind::Bash { bash_command: s("bash_command") },
                    "HttpSensor" => SensorKind::Http {
                        http_conn_id: args.str("http_conn_id"),
                        endpoint: s("endpoint"),
                        method: http_method(args.str("method"), "GET")?,
                        response_check: self.callback(scope, "response_check", args.closure("response_check")),
                        headers: args.str_map("headers").unwrap_or_default(),
                        request_params: args.body("request_params"),
                        response_error_codes_allowlist: match args.str_list("response_error_codes_allowlist") {
                            Some(codes) => http_statuses(&codes, "response_error_codes_allowlist")?,
                            None => crate::model::default_allowlist(),
                        },
                    },
                    "ExternalTaskSensor" => external_task_sensor(args)?,
                    "TimeDeltaSensor" => SensorKind::TimeDelta { delta: args.duration("delta").unwrap_or_default() },
                    _ => SensorKind::DateTime { target_time: s("target_time") },
                };
                let mode = match one_of(args.str("mode"), "mode", &["poke", "reschedule"])?.as_str() {
                    "reschedule" => SensorMode::Reschedule,
                    _ => SensorMode::Poke,
                };
                Operator::Sensor(Box::new(SensorSpec {
                    kind,
                    poke_interval: args.duration("poke_interval").unwrap_or(TimeSpan::from_secs(60)),
                    timeout: args.duration("timeout").unwrap_or(TimeSpan::from_secs(7 * 86_400)),
                    mode,
                    soft_fail: args.bool("soft_fail").unwrap_or(false),
                    exponential_backoff: args.bool("exponential_backoff").unwrap_or(false),
                    max_wait: args.duration("max_wait"),
                }))
            }
        };
        Ok(operator)
    }

    /// `dag.doc_md = "..."`: a DAG argument set while the file evaluates, checked as the keyword
    /// would be. A bad key or value is recorded (the DAG is then not built) and the file goes on.
    pub fn set_dag_property(
        &mut self,
        dag: usize,
        key: &str,
        value: Dynamic,
        pos: Option<SourcePos>,
    ) -> ScriptResult<()> {
        if key == "dag_id" {
            return Err(ScriptError::new("`dag_id` cannot change once the DAG is declared")
                .with_help("give the id to `DAG(\"my_dag\", #{ ... })`"));
        }
        self.check_deadline()?;
        let mut map = Map::new();
        map.insert(key.into(), value);
        if key == "default_args" {
            let raw = match map.get(key).and_then(|v| v.clone().try_cast::<Map>()) {
                Some(raw) => raw,
                None => {
                    let (_, errors) = Args::check(&map, DAG_KEYS, "DAG");
                    return self.record(here(errors, pos), pos, Some(dag));
                }
            };
            let (defaults, errors) = Args::check(&raw, &super::args::default_args_keys(), "default_args");
            self.spend(defaults.approx_bytes())?;
            self.dags[dag].default_args = defaults;
            return self.record(here(errors, pos), pos, Some(dag));
        }
        let (args, mut errors) = Args::check(&map, DAG_KEYS, "DAG");
        if let Some(tz) = args.str("timezone")
            && let Err(e) = parse_timezone(&tz)
        {
            errors.push(e.at_key("timezone"));
        }
        self.spend(args.approx_bytes())?;
        if errors.is_empty() {
            let decl = &mut self.dags[dag];
            // The later of `schedule` and `schedule_interval` wins.
            match key {
                "schedule" => drop(decl.args.take("schedule_interval")),
                "schedule_interval" => drop(decl.args.take("schedule")),
                _ => {}
            }
            decl.args.merge(args);
            if key.ends_with("_callback") {
                let prefix = format!("{}.{key}#", decl.dag_id);
                self.callbacks.retain(|id, _| !id.starts_with(&prefix));
                self.register_dag_callbacks(dag);
            }
        }
        self.record(here(errors, pos), pos, Some(dag))
    }

    /// `dag.description`: the value given (in `DAG(...)` or set since), or `()`.
    pub fn dag_property(&self, dag: usize, key: &str) -> ScriptResult<Dynamic> {
        if !DAG_KEYS.iter().any(|(k, _)| *k == key) {
            return Err(super::args::unknown_key(key, "DAG", DAG_KEYS));
        }
        let decl = &self.dags[dag];
        Ok(match key {
            "dag_id" => decl.dag_id.clone().into(),
            _ => decl.args.value(key).map_or(Dynamic::UNIT, Value::to_dynamic),
        })
    }

    /// `task.retries = 3`: a task argument set while the file evaluates, checked as the keyword
    /// would be; the task's spec is rebuilt from its arguments.
    pub fn set_task_property(
        &mut self,
        task: TaskHandle,
        key: &str,
        value: Dynamic,
        pos: Option<SourcePos>,
    ) -> ScriptResult<()> {
        if key == "task_id" || key == "dag" || key == "task_group" {
            return Err(ScriptError::new(format!("`{key}` cannot change once the task is declared"))
                .with_help("give it to the operator: `BashOperator(#{ task_id: \"t\", ... })`"));
        }
        self.check_deadline()?;
        let decl = &self.dags[task.dag].tasks[task.task];
        let op = decl.op;
        let mut map = Map::new();
        map.insert(key.into(), value);
        let (args, errors) = Args::check(&map, &allowed_keys(op), op.name);
        if !errors.is_empty() {
            return self.record(here(errors, pos), pos, None);
        }
        let mut merged = decl.args.clone();
        let task_id = decl.spec.task_id.clone();
        self.spend(args.approx_bytes())?;
        merged.merge(args);
        let scope = format!("{}.{task_id}", self.dags[task.dag].dag_id);
        if key.ends_with("_callback") || key.ends_with("callable") || key == "response_check" {
            let prefix = format!("{scope}.");
            self.callbacks.retain(|id, _| !id.starts_with(&prefix));
        }
        let (mut spec, errors) = self.task_spec(op, &merged, task_id, &scope);
        if !errors.is_empty() {
            // The task keeps its earlier value, so the error is reported once, here.
            return self.record(here(errors, pos), pos, None);
        }
        let decl = &mut self.dags[task.dag].tasks[task.task];
        spec.task_group = decl.spec.task_group.take();
        decl.spec = spec;
        decl.args = merged;
        Ok(())
    }

    /// `task.retries`: the value given (to the operator, by `default_args`, or set since), or `()`.
    pub fn task_property(&self, task: TaskHandle, key: &str) -> ScriptResult<Dynamic> {
        let decl = &self.dags[task.dag].tasks[task.task];
        let allowed = allowed_keys(decl.op);
        if !allowed.iter().any(|(k, _)| *k == key) {
            return Err(super::args::unknown_key(key, decl.op.name, &allowed));
        }
        Ok(match key {
            "task_id" => decl.spec.task_id.clone().into(),
            "dag" => Dynamic::from(super::args::DagHandle(task.dag)),
            _ => decl.args.value(key).map_or(Dynamic::UNIT, Value::to_dynamic),
        })
    }

    /// `up >> down`. Both must be tasks of the same DAG.
    pub fn add_edge(&mut self, up: TaskHandle, down: TaskHandle, pos: Option<SourcePos>) -> ScriptResult<()> {
        let name = |h: TaskHandle| &self.dags[h.dag].tasks[h.task].spec.task_id;
        if up.dag != down.dag {
            return Err(ScriptError::new(format!(
                "cannot make `{}` (DAG `{}`) upstream of `{}` (DAG `{}`): dependencies join tasks of one DAG",
                name(up),
                self.dags[up.dag].dag_id,
                name(down),
                self.dags[down.dag].dag_id
            ))
            .with_help("to wait for another DAG, use `ExternalTaskSensor` or `TriggerDagRunOperator`"));
        }
        if up == down {
            return Err(ScriptError::new(format!("task `{}` cannot depend on itself", name(up))));
        }
        self.since_clock += 1;
        if self.since_clock >= 256 {
            self.since_clock = 0;
            self.check_deadline()?;
        }
        let max = self.budget.max_edges_per_dag;
        let dag = &mut self.dags[up.dag];
        if dag.edge_set.contains(&(up.task, down.task)) {
            return Ok(());
        }
        if dag.edges.len() >= max {
            return Err(ScriptError::fatal(format!(
                "DAG `{}` has more than {max} dependencies (`[core] max_edges_per_dag`)",
                dag.dag_id
            ))
            .with_help(
                "join two large groups through one `EmptyOperator` instead of every pair, \
                 or raise `max_edges_per_dag` under `[core]` in rhaiflow.toml",
            ));
        }
        dag.edge_set.insert((up.task, down.task));
        dag.edges.push((up.task, down.task, pos));
        self.spend(EDGE_OVERHEAD)
    }

    pub fn task_label(&self, h: TaskHandle) -> String {
        let t = &self.dags[h.dag].tasks[h.task].spec;
        format!("<Task({}): {}>", t.operator.name(), t.task_id)
    }

    pub fn task_id(&self, h: TaskHandle) -> String {
        self.dags[h.dag].tasks[h.task].spec.task_id.clone()
    }

    /// Turns every declaration into a `DagSpec`; a DAG that cannot be built becomes a diagnostic.
    /// A DAG whose arguments had recorded errors is still built, for its graph and template
    /// checks, but its build errors are dropped (they would cascade from those).
    pub fn finish(mut self) -> (Vec<DeclaredDag>, Vec<Diagnostic>) {
        let mut dags = Vec::new();
        let mut diagnostics = self.take_recorded();
        for (i, decl) in self.dags.iter().enumerate() {
            let tainted = self.tainted.contains(&i);
            match self.build_dag(decl) {
                Ok(d) => dags.push(DeclaredDag { tainted, ..d }),
                // A DAG whose arguments had errors fails to build because of them: said already.
                Err(_) if tainted => {}
                Err(e) => {
                    let key_pos = match (&e.key, decl.pos) {
                        (Some(key), Some(from)) => super::api::locate_key(&self.source, from, key),
                        _ => None,
                    };
                    let pos = e.pos.or(key_pos).or(decl.pos);
                    let mut d = Diagnostic::new(&self.file, pos, e.message).with_source(&self.source);
                    d.help = e.help;
                    diagnostics.push(d);
                }
            }
        }
        (dags, diagnostics)
    }

    fn build_dag(&self, decl: &DagDecl) -> ScriptResult<DeclaredDag> {
        if decl.tasks.is_empty() {
            return Err(ScriptError::new(format!("DAG `{}` has no tasks", decl.dag_id))
                .with_help("declare tasks after the DAG, or pass `dag: dag` to each operator"));
        }
        let args = &decl.args;
        let default_tz = self.ctx.default_timezone;
        let start = args.datetime("start_date").or_else(|| decl.default_args.datetime("start_date"));
        let end = args.datetime("end_date").or_else(|| decl.default_args.datetime("end_date"));
        // A fixed offset no IANA zone holds (`+05:30`) is kept as that offset.
        let timezone = match args.str("timezone") {
            Some(name) => TimeZoneSpec::Named(parse_timezone(&name)?.name().to_string()),
            None => match start.and_then(|s| s.offset) {
                Some(off) => match offset_zone(off) {
                    Some(tz) => TimeZoneSpec::Named(tz.name().to_string()),
                    None => TimeZoneSpec::Offset(off.local_minus_utc()),
                },
                None => TimeZoneSpec::Named(default_tz.name().to_string()),
            },
        };
        let resolve = |v: Option<super::values::DateTimeValue>, key: &str| -> ScriptResult<Option<DateTime<Utc>>> {
            let Some(v) = v else { return Ok(None) };
            let at = match &timezone {
                TimeZoneSpec::Named(name) => v.resolve(&name.parse::<chrono_tz::Tz>().unwrap_or(default_tz)),
                TimeZoneSpec::Offset(secs) => chrono::FixedOffset::east_opt(*secs).and_then(|off| v.resolve(&off)),
            };
            at.map(Some).ok_or_else(|| {
                ScriptError::new(format!("`{key}` does not exist in time zone `{timezone}` (a DST gap?)")).at_key(key)
            })
        };
        let schedule = match args.get("schedule").or_else(|| args.get("schedule_interval")) {
            None => ScheduleSpec::Cron { expr: "0 0 * * *".into(), preset: Some("@daily".into()) },
            Some(Value::Schedule(None)) => ScheduleSpec::None,
            Some(Value::Schedule(Some(ScheduleArg::Every(every)))) => {
                if every.as_millis() == 0 {
                    return Err(ScriptError::new("`schedule` interval must be longer than zero"));
                }
                ScheduleSpec::Interval { every: *every }
            }
            Some(Value::Schedule(Some(ScheduleArg::Text(text)))) => schedule_text(text),
            Some(_) => ScheduleSpec::None,
        };
        let mut tasks: Vec<TaskSpec> = decl.tasks.iter().map(|t| t.spec.clone()).collect();
        let mut source_map = SourceMap { dag: decl.pos, ..SourceMap::default() };
        for (up, down, pos) in &decl.edges {
            let up_id = tasks[*up].task_id.clone();
            tasks[*down].upstream.push(up_id.clone());
            source_map.edges.insert((up_id, tasks[*down].task_id.clone()), *pos);
        }
        for (t, decl_task) in tasks.iter_mut().zip(&decl.tasks) {
            t.upstream.sort();
            source_map.tasks.insert(t.task_id.clone(), decl_task.pos);
        }
        let (task_groups, edge_labels) = self.group_specs(decl);
        let spec = DagSpec {
            dag_id: decl.dag_id.clone(),
            fileloc: self.file.clone(),
            description: args.str("description"),
            schedule,
            start_date: resolve(start, "start_date")?,
            end_date: resolve(end, "end_date")?,
            timezone,
            catchup: args.bool("catchup").unwrap_or(self.ctx.catchup_by_default),
            tags: args.str_list("tags").unwrap_or_default(),
            max_active_runs: counted(
                positive(args.int("max_active_runs").unwrap_or(16), "max_active_runs")?,
                "max_active_runs",
            )?,
            max_active_tasks: counted(
                positive(args.int("max_active_tasks").unwrap_or(16), "max_active_tasks")?,
                "max_active_tasks",
            )?,
            params: json_object(args.json("params"), "params")?,
            dagrun_timeout: args.duration("dagrun_timeout"),
            on_failure_callback: self.callback_ref(&decl.dag_id, "on_failure_callback"),
            on_success_callback: self.callback_ref(&decl.dag_id, "on_success_callback"),
            doc_md: args.str("doc_md"),
            tasks,
            task_groups,
            edge_labels,
            owner_memo: Default::default(),
        };
        if let (Some(s), Some(e)) = (spec.start_date, spec.end_date)
            && e < s
        {
            return Err(ScriptError::new(format!("DAG `{}` ends ({e}) before it starts ({s})", spec.dag_id)));
        }
        Ok(DeclaredDag { spec, source_map, tainted: false })
    }

    /// DAG-level callbacks are registered when the DAG is declared; this finds them again.
    fn callback_ref(&self, dag_id: &str, field: &str) -> Option<CallbackRef> {
        let prefix = format!("{dag_id}.{field}#");
        self.callbacks.keys().find(|k| k.starts_with(&prefix)).cloned().map(CallbackRef)
    }

    fn register_dag_callbacks(&mut self, dag: usize) {
        let dag_id = self.dags[dag].dag_id.clone();
        for field in ["on_failure_callback", "on_success_callback"] {
            let f = self.dags[dag].args.closure(field);
            self.callback(&dag_id, field, f);
        }
    }
}

/// Errors of a property set point at the property, not at a `key:` elsewhere in the file.
fn here(errors: Vec<ScriptError>, pos: Option<SourcePos>) -> Vec<ScriptError> {
    errors.into_iter().map(|e| ScriptError { pos: e.pos.or(pos), key: None, ..e }).collect()
}

/// The keys one operator accepts.
pub fn allowed_keys(op: &OperatorDef) -> Vec<super::args::KeySpec> {
    let mut keys = TASK_KEYS.to_vec();
    if op.sensor {
        keys.extend_from_slice(SENSOR_KEYS);
    }
    keys.extend_from_slice(op.keys);
    keys
}

pub fn dag_keys() -> &'static [super::args::KeySpec] {
    DAG_KEYS
}

fn schedule_text(text: &str) -> ScheduleSpec {
    let preset = |expr: &str| ScheduleSpec::Cron { expr: expr.into(), preset: Some(text.trim().to_string()) };
    match text.trim() {
        "@once" => ScheduleSpec::Once,
        "None" | "" => ScheduleSpec::None,
        "@hourly" => preset("0 * * * *"),
        "@daily" | "@midnight" => preset("0 0 * * *"),
        "@weekly" => preset("0 0 * * 0"),
        "@monthly" => preset("0 0 1 * *"),
        "@quarterly" => preset("0 0 1 */3 *"),
        "@yearly" | "@annually" => preset("0 0 1 1 *"),
        expr => ScheduleSpec::Cron { expr: expr.to_string(), preset: None },
    }
}

/// An IANA time zone name, with a suggestion when it is misspelt.
pub fn parse_timezone(name: &str) -> ScriptResult<chrono_tz::Tz> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        let known: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect();
        let message = format!("unknown time zone `{name}`");
        match nearest(name, &known) {
            Some(best) => ScriptError::new(format!("{message} — did you mean `{best}`?")),
            None => ScriptError::new(message).with_help("use an IANA name such as `UTC` or `Asia/Shanghai`"),
        }
    })
}

/// A whole-hour fixed offset as the `Etc/GMT` zone that holds it (its sign is inverted by POSIX).
fn offset_zone(off: chrono::FixedOffset) -> Option<chrono_tz::Tz> {
    let secs = off.fix().local_minus_utc();
    if secs % 3600 != 0 {
        return None;
    }
    let hours = secs / 3600;
    let name = match hours {
        0 => "UTC".to_string(),
        h if h > 0 => format!("Etc/GMT-{h}"),
        h => format!("Etc/GMT+{}", -h),
    };
    name.parse().ok()
}

fn http_method(given: Option<String>, default: &str) -> ScriptResult<String> {
    let method = given.unwrap_or_else(|| default.to_string()).to_ascii_uppercase();
    one_of(Some(method), "method", &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
}

/// An HTTP request's `timeout`: more than nothing, at most an hour (a longer wait is a sensor's job).
fn http_timeout(given: Option<TimeSpan>) -> ScriptResult<Option<TimeSpan>> {
    match given {
        Some(t) if t == TimeSpan::ZERO || t > TimeSpan::from_secs(3600) => {
            Err(ScriptError::new(format!("`timeout` must be more than 0 seconds and at most 1 hour, not {t}"))
                .with_help(
                    "wait longer with an `HttpSensor`, or raise `execution_timeout` for a slow answer up to an hour",
                )
                .at_key("timeout"))
        }
        other => Ok(other),
    }
}

/// HTTP status codes written as Airflow's strings (`["404", "409"]`).
fn http_statuses(codes: &[String], key: &str) -> ScriptResult<Vec<u16>> {
    codes
        .iter()
        .map(|code| {
            code.trim().parse::<u16>().ok().filter(|c| (100..=599).contains(c)).ok_or_else(|| {
                ScriptError::new(format!("`{key}` holds `{code}`, which is not an HTTP status code (100 to 599)"))
                    .at_key(key)
            })
        })
        .collect()
}

/// A chat operator's `message`: a string for the types in `text_types` (a map with `text` too,
/// as Airflow's `markdown` takes `{title, text}`), else a map (the service's own object).
fn chat_message(key: &str, message_type: &str, message: &serde_json::Value, text_types: &[&str]) -> ScriptResult<()> {
    match message {
        serde_json::Value::String(_) if text_types.contains(&message_type) => Ok(()),
        // Missing: reported as a missing required key already.
        serde_json::Value::Object(_) | serde_json::Value::Null => Ok(()),
        serde_json::Value::String(_) => {
            Err(ScriptError::new(format!("a `{message_type}` message is a map (the service's fields), not a string"))
                .at_key(key))
        }
        _ => Err(ScriptError::new("`message` must be a string or a map").at_key(key)),
    }
}

fn one_of(given: Option<String>, key: &str, allowed: &[&str]) -> ScriptResult<String> {
    let Some(value) = given else { return Ok(allowed[0].to_string()) };
    if allowed.contains(&value.as_str()) {
        return Ok(value);
    }
    let hint = nearest(&value, allowed).map(|b| format!(" — did you mean `{b}`?")).unwrap_or_default();
    Err(ScriptError::new(format!("`{key}` must be one of {}, not `{value}`{hint}", allowed.join(", "))).at_key(key))
}

/// `TriggerDagRunOperator`'s `conf`: a map (its strings are templates), or a template string that
/// renders to a JSON object; nothing given is `{}`.
fn trigger_conf(conf: Option<serde_json::Value>) -> ScriptResult<serde_json::Value> {
    match conf {
        None | Some(serde_json::Value::Null) => Ok(serde_json::json!({})),
        Some(c @ (serde_json::Value::Object(_) | serde_json::Value::String(_))) => Ok(c),
        Some(other) => Err(ScriptError::new(format!(
            "`conf` must be a map like `#{{ key: \"value\" }}` (or a template that renders to a JSON object), not `{other}`"
        ))
        .at_key("conf")),
    }
}

/// DAG run states (`allowed_states`, `failed_states` of `TriggerDagRunOperator`); `default` when
/// not given.
fn run_states(given: Option<Vec<String>>, key: &str, default: DagRunState) -> ScriptResult<Vec<DagRunState>> {
    let Some(given) = given else { return Ok(vec![default]) };
    let names: Vec<&str> = DagRunState::ALL.iter().map(|s| s.as_str()).collect();
    given
        .iter()
        .map(|name| {
            name.parse::<DagRunState>().map_err(|_| {
                let hint = nearest(name, &names).map(|b| format!(" — did you mean `{b}`?")).unwrap_or_default();
                ScriptError::new(format!(
                    "`{key}` holds `{name}`, which is not a DAG run state ({}){hint}",
                    names.join(", ")
                ))
                .at_key(key)
            })
        })
        .collect()
}

fn non_negative(n: i64, key: &str) -> ScriptResult<i64> {
    if n < 0 {
        return Err(ScriptError::new(format!("`{key}` must be zero or more, not {n}")).at_key(key));
    }
    Ok(n)
}

fn positive(n: i64, key: &str) -> ScriptResult<i64> {
    if n < 1 {
        return Err(ScriptError::new(format!("`{key}` must be at least 1, not {n}")).at_key(key));
    }
    Ok(n)
}

/// A count stored as `u32`: out of range is an error at the key, never a wrapped value.
fn counted(n: i64, key: &str) -> ScriptResult<u32> {
    u32::try_from(n).map_err(|_| ScriptError::new(format!("`{key}` must be at most {}, not {n}", u32::MAX)).at_key(key))
}

/// Airflow keeps priority weights in 32 bits; so do we, so sums over a DAG cannot overflow.
fn priority_weight(n: i64) -> ScriptResult<i64> {
    if i32::try_from(n).is_err() {
        let message = format!("`priority_weight` must be between {} and {}, not {n}", i32::MIN, i32::MAX);
        return Err(ScriptError::new(message).at_key("priority_weight"));
    }
    Ok(n)
}

fn exit_code(code: i64) -> ScriptResult<i32> {
    match i32::try_from(code) {
        Ok(c) if (0..=255).contains(&c) => Ok(c),
        _ => Err(ScriptError::new(format!("`skip_on_exit_code` holds {code}, which is not an exit code (0 to 255)"))
            .at_key("skip_on_exit_code")),
    }
}

/// `PythonOperator`'s arguments: `python_callable` as `module:function`, `op_args` an array,
/// `op_kwargs` and `templates_dict` maps, `python` not empty.
fn python_operator(args: &Args) -> ScriptResult<PythonSpec> {
    // Without one (missing, or not a string) the key's own error is already reported.
    let python_callable = args.str("python_callable").unwrap_or_default();
    if args.str("python_callable").is_some() && PythonSpec::split_callable(&python_callable).is_none() {
        return Err(ScriptError::new(format!(
            "`python_callable` must be \"module:function\" (a Python module beside the DAG file, or a dotted \
             module name, then `:` and the function's name), not `{python_callable}`"
        ))
        .with_help(
            "e.g. `python_callable: \"etl_tasks:load\"` for `def load(...)` in `etl_tasks.py` next to the DAG file",
        )
        .at_key("python_callable"));
    }
    let op_args = match args.json("op_args") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => items,
        Some(other) => {
            return Err(ScriptError::new(format!("`op_args` must be an array, not `{other}`")).at_key("op_args"));
        }
    };
    let templates_dict = match args.json("templates_dict") {
        None | Some(serde_json::Value::Null) => None,
        value => Some(json_object(value, "templates_dict").map_err(|e| e.at_key("templates_dict"))?),
    };
    let python = args.str("python").unwrap_or_else(|| "python3".into());
    if python.trim().is_empty() {
        return Err(ScriptError::new("`python` must name an interpreter, such as \"python3\"").at_key("python"));
    }
    Ok(PythonSpec {
        python_callable,
        op_args,
        op_kwargs: json_object(args.json("op_kwargs"), "op_kwargs").map_err(|e| e.at_key("op_kwargs"))?,
        templates_dict,
        python,
        requirements: args.str_list("requirements").unwrap_or_default(),
        show_return_value_in_logs: args.bool("show_return_value_in_logs").unwrap_or(true),
        multiple_outputs: args.bool("multiple_outputs").unwrap_or(false),
        branch: args.bool("branch").unwrap_or(false),
        short_circuit: args.bool("short_circuit").unwrap_or(false),
    })
}

fn json_object(value: Option<serde_json::Value>, key: &str) -> ScriptResult<BTreeMap<String, serde_json::Value>> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(BTreeMap::new()),
        Some(serde_json::Value::Object(map)) => Ok(map.into_iter().collect()),
        Some(other) => Err(ScriptError::new(format!("`{key}` must be a map, not `{other}`"))),
    }
}

/// `ExternalTaskSensor`'s arguments, checked as Airflow checks them: one of `external_task_id`
/// and `external_task_ids`, states of task instances when tasks are named (of the DAG run when the
/// whole run is awaited), and no state in two of the lists.
fn external_task_sensor(args: &Args) -> ScriptResult<SensorKind> {
    let one = args.str("external_task_id");
    let many = args.str_list("external_task_ids");
    let external_task_ids = match (one, many) {
        (Some(_), Some(_)) => {
            return Err(ScriptError::new("give one of `external_task_id` and `external_task_ids`, not both")
                .at_key("external_task_ids"));
        }
        (Some(id), None) => vec![id],
        (None, Some(ids)) => {
            if let Some(dup) = ids.iter().enumerate().find(|(i, id)| ids[..*i].contains(id)).map(|(_, id)| id) {
                return Err(
                    ScriptError::new(format!("`external_task_ids` names `{dup}` twice")).at_key("external_task_ids")
                );
            }
            ids
        }
        (None, None) => Vec::new(),
    };
    let valid: &[&str] = if external_task_ids.is_empty() {
        &["queued", "running", "success", "failed"]
    } else {
        &[
            "none",
            "scheduled",
            "queued",
            "running",
            "success",
            "failed",
            "up_for_retry",
            "up_for_reschedule",
            "upstream_failed",
            "skipped",
            "removed",
        ]
    };
    let whose = if external_task_ids.is_empty() { "DAG run" } else { "task instance" };
    let mut lists = Vec::new();
    for (key, default) in
        [("allowed_states", vec!["success".to_string()]), ("failed_states", vec![]), ("skipped_states", vec![])]
    {
        let states = args.str_list(key).unwrap_or(default);
        for state in &states {
            if !valid.contains(&state.as_str()) {
                let hint = nearest(state, valid).map(|b| format!(" — did you mean `{b}`?")).unwrap_or_default();
                return Err(ScriptError::new(format!(
                    "`{key}` holds `{state}`, which is not a {whose} state; valid: {}{hint}",
                    valid.join(", ")
                ))
                .at_key(key));
            }
        }
        lists.push((key, states));
    }
    for (i, (key, states)) in lists.iter().enumerate() {
        for (other, others) in &lists[..i] {
            if let Some(state) = states.iter().find(|s| others.contains(s)) {
                return Err(ScriptError::new(format!("`{state}` is in both `{other}` and `{key}`")).at_key(key));
            }
        }
    }
    let mut lists = lists.into_iter().map(|(_, states)| states);
    Ok(SensorKind::ExternalTask {
        external_dag_id: args.str("external_dag_id").unwrap_or_default(),
        external_task_ids,
        allowed_states: lists.next().unwrap_or_default(),
        failed_states: lists.next().unwrap_or_default(),
        skipped_states: lists.next().unwrap_or_default(),
        execution_delta: args.duration("execution_delta"),
        check_existence: args.bool("check_existence").unwrap_or(false),
    })
}
