//! Plain data shared by every layer: DAG and task specs, operators, schedules, states, diagnostics.
//!
//! Nothing here does I/O or knows about Rhai or SQL. `caught` marks the code whose panics its caller
//! catches (a future wrapper, but no runtime), for the panic hook.

pub mod caught;
mod diagnostic;
mod duration;
mod spec;
mod state;
pub mod suggest;
mod work;

pub use diagnostic::{Diagnostic, SourcePos};
pub use duration::TimeSpan;
pub use spec::{
    CallbackRef, DagSpec, DingdingSpec, EdgeLabel, EmailSpec, FeishuSpec, HttpSpec, Operator, PythonSpec, ScheduleSpec,
    SensorKind, SensorMode, SensorSpec, SlackSpec, TaskGroupSpec, TaskSpec, TimeZoneSpec, TriggerRule, TriggerSpec,
    WeComSpec, WeightRule, default_allowlist,
};
pub use state::{DagRunState, RunType, TaskState, TiEvent, transition};
pub use work::{Event, QueuedTask, RunInfo, TiKey, retry_delay};
