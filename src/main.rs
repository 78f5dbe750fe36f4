use clap::Parser;

/// Keeps glibc from serving libtorch's large activation buffers with fresh mmaps (and
/// unmapping them on free): every batch would otherwise pay for page faults and zeroing,
/// which doubled the wall time of a CNN forward pass here.
fn tune_malloc() {
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

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
    tune_malloc();
    let cli = selfsup::cli::Cli::parse();
    if let Err(e) = selfsup::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
