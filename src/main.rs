//! The `iotgate` binary: parse the command line, run the command, exit with its status.

use clap::Parser;

use iotgate::commands::cli::{Cli, Command, ExitStatus};

fn main() -> ExitStatus {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    let result = match &cli.command {
        Command::Check(args) => iotgate::commands::check::run(args, &mut out),
        Command::Validate(args) => iotgate::commands::validate(args, &mut out),
        Command::Token(args) => iotgate::commands::token(args, &mut out),
        Command::Serve(args) => {
            iotgate::telemetry::init(cli.log_format);
            runtime().map(|rt| rt.block_on(iotgate::commands::serve(args)))
        }
        Command::Demo => {
            iotgate::telemetry::init(cli.log_format);
            runtime().map(|rt| rt.block_on(iotgate::commands::demo::run(&mut out)))
        }
    };
    result.unwrap_or(ExitStatus::Error)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
