//! Embeds an rpath to the libtorch that torch-sys linked against, so the binary and the
//! test executables run without LD_LIBRARY_PATH, and compiles selfsup's native shim
//! (`src/native/shim.cpp`: PyTorch's c10d and libtorch's autocast) against that libtorch.
use std::path::{Path, PathBuf};

fn main() {
    let lib = libtorch_lib();
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // For `selfsup::venv`: the setup venv's Python sits next to this libtorch.
    println!("cargo:rustc-env=SELFSUP_LIBTORCH_LIB={}", lib.display());

    let root = lib.parent().expect("libtorch's lib folder has a parent");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("src/native/shim.cpp")
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        // The shim is glue around libtorch calls: -O1 compiles in half the time of -O3.
        .opt_level(1)
        .include("src/native/stub");
    let cuda = lib.join("libtorch_cuda.so").exists();
    let nccl = nccl_includes(&lib);
    if cuda && nccl.is_none() {
        println!(
            "cargo:warning=libtorch has CUDA but the NCCL or CUDA headers were not found (scripts/setup.sh installs them from the torch wheel's nvidia packages): multi-GPU runs will stop with an error"
        );
    }
    let mut headers = vec![
        root.join("include"),
        root.join("include/torch/csrc/api/include"),
    ];
    if let Some(dirs) = &nccl {
        build.define("USE_C10D_NCCL", None);
        headers.extend(dirs.iter().cloned());
    }
    // System headers: compiler warnings for the shim's own code only, not for libtorch's.
    for dir in headers {
        build.flag("-isystem").flag(dir);
    }
    build.compile("selfsup_native");
    // The fused batch norm + ReLU loops the shim calls (after it on the link line): plain C++,
    // vectorised by the compiler at -O3, split among threads by OpenMP. The binary then needs
    // libgomp.so.1, which libtorch needs too: the loader finds libtorch's copy (the rpath) and
    // loads it once, so these loops and libtorch's share one thread pool and its thread count.
    cc::Build::new()
        .cpp(true)
        .file("src/native/bn_relu.cpp")
        .flag("-std=c++17")
        .flag("-fopenmp")
        .opt_level(3)
        .compile("selfsup_kernels");
    println!("cargo:rustc-link-lib=gomp");
    // After the static shim on the link line, so that its references resolve.
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=torch_cpu");
    println!("cargo:rustc-link-lib=c10");
    if cuda {
        // Nothing in selfsup calls into libtorch_cuda directly: its CUDA kernels and
        // allocator register themselves when the library is loaded. With rustc's default
        // --as-needed the linker drops it, and libtorch then sees no CUDA device on any
        // machine. It loads without a GPU or driver (PyTorch's CUDA wheel imports on CPU
        // machines the same way), so the CPU build and tests run with it too.
        for arg in [
            "-Wl,--no-as-needed",
            "-ltorch_cuda",
            "-lc10_cuda",
            "-Wl,--as-needed",
        ] {
            println!("cargo:rustc-link-arg={arg}");
        }
    }

    for file in ["shim.cpp", "bn_relu.cpp", "bn_relu.h"] {
        println!("cargo:rerun-if-changed=src/native/{file}");
    }
    println!("cargo:rerun-if-changed=src/native/stub");
    for var in ["DEP_TCH_LIBTORCH_LIB", "LIBTORCH", "CUDA_HOME", "CUDA_PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
}

/// libtorch's `lib` folder, found as torch-sys found it: torch-sys (links = "tch") exports it
/// to direct dependents as DEP_TCH_LIBTORCH_LIB; else `$LIBTORCH/lib` (.cargo/config.toml).
fn libtorch_lib() -> PathBuf {
    let dir = std::env::var_os("DEP_TCH_LIBTORCH_LIB")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("LIBTORCH").map(|t| PathBuf::from(t).join("lib")))
        .expect("neither DEP_TCH_LIBTORCH_LIB nor LIBTORCH is set: where is libtorch?");
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

/// NCCL support needs a CUDA libtorch (`libtorch_cuda.so`) and the headers that
/// ProcessGroupNCCL.hpp includes beyond libtorch's own: `nccl.h` (the wheel's `nvidia/nccl`)
/// and the CUDA runtime's (`cuda_runtime_api.h`, `crt/host_config.h`, `nv/target`: a CUDA
/// toolkit, or pip's `cuda-toolkit[cccl,crt]` in `nvidia/cu13` beside the torch folder).
/// Returns the include folders when every one is found; else the shim is built without
/// NCCL and an NCCL group is a clear error.
fn nccl_includes(lib: &Path) -> Option<Vec<PathBuf>> {
    if !lib.join("libtorch_cuda.so").exists() {
        return None;
    }
    let site_packages = lib.parent()?.parent()?;
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(site_packages.join("nvidia"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("include"))
        .collect();
    dirs.sort();
    let toolkits = ["CUDA_HOME", "CUDA_PATH"]
        .into_iter()
        .filter_map(std::env::var_os);
    dirs.extend(
        toolkits
            .map(PathBuf::from)
            .chain([PathBuf::from("/usr/local/cuda")])
            .map(|d| d.join("include")),
    );
    dirs.retain(|d| d.is_dir());
    let needed = [
        "nccl.h",
        "cuda_runtime_api.h",
        "crt/host_config.h",
        "nv/target",
    ];
    needed
        .iter()
        .all(|h| dirs.iter().any(|d| d.join(h).exists()))
        .then_some(dirs)
}
