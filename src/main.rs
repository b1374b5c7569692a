fn main() {
    let args: cpr::cli::Cpr = argh::from_env();
    if let Err(e) = cpr::cli::run(args) {
        eprintln!("cpr: {e}");
        std::process::exit(e.exit_code());
    }
}
