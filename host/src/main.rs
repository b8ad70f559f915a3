//! The `setpoint` command-line tool.

fn main() -> std::process::ExitCode {
    setpoint_cli::main()
}

#[path = "cli/mod.rs"]
mod setpoint_cli;
