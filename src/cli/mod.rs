//! The command line: argument parsing, printing, and the one funnel from error to exit code.

mod alerts;
mod crash;
mod dags;
mod port;
mod run;
mod table;
mod users;
mod web;

use crate::app::App;
use crate::config::{Config, Flags};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Exit codes (DESIGN.md §4): 0 ok, 1 what you asked about failed, 2 usage, config or internal error
/// (and 141 when stdout's reader has gone, see `crash.rs`).
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_ERROR: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "rhaiflow",
    version,
    about = "A workflow orchestrator in the model of Apache Airflow, with DAG files in Rhai"
)]
pub struct Cli {
    /// Home directory holding rhaiflow.toml (default: $RHAIFLOW_HOME, else the current directory).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// The folder of DAG files (overrides [core] dags_folder).
    #[arg(long, global = true, value_name = "DIR")]
    pub dags_folder: Option<PathBuf>,
    /// Output format for listings.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Pretend the current time is this (RFC 3339); for reproducible output.
    #[arg(long, global = true, hide = true, value_name = "TIME", value_parser = parse_now)]
    pub now: Option<DateTime<Utc>>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Work with DAGs and DAG files.
    #[command(subcommand)]
    Dags(dags::DagsCommand),
    /// Work with task instances.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Work with DAG runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Alerts: the outbox's deliveries, and a test message through a channel.
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
    /// Pools: named slot limits tasks share (`pool:` and `pool_slots:` on a task).
    #[command(subcommand)]
    Pools(PoolsCommand),
    /// Web users and their roles (`[webserver] auth = "password"`).
    #[command(subcommand)]
    Users(users::UsersCommand),
    /// Run the scheduler with the local executor until SIGINT/SIGTERM; it watches the dags folder.
    Scheduler,
    /// Everything in one process, with the embedded defaults (SQLite in ./rhaiflow.db, DAGs from
    /// ./dags or --dags-folder, logs in ./logs): the scheduler, the dags-folder watcher, the alert
    /// deliverer and the REST API on `[webserver] bind`. Until SIGINT/SIGTERM.
    Standalone,
    /// The REST API (Airflow 2's `/api/v1`) until SIGINT/SIGTERM, on `[webserver] bind` (default
    /// 127.0.0.1:8080); `[webserver] auth = "password"` makes users log in.
    Webserver {
        /// The port to listen on (default: the port of `[webserver] bind`).
        #[arg(long, short = 'p')]
        port: Option<u16>,
        /// The IP address to listen on (default: the address of `[webserver] bind`).
        #[arg(long = "host", short = 'H')]
        host: Option<String>,
    },
    /// The metadata database.
    #[command(subcommand)]
    Db(DbCommand),
    /// Airflow Python DAG files -> Rhai DAG files (and their Python callables -> `NAME_tasks.py`).
    Port(port::PortArgs),
    /// Print the version.
    Version,
    /// Panic on purpose (hidden): how the tests drive the panic hook.
    #[command(name = "__panic", hide = true)]
    Panic {
        #[arg(long = "in", value_enum, default_value_t = crash::Place::Main)]
        place: crash::Place,
    },
}

