//! The event loop on an injected clock: on tokio's paused time the loop sleeps until each due
//! time and creates each run exactly when it falls due, with no polling and no real waiting.

use chrono::{TimeZone, Utc};
use rhaiflow::app::{App, LoopParts, TokioClock, drive};
use rhaiflow::config::{Config, Flags};
use rhaiflow::model::Event;
use rhaiflow::scheduler::{Scheduler, Scope};
use rhaiflow::worker::Worker;
use std::time::Duration;

#[test]
fn the_loop_wakes_at_each_due_time_on_an_injected_clock() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("dags")).unwrap();
    std::fs::write(
        home.path().join("dags/every.rhai"),
        r#"let d = DAG("every", #{ schedule: "*/5 * * * *", start_date: datetime(2030, 1, 1), catchup: true });
           let a = EmptyOperator(#{ task_id: "a" });"#,
    )
    .unwrap();
    // The scheduler runs the DAG on its own: it starts unpaused.
    std::fs::write(home.path().join("rhaiflow.toml"), "[core]\ndags_are_paused_at_creation = false\n").unwrap();
    let flags = Flags { home: Some(home.path().to_path_buf()), dags_folder: None, database_url: None };
    let app = App::new(Config::load_from(&flags, Default::default()).unwrap()).unwrap();
    let store = app.open_store().unwrap();
    let start = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 1).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    runtime.block_on(async {
        let runner = app.register_runner(&store, "scheduler").unwrap();
        let (versions, _) = app.sync_dags(&store, start).unwrap();
        let mut scheduler = Scheduler::new(store.clone(), app.scheduler_settings(&runner), Scope::All);
        scheduler.set_dags(&versions);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let handle = tokio::runtime::Handle::current();
        let worker = Worker::new(store.clone(), app.worker_settings_for(&runner), tx.clone(), handle);
        let clock = TokioClock::starting_at(start);
        // One virtual hour later, stop the loop.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            let _ = tx.send(Event::Shutdown);
        });
        let parts = LoopParts {
            scheduler: &mut scheduler,
            worker: &worker,
            events: rx,
            clock: &clock,
            until: None,
            grace: Duration::ZERO,
        };
        drive(parts, &mut |_| {}).await.unwrap();
    });
    let runs = store.read(|tx| tx.dag_runs("every")).unwrap();
    // Intervals ending 00:05 … 01:00 fell due within the hour: twelve runs, each created the
    // moment its interval ended, and each finished.
    assert_eq!(runs.len(), 12, "{runs:?}");
    for run in &runs {
        assert_eq!(run.queued_at, run.data_interval_end, "run {} created when due", run.run_id);
        assert_eq!(run.state.as_str(), "success");
    }
}
