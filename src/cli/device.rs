//! `--device` and `--threads`: the compute device of a command (and of each data-parallel
//! rank) and the thread pools of libtorch and of the data pipeline.

use crate::dist::DistEnv;
use anyhow::{Context, Result, bail};
use tch::Device;

/// Resolves `--device`.
pub fn parse_device(s: &str) -> Result<Device> {
    let cuda_n = tch::Cuda::device_count();
    let need = |i: i64| -> Result<Device> {
        if i < cuda_n {
            Ok(Device::Cuda(i as usize))
        } else if cuda_n == 0 {
            bail!(
                "--device {s}: libtorch sees no CUDA device on this machine; use --device cpu or auto"
            )
        } else {
            bail!(
                "--device {s}: only {cuda_n} CUDA device(s), numbered 0..{}",
                cuda_n - 1
            )
        }
    };
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => need(0),
        _ => match s.strip_prefix("cuda:").map(|n| n.parse::<i64>()) {
            Some(Ok(i)) if i >= 0 => need(i),
            _ => bail!("--device '{s}' is not one of auto, cpu, cuda, cuda:N"),
        },
    }
}

/// The device of a data-parallel rank: the CPU, or the GPU of its LOCAL_RANK among the GPUs
/// it sees (modulo their number: under Slurm with one GPU per task, each rank sees only its
/// own, as device 0).
pub fn rank_device(device_arg: &str, device: Device, env: &DistEnv) -> Result<Device> {
    if !device.is_cuda() {
        return Ok(device);
    }
    if device_arg.starts_with("cuda:") {
        bail!(
            "--device {device_arg}: under a launcher each rank takes the GPU of its LOCAL_RANK; pass --device cuda (or auto)"
        );
    }
    let count = tch::Cuda::device_count().max(1) as usize;
    parse_device(&format!("cuda:{}", env.local_rank % count))
        .with_context(|| format!("LOCAL_RANK={}", env.local_rank))
}

/// `--threads N`: libtorch's threads and the data pipeline's (rayon's global pool).
pub fn set_threads(n: usize) -> Result<()> {
    if n == 0 || n > 1024 {
        bail!("--threads {n}: must be between 1 and 1024");
    }
    tch::set_num_threads(n as i32);
    // Ignore the error if a pool already exists (only in tests).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    Ok(())
}

/// A rank started by a launcher shares the machine with the others: its data pipeline
/// (rayon) takes as many threads as libtorch, `OMP_NUM_THREADS` (which torchrun sets to 1
/// and `selfsup launch` to cores / N), unless `RAYON_NUM_THREADS` says otherwise.
pub fn follow_omp_num_threads() {
    let omp = std::env::var("OMP_NUM_THREADS").ok();
    if let Some(n) = omp.and_then(|v| v.trim().parse::<usize>().ok())
        && n > 0
        && std::env::var_os("RAYON_NUM_THREADS").is_none()
    {
        // Ignore the error if a pool already exists (only in tests).
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
}
