//! The `cpr` binary: arguments in, exit code out.
#![forbid(unsafe_code)]

use argh::FromArgs;
use cpr::cli;

fn main() {
    cpr::logger::init();
    // The recovery image starts cpr as /init: no arguments to parse, the kernel command line says it all.
    // args_os: PID 1 must not panic on an argv[0] that is not UTF-8.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::process::id() == 1 || argv0.as_encoded_bytes().ends_with(b"init") {
        cpr::boot::main(&cpr::host::Linux);
    }
    let args = match cli::utf8_args(std::env::args_os()) {
        Ok(args) => cli::normalize_args(args),
        Err(message) => {
            eprintln!("cpr: error: {message}");
            std::process::exit(2);
        }
    };
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
        eprintln!("cpr: error: {}", cpr::error::chain(&error));
        std::process::exit(error.exit_code());
    }
}