#[derive(Subcommand, Debug)]
pub enum TasksCommand {
    /// Run one task now without dependencies and without recording state.
    Test {
        dag_id: String,
        task_id: String,
        /// The logical date (default: now).
        date: Option<String>,
        /// JSON object of `params` for the task (over the DAG's and the task's own).
        #[arg(long, short = 't', value_name = "JSON")]
        task_params: Option<String>,
        /// JSON object of environment variables for the task's process.
        #[arg(long, value_name = "JSON")]
        env_vars: Option<String>,
    },
    /// Set task instances back to `none` so the scheduler runs them again.
    Clear {
        dag_id: String,
        /// Only tasks whose id matches this regular expression.
        #[arg(long, short = 't')]
        task_regex: Option<String>,
        /// Also clear the tasks downstream of those selected.
        #[arg(long, short = 'd')]
        downstream: bool,
        #[arg(long, short = 's')]
        start_date: Option<String>,
        #[arg(long, short = 'e')]
        end_date: Option<String>,
        /// Only task instances that failed (or whose upstream failed).
        #[arg(long, short = 'f')]
        only_failed: bool,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// List what would be cleared; clear nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The state of every task instance of a run.
    StatesForRun { dag_id: String, run_id: String },
    /// Print a task instance's log.
    Logs {
        dag_id: String,
        run_id: String,
        task_id: String,
        /// The try to show (default: the latest).
        #[arg(long = "try", value_parser = clap::value_parser!(u32).range(1..=100_000))]
        try_number: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    /// The runs of a DAG, newest first.
    List { dag_id: String },
}

#[derive(Subcommand, Debug)]
pub enum PoolsCommand {
    /// Every pool with its slots.
    List,
    /// Create a pool or change its slots.
    Set {
        name: String,
        /// How many slots (0 to 1000000).
        #[arg(value_parser = clap::value_parser!(u32).range(0..=MAX_POOL_SLOTS))]
        slots: u32,
        description: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Apply pending schema migrations.
    Migrate,
}

/// What a command reports back to the funnel.
pub enum Outcome {
    Ok,
    /// What was asked about failed (a check found errors); the command has printed why.
    Failed,
}

/// The most slots `pools set` gives a pool.
pub const MAX_POOL_SLOTS: i64 = 1_000_000;

/// `--now`: RFC 3339 with a four-digit year, as every other date argument (later ones overflow
/// date arithmetic).
fn parse_now(text: &str) -> Result<DateTime<Utc>, String> {
    let t = DateTime::parse_from_rfc3339(text).map_err(|e| format!("not an RFC 3339 time: {e}"))?;
    let t = t.with_timezone(&Utc);
    if !(0..=9999).contains(&chrono::Datelike::year(&t)) {
        return Err("the year must be between 0 and 9999".into());
    }
    Ok(t)
}

/// Parses arguments, runs the command, and returns the process exit code.
///
/// Installs the panic hook first: any panic from here on is "internal error (a bug)", exit 2.
pub fn main() -> i32 {
    crash::install();
    crash::guard(parse_and_run)
}

fn parse_and_run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_ERROR } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match run(cli) {
        Ok(Outcome::Ok) => 0,
        Ok(Outcome::Failed) => EXIT_FAILED,
        Err(e) if e.is::<ClosedStdout>() => crash::EXIT_CLOSED_STDOUT,
        Err(e) if e.is::<Logged>() => EXIT_ERROR,
        // What was asked about cannot be done: the DAG's file is gone.
        Err(e) if e.is::<crate::app::DagInactive>() => {
            eprintln!("error: {e:#}");
            EXIT_FAILED
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_ERROR
        }
    }
}

/// The error is on rhaiflow's own log already (a JSON log takes no plain line).
#[derive(Debug, thiserror::Error)]
#[error("the error is on the log")]
pub struct Logged;

/// A command's stdout was a pipe whose reader left: exit 141 quietly, as `println!` does (`crash.rs`).
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct ClosedStdout;

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Version => {
            println!("rhaiflow {}", env!("CARGO_PKG_VERSION"));
            return Ok(Outcome::Ok);
        }
        Command::Panic { place } => {
            crash::panic_on_purpose(place);
            return Ok(Outcome::Ok);
        }
        // Needs no home, config or database: it reads and writes only the files it is given.
        Command::Port(args) => return port::run(args),
        _ => {}
    }
    let flags = Flags { home: cli.home.clone(), dags_folder: cli.dags_folder.clone(), database_url: None };
    let config = Config::load(&flags)?;
    let standalone = matches!(cli.command, Command::Standalone);
    let default_level = if matches!(cli.command, Command::Scheduler | Command::Standalone | Command::Webserver { .. }) {
        "info"
    } else {
        "warn"
    };
    let json_log = config.logging.format == crate::config::LogFormat::Json;
    crate::app::logging::init(&config.logging, default_level);
    let mut app = App::new(config)?;
    app.set_notices(print_once());
    let ctx = Context { app, output: cli.output, now: cli.now.unwrap_or_else(Utc::now) };
    match cli.command {
        Command::Dags(cmd) => dags::run(&ctx, cmd),
        Command::Tasks(TasksCommand::Test { dag_id, task_id, date, task_params, env_vars }) => {
            let args = run::TaskTestArgs {
                dag_id: &dag_id,
                task_id: &task_id,
                date: date.as_deref(),
                task_params: task_params.as_deref(),
                env_vars: env_vars.as_deref(),
            };
            run::tasks_test(&ctx, args)
        }
        Command::Tasks(TasksCommand::Clear {
            dag_id,
            task_regex,
            downstream,
            start_date,
            end_date,
            only_failed,
            yes,
            dry_run,
        }) => {
            let args = run::ClearArgs {
                dag_id: &dag_id,
                task_regex: task_regex.as_deref(),
                downstream,
                start: start_date.as_deref(),
                end: end_date.as_deref(),
                only_failed,
                yes,
                dry_run,
            };
            run::clear(&ctx, args)
        }
        Command::Tasks(TasksCommand::StatesForRun { dag_id, run_id }) => run::states_for_run(&ctx, &dag_id, &run_id),
        Command::Tasks(TasksCommand::Logs { dag_id, run_id, task_id, try_number }) => {
            run::logs(&ctx, crate::model::TiKey { dag_id, run_id, task_id }, try_number)
        }
        Command::Runs(RunsCommand::List { dag_id }) => run::runs_list(&ctx, &dag_id),
        Command::Pools(PoolsCommand::List) => run::pools_list(&ctx),
        Command::Pools(PoolsCommand::Set { name, slots, description }) => {
            run::pools_set(&ctx, &name, slots, description.as_deref().unwrap_or(""))
        }
        // With `[logging] format = "json"` every line the scheduler writes on stderr is JSON, its
        // last words too.
        Command::Scheduler | Command::Standalone => run::scheduler(&ctx, standalone).map_err(|e| {
            if !json_log || !tracing::enabled!(tracing::Level::ERROR) {
                return e;
            }
            tracing::error!(error = %format!("{e:#}"), "the scheduler ended with an error");
            Logged.into()
        }),
        Command::Webserver { port, host } => web::webserver(&ctx, host.as_deref(), port),
        Command::Db(DbCommand::Migrate) => run::db_migrate(&ctx),
        Command::Alerts(cmd) => alerts::run(&ctx, cmd),
        Command::Users(cmd) => users::run(&ctx, cmd),
        Command::Version | Command::Panic { .. } | Command::Port(_) => Ok(Outcome::Ok),
    }
}

/// Warnings from the service layer on stderr, each once (a command may resolve its DAG twice).
fn print_once() -> crate::app::Notices {
    let printed = std::sync::Mutex::new(std::collections::HashSet::<String>::new());
    std::sync::Arc::new(move |text: &str| {
        if printed.lock().map(|mut p| p.insert(text.to_string())).unwrap_or(true) {
            eprintln!("{text}");
        }
    })
}

/// What every command gets.
pub struct Context {
    pub app: App,
    pub output: Output,
    pub now: DateTime<Utc>,
}

/// `2024-01-01 00:00:00+00:00`, Airflow's way of showing times.
pub fn fmt_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S+00:00").to_string()
}
