use std::process::ExitCode;

fn main() -> ExitCode {
    lab::main_entry()
}
