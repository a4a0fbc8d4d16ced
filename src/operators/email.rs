//! `EmailOperator`: a mail through the `email` channel (`[alerts.email]`), as Airflow's: `to`,
//! `cc`, `bcc`, `subject`, `html_content` (HTML), `files` (attached); all templated.

use super::notify::{MailRequest, Notification, render, start_sending};
use super::{Start, TaskRun};
use crate::model::Operator;
use std::sync::Arc;

pub fn templated(operator: &Operator) -> Vec<&str> {
    let Operator::EmailOperator(e) = operator else { return Vec::new() };
    let mut out = vec![e.subject.as_str(), e.html_content.as_str()];
    out.extend(e.to.iter().chain(&e.cc).chain(&e.bcc).chain(&e.files).map(String::as_str));
    out
}

pub async fn start(run: Arc<TaskRun>) -> Start {
    let prepared = prepare(&run);
    start_sending(run, "email", None, prepared)
}

fn prepare(run: &TaskRun) -> Result<Notification, String> {
    let Operator::EmailOperator(e) = &run.task.task().operator else {
        return Err("not an EmailOperator".into());
    };
    // Addresses render one by one; one that renders to a list (`a@x, b@x`) is split as Airflow's
    // `get_email_address_list` does.
    let addresses = |field: &str, list: &[String]| -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for a in list {
            let rendered = render(field, a, run)?;
            out.extend(rendered.split([',', ';']).map(str::trim).filter(|s| !s.is_empty()).map(String::from));
        }
        Ok(out)
    };
    let to = addresses("to", &e.to)?;
    if to.is_empty() {
        return Err("`to` names no address".into());
    }
    let files =
        e.files.iter().map(|f| render("files", f, run).map(std::path::PathBuf::from)).collect::<Result<_, _>>()?;
    Ok(Notification::Mail(MailRequest {
        to,
        cc: addresses("cc", &e.cc)?,
        bcc: addresses("bcc", &e.bcc)?,
        subject: render("subject", &e.subject, run)?,
        html_content: render("html_content", &e.html_content, run)?,
        files,
    }))
}
