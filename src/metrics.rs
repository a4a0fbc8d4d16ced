//! Prometheus metrics of this process (`/metrics`): what the scheduler, the worker, the alert
//! deliverer and the loader observe as they go, plus what the store says at scrape time (runs and
//! task instances by state, queue depth, import errors), which the scraper's caller passes in.
//!
//! One registry per process ([`global`]), built with `prometheus-client`; the text is the
//! OpenMetrics text format, which Prometheus reads.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Every metric this process keeps.
pub struct Metrics {
    registry: Registry,
    /// One encode at a time: the store gauges are set, then read.
    scrape: Mutex<()>,
    pass: Histogram,
    task_duration: Histograms,
    start_delay: Histogram,
    alert_deliveries: Family<Labels, Counter>,
    parse: Histogram,
    slots_used: Gauge,
    slots: Gauge,
    dag_runs: Family<Labels, Gauge>,
    task_instances: Family<Labels, Gauge>,
    queue_depth: Gauge,
    import_errors: Gauge,
    dags: Family<Labels, Gauge>,
}

/// What the store says when `/metrics` is read.
#[derive(Debug, Clone, Default)]
pub struct StoreCounts {
    /// `(state, count)` of DAG runs.
    pub runs: Vec<(String, i64)>,
    /// `(state, count)` of task instances.
    pub task_instances: Vec<(String, i64)>,
    /// Task instances waiting for a slot or a claim (`scheduled` and `queued`).
    pub queue_depth: i64,
    pub import_errors: i64,
    /// Active DAGs: `(paused, count)`.
    pub dags: Vec<(bool, i64)>,
}

/// Seconds: 1 ms … about 9 h in 20 buckets.
fn task_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.2, 20))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rhaiflow");
        let pass = Histogram::new(exponential_buckets(0.0001, 2.5, 14));
        registry.register("scheduler_pass_duration_seconds", "Duration of one scheduler pass", pass.clone());
        let task_duration: Histograms = Family::new_with_constructor(task_seconds);
        registry.register(
            "task_duration_seconds",
            "Duration of finished tries, by operator and outcome",
            task_duration.clone(),
        );
        let start_delay = task_seconds();
        registry.register(
            "task_start_delay_seconds",
            "Time from a task instance being queued (ready) to its try starting",
            start_delay.clone(),
        );
        let alert_deliveries = Family::<Labels, Counter>::default();
        registry.register(
            "alert_deliveries",
            "Alert deliveries by channel and outcome (sent, retry, failed)",
            alert_deliveries.clone(),
        );
        let parse = Histogram::new(exponential_buckets(0.0001, 2.5, 14));
        registry.register("dag_file_parse_duration_seconds", "Evaluation time of one DAG file", parse.clone());
        let slots_used = Gauge::default();
        registry.register("worker_slots_used", "Tries this process runs now", slots_used.clone());
        let slots = Gauge::default();
        registry.register("worker_slots", "Tries this process may run at once (parallelism)", slots.clone());
        let dag_runs = Family::<Labels, Gauge>::default();
        registry.register("dag_runs", "DAG runs in the store, by state", dag_runs.clone());
        let task_instances = Family::<Labels, Gauge>::default();
        registry.register("task_instances", "Task instances in the store, by state", task_instances.clone());
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Task instances waiting for a slot or a claim (scheduled and queued)",
            queue_depth.clone(),
        );
        let import_errors = Gauge::default();
        registry.register("import_errors", "DAG files that failed to load", import_errors.clone());
        let dags = Family::<Labels, Gauge>::default();
        registry.register("dags", "Active DAGs, by paused", dags.clone());
        Metrics {
            registry,
            scrape: Mutex::new(()),
            pass,
            task_duration,
            start_delay,
            alert_deliveries,
            parse,
            slots_used,
            slots,
            dag_runs,
            task_instances,
            queue_depth,
            import_errors,
            dags,
        }
    }

    pub fn scheduler_pass(&self, took: Duration) {
        self.pass.observe(took.as_secs_f64());
    }

    /// A try ended: its operator (`BashOperator`), its state (`success`, `up_for_retry`, …).
    pub fn task_finished(&self, operator: &str, state: &str, seconds: f64) {
        let labels = vec![("operator", operator.to_string()), ("state", state.to_string())];
        self.task_duration.get_or_create(&labels).observe(seconds.max(0.0));
    }

    /// A try started `seconds` after its task instance was queued.
    pub fn task_started(&self, seconds: f64) {
        self.start_delay.observe(seconds.max(0.0));
    }

    pub fn alert_delivery(&self, channel: &str, outcome: &str) {
        self.alert_deliveries
            .get_or_create(&vec![("channel", channel.to_string()), ("outcome", outcome.to_string())])
            .inc();
    }

    pub fn dag_file_parsed(&self, took: Duration) {
        self.parse.observe(took.as_secs_f64());
    }

    /// Tries this process's worker has launched and not finished.
    pub fn slots_used(&self, used: usize) {
        self.slots_used.set(used as i64);
    }

    /// How many tries this process may run at once (`[core] parallelism`).
    pub fn slots(&self, total: u32) {
        self.slots.set(i64::from(total));
    }

    /// The text for `/metrics`, with the store's counts as of now.
    pub fn encode(&self, counts: &StoreCounts) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.dag_runs.clear();
        for (state, n) in &counts.runs {
            self.dag_runs.get_or_create(&vec![("state", state.clone())]).set(*n);
        }
        self.task_instances.clear();
        for (state, n) in &counts.task_instances {
            self.task_instances.get_or_create(&vec![("state", state.clone())]).set(*n);
        }
        self.dags.clear();
        for (paused, n) in &counts.dags {
            self.dags.get_or_create(&vec![("paused", paused.to_string())]).set(*n);
        }
        self.queue_depth.set(counts.queue_depth);
        self.import_errors.set(counts.import_errors);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// This process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_each_family_and_the_store_counts_of_the_scrape() {
        let m = Metrics::new();
        m.task_finished("BashOperator", "success", 0.5);
        m.alert_delivery("ops_mail", "sent");
        let counts = StoreCounts {
            runs: vec![("success".into(), 3)],
            task_instances: vec![("queued".into(), 2)],
            queue_depth: 2,
            import_errors: 1,
            dags: vec![(false, 4)],
        };
        let text = m.encode(&counts);
        for line in [
            "rhaiflow_dag_runs{state=\"success\"} 3",
            "rhaiflow_task_instances{state=\"queued\"} 2",
            "rhaiflow_queue_depth 2",
            "rhaiflow_import_errors 1",
            "rhaiflow_dags{paused=\"false\"} 4",
            "rhaiflow_alert_deliveries_total{channel=\"ops_mail\",outcome=\"sent\"} 1",
            "rhaiflow_task_duration_seconds_count{operator=\"BashOperator\",state=\"success\"} 1",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        // A later scrape shows only what the store says then.
        let text = m.encode(&StoreCounts::default());
        assert!(!text.contains("rhaiflow_dag_runs{state=\"success\"}"), "{text}");
    }
}
