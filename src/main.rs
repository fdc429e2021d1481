//! The `iotgate` binary: parse the command line, run the command, exit with its status.

use clap::Parser;

fn main() -> iotgate::ExitStatus {
    iotgate::run(&iotgate::Cli::parse())
}
