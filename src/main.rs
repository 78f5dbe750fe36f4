use clap::Parser;

fn main() {
    let cli = selfsup::cli::Cli::parse();
    if let Err(e) = selfsup::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
