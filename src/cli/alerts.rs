//! `rhaiflow alerts list | test CHANNEL`: the outbox and its deliveries, and a test message.

use super::{Context, Outcome, Output, fmt_time, table};
use crate::store::AlertFilter;
use clap::{Subcommand, ValueEnum};

#[derive(Subcommand, Debug)]
pub enum AlertsCommand {
    /// Alerts in the outbox, newest first, with their delivery state.
    List {
        /// Only alerts in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only alerts of this DAG.
        #[arg(long)]
        dag_id: Option<String>,
        /// At most this many (newest first).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Send a test message through a channel (`email`, `dingtalk.NAME`, …) and print the answer.
    Test {
        channel: String,
        /// The recipient of a test mail (default: `[alerts.email] to`).
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Held,
    Pending,
    Sending,
    Sent,
    Failed,
    Coalesced,
}

impl StateArg {
    fn as_str(self) -> &'static str {
        match self {
            StateArg::Held => "held",
            StateArg::Pending => "pending",
            StateArg::Sending => "sending",
            StateArg::Sent => "sent",
            StateArg::Failed => "failed",
            StateArg::Coalesced => "coalesced",
        }
    }
}

pub fn run(ctx: &Context, cmd: AlertsCommand) -> anyhow::Result<Outcome> {
    match cmd {
        AlertsCommand::List { state, dag_id, limit } => {
            let filter = AlertFilter { state: state.map(|s| s.as_str().to_string()), dag_id, run_id: None, limit };
            list(ctx, &filter)
        }
        AlertsCommand::Test { channel, to } => test(ctx, &channel, to),
    }
}

fn list(ctx: &Context, filter: &AlertFilter) -> anyhow::Result<Outcome> {
    let rows = ctx.app.alert_list(filter)?;
    if ctx.output == Output::Json {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "channel": r.channel,
                    "event": r.event,
                    "dag_id": r.dag_id,
                    "task_id": r.task_id,
                    "run_id": r.run_id,
                    "try_number": r.try_number,
                    "state": r.state,
                    "attempts": r.attempts,
                    "last_error": r.last_error,
                    "created_at": r.created_at,
                    "sent_at": r.sent_at,
                    "next_attempt_at": r.next_attempt_at.filter(|_| r.state == "pending"),
                    "coalesced_into": r.coalesced_into,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(Outcome::Ok);
    }
    if rows.is_empty() {
        println!("no alerts");
        return Ok(Outcome::Ok);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let state = match r.coalesced_into {
                Some(into) => format!("{} (into #{into})", r.state),
                None => r.state.clone(),
            };
            vec![
                r.id.to_string(),
                r.channel.clone(),
                r.event.clone(),
                r.dag_id.clone(),
                r.task_id.clone().unwrap_or_else(|| "-".into()),
                r.run_id.clone(),
                r.try_number.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                state,
                r.attempts.to_string(),
                r.sent_at.map(|t| fmt_time(&t)).unwrap_or_else(|| "-".into()),
                one_line(r.last_error.as_deref().unwrap_or("-")),
            ]
        })
        .collect();
    let header =
        ["id", "channel", "event", "dag_id", "task_id", "run_id", "try", "state", "attempts", "sent_at", "last_error"];
    println!("{}", table::render(&header, &cells));
    Ok(Outcome::Ok)
}

/// An error on one table line, cut.
fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

fn test(ctx: &Context, channel: &str, to: Option<String>) -> anyhow::Result<Outcome> {
    ctx.app.check_channel(channel)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match runtime.block_on(ctx.app.test_alert(channel, to)) {
        Ok(answer) => {
            println!("sent a test message to `{channel}`; the service answered: {}", answer.text);
            Ok(Outcome::Ok)
        }
        Err(e) => {
            println!("could not send a test message to `{channel}`: {e:#}");
            Ok(Outcome::Failed)
        }
    }
}
