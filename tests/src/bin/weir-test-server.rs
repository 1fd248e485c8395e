//! `weir-test-server --name NAME [--http ADDR:PORT]... [--udp ADDR:PORT]...`: see
//! `weir_testbed::server`.

use std::process::ExitCode;

use weir_testbed::server::{ServerConfig, USAGE, serve};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let config = match ServerConfig::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("weir-test-server: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match serve(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-test-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
