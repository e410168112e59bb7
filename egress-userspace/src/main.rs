//! The `egressd` command: everything it does is in the library, `cli`
//! first.

fn main() -> std::process::ExitCode {
    egressd::cli::main()
}
