//! The binary carries libtorch's CUDA libraries wherever the libtorch it links has them (the
//! pip wheel always has): rustc links with --as-needed, which would drop `libtorch_cuda.so`
//! (nothing calls into it by name; its kernels register themselves when it loads), and
//! libtorch would then see no GPU on any machine. It must still run without a GPU.

mod common;
use std::path::Path;
use std::process::Command;

fn needed_libraries(binary: &str) -> Vec<String> {
    let out = Command::new("readelf")
        .args(["-d", binary])
        .output()
        .expect("readelf runs (binutils)");
    assert!(out.status.success(), "readelf -d {binary} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_string()))
        .collect()
}

#[test]
fn the_binary_needs_libtorch_cuda_where_libtorch_has_it_and_runs_without_a_gpu() {
    let needed = needed_libraries(env!("CARGO_BIN_EXE_selfsup"));
    assert!(needed.iter().any(|l| l == "libtorch_cpu.so"), "{needed:?}");
    let has_cuda = Path::new(selfsup::venv::LIBTORCH_LIB)
        .join("libtorch_cuda.so")
        .exists();
    for lib in ["libtorch_cuda.so", "libc10_cuda.so"] {
        assert_eq!(
            needed.iter().any(|l| l == lib),
            has_cuda,
            "{lib} in NEEDED of the binary ({needed:?}) should follow the linked libtorch"
        );
    }
    // On a machine without a GPU (CI), `auto` falls back to the CPU and says so; `cuda`
    // is a clear error.
    let o = common::selfsup(&["--device", "auto", "config", "--set", "epochs=1"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let o = common::selfsup(&["--device", "cuda", "config"]);
    if tch::Cuda::device_count() == 0 {
        assert!(!o.status.success());
        assert!(
            common::stderr(&o).contains("libtorch sees no CUDA device"),
            "{}",
            common::stderr(&o)
        );
    } else {
        assert!(o.status.success(), "{}", common::stderr(&o));
    }
}
