//! The `rhaiflow` binary: all the work is in the library; this only sets the exit code.

fn main() {
    std::process::exit(rhaiflow::cli::main());
}
