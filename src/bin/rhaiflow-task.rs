//! `rhaiflow-task`: the task supervisor alone, in a small binary that starts in a fraction of the
//! time the whole `rhaiflow` takes. `rhaiflow` runs it for every task when it sits beside it, and
//! otherwise runs itself as `rhaiflow __task-supervisor` (the same code).

fn main() {
    match rhaiflow::config::task_supervisor_args() {
        Some(args) => std::process::exit(rhaiflow::executor::supervisor::main(args)),
        None => {
            eprintln!("rhaiflow-task: started by rhaiflow for each task; it is not a command of its own");
            std::process::exit(2)
        }
    }
}
