//! The `rhaiflow` binary: all the work is in the library; this only sets the exit code.

fn main() {
    // A task supervisor (`__task-supervisor`) starts before anything else: no config, no tracing.
    if let Some(args) = rhaiflow::config::task_supervisor_args() {
        std::process::exit(rhaiflow::executor::supervisor::main(args));
    }
    std::process::exit(rhaiflow::cli::main());
}
