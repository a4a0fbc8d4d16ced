//! `rhaiflow users create | list | delete`: the web users `[webserver] auth = "password"` lets in,
//! as Airflow's `airflow users`. A password comes on stdin only (never argv, never printed).

use super::{Context, Outcome, Output, fmt_time, table};
use crate::app::{NewUser, UserError};
use clap::{Subcommand, ValueEnum};
use std::io::Read;

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Add a user; the password is read from stdin (one line).
    Create {
        #[arg(long, short = 'u')]
        username: String,
        /// Airflow's names work too, in any case (`Admin`, `Op`, `Viewer`).
        #[arg(long, short = 'r', value_enum, ignore_case = true)]
        role: RoleArg,
        /// Read the password from stdin (required: a password is never an argument).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Every user with their role (never a password or its hash).
    List,
    /// Remove a user; their sessions end.
    Delete {
        #[arg(long, short = 'u')]
        username: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Reads everything.
    Viewer,
    /// Also triggers, clears, marks and pauses.
    #[value(alias = "op")]
    Operator,
    /// Also manages users.
    Admin,
}

impl RoleArg {
    fn as_str(self) -> &'static str {
        match self {
            RoleArg::Viewer => "viewer",
            RoleArg::Operator => "operator",
            RoleArg::Admin => "admin",
        }
    }
}

pub fn run(ctx: &Context, cmd: UsersCommand) -> anyhow::Result<Outcome> {
    match cmd {
        UsersCommand::Create { username, role, password_stdin } => create(ctx, &username, role, password_stdin),
        UsersCommand::List => list(ctx),
        UsersCommand::Delete { username } => delete(ctx, &username),
    }
}

/// What the user asked about cannot be done (a taken or unknown name): exit 1.
fn failed(e: UserError) -> anyhow::Result<Outcome> {
    match e {
        UserError::Exists(_) | UserError::Unknown(_) => {
            eprintln!("error: {e}");
            Ok(Outcome::Failed)
        }
        e => Err(e.into()),
    }
}

/// The password on stdin: its first line, at most a little over the longest password accepted.
fn read_password() -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    let limit = crate::web::auth::MAX_PASSWORD_BYTES as u64 + 2;
    std::io::stdin().lock().take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        anyhow::bail!("the password on stdin is longer than {} bytes", crate::web::auth::MAX_PASSWORD_BYTES);
    }
    let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("the password on stdin is not UTF-8"))?;
    let line = text.split('\n').next().unwrap_or("");
    Ok(line.strip_suffix('\r').unwrap_or(line).to_string())
}

fn create(ctx: &Context, username: &str, role: RoleArg, password_stdin: bool) -> anyhow::Result<Outcome> {
    if !password_stdin {
        anyhow::bail!("give the password on stdin with `--password-stdin` (a password is never an argument)");
    }
    let password = read_password()?;
    let store = ctx.app.open_store()?;
    let new = NewUser { username, role: role.as_str(), password: &password };
    match ctx.app.create_user(&store, &new, ctx.now) {
        Ok(user) => {
            println!("user {} created with role {}", user.username, user.role);
            Ok(Outcome::Ok)
        }
        Err(e) => failed(e),
    }
}

fn list(ctx: &Context) -> anyhow::Result<Outcome> {
    let store = ctx.app.open_store()?;
    let users = ctx.app.users(&store)?;
    if ctx.output == Output::Json {
        let rows: Vec<_> = users
            .iter()
            .map(|u| serde_json::json!({"username": u.username, "role": u.role, "created": u.created.to_rfc3339()}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let rows: Vec<Vec<String>> =
            users.iter().map(|u| vec![u.username.clone(), u.role.clone(), fmt_time(&u.created)]).collect();
        println!("{}", table::render(&["username", "role", "created"], &rows));
    }
    Ok(Outcome::Ok)
}

fn delete(ctx: &Context, username: &str) -> anyhow::Result<Outcome> {
    let store = ctx.app.open_store()?;
    match ctx.app.delete_user(&store, username) {
        Ok(()) => {
            println!("user {username} deleted");
            Ok(Outcome::Ok)
        }
        Err(e) => failed(e),
    }
}
