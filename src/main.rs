use clap::Parser;

/// A closed pipe (`selfsup ... | head`) ends the process quietly, as for other command-line
/// tools, instead of a panic on the next print.
fn default_sigpipe() {
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() {
    default_sigpipe();
    selfsup::tune_malloc();
    let cli = selfsup::cli::Cli::parse();
    if let Err(e) = selfsup::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
