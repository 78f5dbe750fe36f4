//! Embeds an rpath to the libtorch that torch-sys linked against, so the binary and the
//! test executables run without LD_LIBRARY_PATH.
fn main() {
    // torch-sys (links = "tch") exports its lib dir to direct dependents as DEP_TCH_LIBTORCH_LIB.
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let dir = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.into());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
        // For `selfsup::venv`: the setup venv's Python sits next to this libtorch.
        println!("cargo:rustc-env=SELFSUP_LIBTORCH_LIB={}", dir.display());
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
