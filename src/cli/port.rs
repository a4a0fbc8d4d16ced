//! `rhaiflow port PATH... [--output-dir DIR] [--check]`: Airflow Python DAG files → Rhai DAG files,
//! with the report on stderr (per DAG its tasks; per loss `file:line: what, why, what instead`).

use super::Outcome;
use crate::port::{FileOutcome, PortOptions};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct PortArgs {
    /// Airflow DAG files (`.py`) or folders of them (searched recursively).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Write the `.rhai` files (and `_tasks.py` modules) here, keeping each file's place under the
    /// folder it was found in (default: beside each input file).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Write nothing; print the report only.
    #[arg(long)]
    pub check: bool,
}

/// Exit 0 when every DAG file ported faithfully, 1 when some construct was lost or a file could not
/// be ported (the others are still written), 2 on a usage error (the funnel's `Err`).
pub fn run(args: PortArgs) -> anyhow::Result<Outcome> {
    let options = PortOptions { paths: args.paths, output_dir: args.output_dir, check: args.check };
    let reports = crate::port::run(&options)?;
    let (mut dags, mut tasks, mut losses, mut failed, mut lossy_files, mut ported_files) = (0, 0, 0, 0, 0, 0);
    for r in &reports {
        let shown = r.input.display();
        match &r.outcome {
            FileOutcome::Ported { rhai_path, python_path, ported } => {
                ported_files += 1;
                let written = match python_path {
                    Some(p) => format!("{} and {}", rhai_path.display(), p.display()),
                    None => rhai_path.display().to_string(),
                };
                let verb = if args.check { "would write" } else { "wrote" };
                eprintln!("{shown}: {verb} {written}");
                for d in &ported.dags {
                    eprintln!(
                        "{shown}:{}: DAG `{}`: {} task(s), {} edge(s) ported",
                        d.line, d.dag_id, d.tasks, d.edges
                    );
                    dags += 1;
                    tasks += d.tasks;
                }
                for l in &ported.losses {
                    eprintln!("{shown}:{}: {}: {}; written instead: {}", l.line, l.what, l.why, l.instead);
                }
                if !ported.losses.is_empty() {
                    lossy_files += 1;
                    losses += ported.losses.len();
                }
            }
            FileOutcome::NoDag => eprintln!("{shown}: no DAG in this file; nothing written"),
            FileOutcome::Failed(why) => {
                failed += 1;
                eprintln!("{shown}: error: {why}");
            }
        }
    }
    let mut summary = format!("ported {ported_files} file(s): {dags} DAG(s), {tasks} task(s)");
    if losses > 0 {
        summary.push_str(&format!("; {losses} construct(s) not ported faithfully in {lossy_files} file(s)"));
    }
    if failed > 0 {
        summary.push_str(&format!("; {failed} file(s) not ported"));
    }
    if args.check {
        summary.push_str(" (--check: nothing written)");
    }
    eprintln!("{summary}");
    Ok(if losses > 0 || failed > 0 { Outcome::Failed } else { Outcome::Ok })
}
