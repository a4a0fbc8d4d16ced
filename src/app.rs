//! Wiring: turns the one `Config` into the parts (loader, store, scheduler) and owns their lifetimes.

use crate::config::Config;
use crate::loader::{DagBag, Loader, LoaderSettings};
use crate::script::{EvalContext, ScriptLimits};
use anyhow::Context;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The parts of rhaiflow built from one configuration.
pub struct App {
    pub config: Config,
    loader: Loader,
}

impl App {
    pub fn new(config: Config) -> anyhow::Result<App> {
        let limits =
            ScriptLimits { deadline: Duration::from_secs_f64(config.core.dag_file_timeout), ..ScriptLimits::default() };
        let settings =
            LoaderSettings { dags_folder: config.core.dags_folder.clone(), limits, threads: config.core.parse_threads };
        let loader = Loader::new(settings).context("cannot start the DAG loader")?;
        Ok(App { config, loader })
    }

    pub fn eval_context(&self, now: DateTime<Utc>) -> EvalContext {
        EvalContext {
            now,
            default_timezone: self.config.core.default_timezone.parse().unwrap_or(chrono_tz::UTC),
            catchup_by_default: self.config.scheduler.catchup_by_default,
            default_owner: self.config.core.default_owner.clone(),
        }
    }

    /// Parses the whole dags folder.
    pub fn load_dags(&self, now: DateTime<Utc>) -> anyhow::Result<DagBag> {
        Ok(self.loader.load_all(&self.eval_context(now))?)
    }

    pub fn loader(&self) -> &Loader {
        &self.loader
    }
}
