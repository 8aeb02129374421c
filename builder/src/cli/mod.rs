//! Command-line types and dispatch. Only clap types and thin glue live here.

use std::process::ExitCode;

pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}
