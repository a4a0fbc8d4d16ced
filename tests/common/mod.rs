//! Helpers shared by the integration tests.
#![allow(dead_code)]

use chrono::{DateTime, TimeZone, Utc};
use rhaiflow::loader::{DagBag, Loader, LoaderSettings};
use rhaiflow::script::{EvalContext, ScriptLimits};
use std::path::Path;

/// A fixed clock so `days_ago` and next runs are reproducible.
pub fn fixed_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 15, 12, 0, 0).unwrap()
}

pub fn eval_context() -> EvalContext {
    EvalContext {
        now: fixed_now(),
        default_timezone: chrono_tz::UTC,
        catchup_by_default: true,
        default_owner: "rhaiflow".into(),
    }
}

pub fn load(folder: &Path) -> DagBag {
    let loader =
        Loader::new(LoaderSettings { dags_folder: folder.to_path_buf(), limits: ScriptLimits::default(), threads: 2 })
            .expect("loader starts");
    loader.load_all(&eval_context()).expect("folder loads")
}
