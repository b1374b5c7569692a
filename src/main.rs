//! The `cpr` binary: arguments in, exit code out.

use argh::FromArgs;
use cpr::cli;

fn main() {
    cpr::logger::init();
    let args = cli::normalize_args(std::env::args());
    let command = args
        .first()
        .map(String::as_str)
        .unwrap_or("cpr")
        .to_string();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let parsed = match cli::Cpr::from_args(&[&command], &rest) {
        Ok(parsed) => parsed,
        Err(early) => {
            // --help goes to stdout with success; a usage error to stderr with exit code 2.
            if early.status.is_ok() {
                println!("{}", early.output);
                std::process::exit(0);
            }
            eprintln!("{}", early.output);
            std::process::exit(2);
        }
    };
    if let Err(error) = cli::run(parsed) {
        eprintln!("cpr: error: {}", error_chain(&error));
        std::process::exit(error.exit_code());
    }
}

/// The error and its causes, as one line: the top message says what failed, the causes say why.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}
