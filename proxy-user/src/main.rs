//! The `switchyard` binary: everything is in the library (`switchyard::main`, the command
//! line in `src/cli.rs`), so the compiler sees every item the binary does not reach.

fn main() -> std::process::ExitCode {
    switchyard::main()
}
