//! The operators: what each task type does when it runs, behind one seam.
//!
//! An operator is its spec (a `model::Operator` variant: plain data), its syntax (keys and spec
//! builder, in `script::args::OPERATORS`, because the DAG language is the script host's), and its
//! runner: one module here and one line in [`RUNNERS`]. A runner gets a [`TaskRun`] (the queued
//! task, its template context, its log, the shared [`Env`]) and answers a [`Start`]: a gated
//! process whose group the claim records before it runs (bash, bash sensors, python), work to do in this
//! process once claimed (everything else), or an outcome decided before the claim (a template
//! error). The worker owns what is generic: claiming, heartbeats, `execution_timeout`, the log's
//! header and end lines, and turning the one [`Outcome`] type into a state.
//!
//! Operators that need more than the executor — the store (XCom, other DAGs' runs), the scheduler
//! (a new run starts at once) — reach it through [`Env`], which the worker fills from its own parts:
//! a `Store` and a `wake` function, never the scheduler or `app` themselves (the layer rule).

mod bash;
mod bash_sensor;
mod branch;
pub mod closure;
mod context;
mod dingding;
mod email;
mod empty;
mod external_task_sensor;
mod feishu;
mod file_sensor;
pub mod http;
mod latest_only;
pub mod notify;
mod python;
#[path = "rhai.rs"]
mod rhai_op;
pub mod sensor;
mod slack;
mod time_sensor;
mod trigger_dagrun;
mod wecom;

pub use bash::{bash_run, command_line, context_env, exit_outcome, process_end, process_outcome};
pub use context::{mask_secrets, schedule_neighbours, secrets, template_context};
pub use notify::{MailRequest, Notification, Notify, Origin};
pub use trigger_dagrun::{TriggerError, TriggerRequest, TriggerRuns, Triggered};

use crate::executor::RunningBash;
use crate::executor::template::TemplateContext;
use crate::model::{Operator, QueuedTask, TiKey};
use crate::script::{EvalContext, ScriptLimits, TaskScripts};
use crate::store::Store;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A boxed future, as the runner table holds them.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// XComs pushed by a task: `(key, value)`.
pub type Pushed = Vec<(String, serde_json::Value)>;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Where DAG files are: a `PythonOperator`'s module is imported from its DAG file's folder.
    pub dags_folder: PathBuf,
    pub log_folder: PathBuf,
    pub max_log_bytes: u64,
    /// `[core] max_xcom_bytes`: a bigger `return_value` fails the task.
    pub max_xcom_bytes: u64,
    /// Variables tasks do not inherit (`Config::secret_env_names`) unless their `env` names them.
    pub withheld_env: Vec<String>,
    /// The rhaiflow binary, which supervises each task (`executor::supervisor`).
    pub supervisor: PathBuf,
    pub kill_grace: Duration,
    pub heartbeat: Duration,
    pub hostname: String,
    pub variables: BTreeMap<String, String>,
    pub connections: BTreeMap<String, String>,
    /// `[alerts]` channels for every failure / retry / success.
    pub on_failure: Vec<String>,
    pub on_retry: Vec<String>,
    pub on_success: Vec<String>,
    /// The robot `ding_on_failure` / `ding_on_retry` name (`dingtalk.default` or the only one).
    pub ding_robot: Option<String>,
    /// Outbox rows are written `held` (`dags test` without `--send-alerts`).
    pub hold_alerts: bool,
    /// The runner (this process) that owns what this worker claims.
    pub owner: String,
    /// A runner silent for longer is gone (`[scheduler] task_heartbeat_timeout`).
    pub heartbeat_timeout: Duration,
    /// `[core] task_script_timeout`: a task closure's limit when its task has no `execution_timeout`.
    pub task_script_timeout: Duration,
    /// The loader's limits and context, for evaluating a version's file again to call its closures.
    pub script_limits: ScriptLimits,
    pub eval_context: EvalContext,
}

impl WorkerSettings {
    /// `logs/dag_id=…/run_id=…/task_id=…/attempt=N.log`, as Airflow lays them out.
    pub fn log_path(&self, key: &TiKey, try_number: u32) -> PathBuf {
        self.log_folder
            .join(format!("dag_id={}", key.dag_id))
            .join(format!("run_id={}", key.run_id))
            .join(format!("task_id={}", key.task_id))
            .join(format!("attempt={try_number}.log"))
    }
}

/// How an operator run ended, before it becomes a state.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; `xcom` becomes XCom `return_value`.
    Success { xcom: Option<serde_json::Value> },
    /// Done without doing its work (`skip_on_exit_code`, a sensor's `soft_fail`).
    Skip { reason: String },
    /// Failed; retried while tries are left unless `final_try` (a sensor's timeout, as Airflow's
    /// `AirflowSensorTimeout`, which fails the task whatever its `retries`).
    Fail { reason: String, final_try: bool },
    /// A sensor in `mode: "reschedule"` not done yet: poke again at `at`, holding no slot meanwhile.
    Reschedule { at: DateTime<Utc> },
    /// Done, and of the direct downstream tasks only `follow` run; the others are skipped and the
    /// skips propagate by trigger rule (`BranchOperator`, `ShortCircuitOperator`, `LatestOnlyOperator`).
    Branch { follow: Vec<String>, xcom: Option<serde_json::Value> },
    /// Done, and every task downstream of this one (transitively) is skipped whatever its trigger
    /// rule (`ShortCircuitOperator` with `ignore_downstream_trigger_rules: true`, Airflow's default).
    SkipDownstream { xcom: Option<serde_json::Value> },
}

