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

fn main() {
    tune_malloc();
    let cli = selfsup::cli::Cli::parse();
    if let Err(e) = selfsup::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