impl Outcome {
    pub fn fail(reason: impl Into<String>) -> Outcome {
        Outcome::Fail { reason: reason.into(), final_try: false }
    }
}

/// What the runners share: the worker's settings and the parts they may reach.
pub struct Env {
    pub settings: Arc<WorkerSettings>,
    /// `None` where no database is used (`tasks test` before `db migrate`).
    pub store: Option<Store>,
    pub http: reqwest::Client,
    /// Tells the scheduler to look at the store again (a run was created).
    pub wake: Arc<dyn Fn() + Send + Sync>,
    /// Variables every task process gets on top of its own (`tasks test --env-vars`); they win,
    /// and a withheld secret they name is passed.
    pub extra_env: Vec<(String, String)>,
    /// Creates runs of other DAGs (`TriggerDagRunOperator`): the service layer's rule, injected by
    /// `app` when it builds the worker (`Worker::set_trigger`); empty where there is no store.
    pub trigger: std::sync::OnceLock<Arc<dyn TriggerRuns>>,
    /// The closure host: DAG versions' closures, compiled once per version (`closure::call`).
    pub scripts: Arc<TaskScripts>,
    /// The alert channels of `[alerts]` (`EmailOperator`, `DingdingOperator`, ..., and
    /// `alerts::send` in a closure): `alert::Notifier`, injected by `app` (`Worker::set_notify`).
    pub notify: std::sync::OnceLock<Arc<dyn Notify>>,
}

impl Env {
    pub fn new(settings: Arc<WorkerSettings>, store: Option<Store>, wake: Arc<dyn Fn() + Send + Sync>) -> Env {
        let scripts = Arc::new(TaskScripts::new(settings.script_limits.clone(), settings.eval_context.clone()));
        Env {
            settings,
            store,
            http: http_client(),
            wake,
            extra_env: Vec::new(),
            trigger: Default::default(),
            scripts,
            notify: Default::default(),
        }
    }

    /// The store, or a failure that says the operator needs one.
    pub fn store(&self, operator: &str) -> Result<&Store, Outcome> {
        self.store.as_ref().ok_or_else(|| {
            Outcome::fail(format!("`{operator}` needs the database; create it with `rhaiflow db migrate`"))
        })
    }
}

/// One HTTP client for every task of a process (it pools connections); rustls with ring.
fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(concat!("rhaiflow/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// One try of one task, as a runner sees it.
pub struct TaskRun {
    pub task: QueuedTask,
    /// Airflow's template context, with the store reads its templates need already done.
    pub ctx: TemplateContext,
    /// Where its lines go (in memory, then the store or the file: `executor::try_log`).
    pub trylog: crate::executor::try_log::TryLog,
    pub env: Arc<Env>,
    /// XComs pushed while running (`ti.xcom_push` from a closure), written with the outcome.
    pub pushed: Mutex<Pushed>,
}

impl TaskRun {
    pub fn log_path(&self) -> &std::path::Path {
        self.trylog.path()
    }

    /// A line in the try's log, stamped and with secrets masked.
    pub async fn log(&self, text: &str) {
        self.trylog.line(&mask_secrets(text, &self.env.settings)).await;
    }

    pub fn push_xcom(&self, key: String, value: serde_json::Value) {
        if let Ok(mut pushed) = self.pushed.lock() {
            pushed.retain(|(k, _)| *k != key);
            pushed.push((key, value));
        }
    }

    pub fn take_pushed(&self) -> Pushed {
        self.pushed.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default()
    }
}

/// What a runner answers.
pub enum Start {
    /// A gated process: the claim records its group, then the worker releases it, waits for it
    /// (applying `execution_timeout` to the group) and turns its exit into an outcome with `outcome`.
    Process { process: Box<RunningBash>, outcome: ProcessOutcome },
    /// Work done in this process once the try is claimed; the worker bounds it by `execution_timeout`.
    Later(BoxFuture<Outcome>),
    /// Decided before the claim (a template that does not render, a bad spec).
    Done(Outcome),
}

/// How a supervised process's exit reads as an outcome, with the XComs the process pushed
/// (`ti.xcom_push` in a `PythonOperator`'s function; none for bash).
pub type ProcessOutcome = fn(&QueuedTask, crate::executor::BashOutcome, &WorkerSettings) -> (Outcome, Pushed);

/// One operator's runner: how a try starts, which of its spec's texts are templates (so the
/// worker knows which store reads rendering needs, `template::needs`), and, for an operator that
/// runs a supervised process, how a takeover reads the outcome that process recorded while its
/// owner was dead (without it, a try whose owner died fails).
pub struct Runner {
    pub name: &'static str,
    pub start: fn(Arc<TaskRun>) -> BoxFuture<Start>,
    pub templated: fn(&Operator) -> Vec<&str>,
    pub recover: Option<ProcessOutcome>,
}

/// Every operator that runs, by the name its spec carries (`Operator::name`).
pub const RUNNERS: &[Runner] = &[
    Runner {
        name: "EmptyOperator",
        start: |run| Box::pin(empty::start(run)),
        templated: |_| Vec::new(),
        recover: None,
    },
    Runner {
        name: "BashOperator",
        start: |run| Box::pin(bash::start(run)),
        templated: bash::templated,
        recover: Some(bash::process_end),
    },
    Runner {
        name: "FileSensor",
        start: |run| Box::pin(file_sensor::start(run)),
        templated: file_sensor::templated,
        recover: None,
    },
    Runner {
        name: "BashSensor",
        start: |run| Box::pin(bash_sensor::start(run)),
        templated: bash_sensor::templated,
        recover: None,
    },
    Runner {
        name: "TimeDeltaSensor",
        start: |run| Box::pin(time_sensor::start(run)),
        templated: time_sensor::templated,
        recover: None,
    },
    Runner {
        name: "DateTimeSensor",
        start: |run| Box::pin(time_sensor::start(run)),
        templated: time_sensor::templated,
        recover: None,
    },
    Runner {
        name: "ExternalTaskSensor",
        start: |run| Box::pin(external_task_sensor::start(run)),
        templated: external_task_sensor::templated,
        recover: None,
    },
    Runner {
        name: "TriggerDagRunOperator",
        start: |run| Box::pin(trigger_dagrun::start(run)),
        templated: trigger_dagrun::templated,
        recover: None,
    },
    Runner {
        name: "LatestOnlyOperator",
        start: |run| Box::pin(latest_only::start(run)),
        templated: |_| Vec::new(),
        recover: None,
    },
    Runner {
        name: "RhaiOperator",
        start: |run| Box::pin(rhai_op::start(run)),
        templated: rhai_op::templated,
        recover: None,
    },
    Runner {
        name: "PythonOperator",
        start: |run| Box::pin(python::start(run)),
        templated: python::templated,
        recover: Some(python::process_end),
    },
    Runner {
        name: "BranchOperator",
        start: |run| Box::pin(branch::start(run)),
        templated: |_| Vec::new(),
        recover: None,
    },
    Runner {
        name: "ShortCircuitOperator",
        start: |run| Box::pin(branch::start_short_circuit(run)),
        templated: |_| Vec::new(),
        recover: None,
    },
    Runner {
        name: "EmailOperator",
        start: |run| Box::pin(email::start(run)),
        templated: email::templated,
        recover: None,
    },
    Runner {
        name: "DingdingOperator",
        start: |run| Box::pin(dingding::start(run)),
        templated: dingding::templated,
        recover: None,
    },
    Runner {
        name: "SlackWebhookOperator",
        start: |run| Box::pin(slack::start(run)),
        templated: slack::templated,
        recover: None,
    },
    Runner {
        name: "FeishuOperator",
        start: |run| Box::pin(feishu::start(run)),
        templated: feishu::templated,
        recover: None,
    },
    Runner {
        name: "WeComOperator",
        start: |run| Box::pin(wecom::start(run)),
        templated: wecom::templated,
        recover: None,
    },
    Runner { name: "HttpOperator", start: |run| Box::pin(http::start(run)), templated: http::templated, recover: None },
    Runner {
        name: "HttpSensor",
        start: |run| Box::pin(http::start_sensor(run)),
        templated: http::templated,
        recover: None,
    },
];

/// The runner of an operator, if this version runs it.
pub fn runner(operator: &Operator) -> Option<&'static Runner> {
    let name = operator.name();
    RUNNERS.iter().find(|r| r.name == name)
}

/// Starts a try: its operator's runner, or a failure that names an operator this version cannot run.
pub async fn start(run: Arc<TaskRun>) -> Start {
    match runner(&run.task.task().operator) {
        Some(r) => (r.start)(run).await,
        None => Start::Done(Outcome::fail(format!(
            "`{}` cannot run in this version of rhaiflow yet",
            run.task.task().operator.name()
        ))),
    }
}

/// The templated texts of an operator's spec.
pub fn templated_fields(operator: &Operator) -> Vec<&str> {
    runner(operator).map(|r| (r.templated)(operator)).unwrap_or_default()
}

/// A byte count for people: `3 MiB`, `1.5 KiB`, `12 bytes`.
pub fn size(bytes: u64) -> String {
    let units = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, scale) in units {
        if bytes >= scale {
            let value = bytes as f64 / scale as f64;
            return if value.fract() == 0.0 { format!("{value} {unit}") } else { format!("{value:.1} {unit}") };
        }
    }
    format!("{bytes} bytes")
}
