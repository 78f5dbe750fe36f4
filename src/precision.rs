//! Mixed precision through libtorch's autocast, on CPU as on CUDA (tch's own `autocast`
//! drives only CUDA's). Inside an `Autocast` scope, ops such as matmul, linear and conv run
//! in the lower precision and ops that need range (softmax, losses) in float.
//!
//! A run's `precision` maps to a scope (`scope`): none for fp32, bfloat16 autocast for bf16,
//! around its forward passes; losses are computed in float32 at the loss boundary
//! (`in_fp32`), as `torch.autocast(enabled=False)` on `.float()` inputs does in PyTorch.
//!
//! A leaf module: it uses nothing of selfsup but `native` and the `config` choice.
use crate::config::Precision;
use crate::native::{self, check};
use anyhow::{Result, bail};
use std::ffi::c_int;
use std::marker::PhantomData;
use tch::{Device, Kind, Tensor};

/// The autocast scope of the forward passes of a run of `precision` on `device`: `None`
/// (nothing changes) for fp32, bfloat16 autocast for bf16.
pub fn scope(precision: Precision, device: Device) -> Result<Option<Autocast>> {
    match precision {
        Precision::Fp32 => Ok(None),
        Precision::Bf16 => Autocast::enter(device, Kind::BFloat16).map(Some),
    }
}

/// The loss boundary of mixed precision: `loss` applied to `inputs` with those in half or
/// bfloat16 cast up to float32, with autocast off, so that similarity matrices, softmax and
/// reductions run in float32 whatever precision produced the inputs. In fp32 runs the
/// casts are no-ops, and float64 inputs (of float64 networks) stay float64.
pub fn in_fp32<const N: usize>(
    inputs: [&Tensor; N],
    loss: impl FnOnce([Tensor; N]) -> Tensor,
) -> Tensor {
    let up = |t: &Tensor| match t.kind() {
        Kind::Half | Kind::BFloat16 => t.to_kind(Kind::Float),
        _ => t.shallow_clone(),
    };
    without_autocast(|| loss(inputs.map(up)))
}

/// Runs `f` with autocast off for CPU and CUDA in this thread (inside an autocast scope, as
/// `torch.autocast(enabled=False)`); the previous state comes back afterwards, even if `f`
/// panics.
pub fn without_autocast<T>(f: impl FnOnce() -> T) -> T {
    /// Restores autocast of CPU and CUDA to what it was when dropped.
    struct Restore([c_int; 2]);
    impl Drop for Restore {
        fn drop(&mut self) {
            for (device_type, prev) in [CPU, CUDA].into_iter().zip(self.0) {
                native::selfsup_autocast_set_enabled(device_type, prev);
            }
        }
    }
    let _restore = Restore([CPU, CUDA].map(|d| native::selfsup_autocast_set_enabled(d, 0)));
    f()
}

/// libtorch's process-wide settings for a run: cuDNN's benchmark mode (the fastest
/// convolution algorithm for each shape, found by timing them; not reproducible, so off when
/// `deterministic`), TensorFloat-32 for float32 matrix products and convolutions on CUDA
/// (`tf32`), and deterministic algorithms (`torch.use_deterministic_algorithms(True)`: an op
/// without a deterministic implementation is an error instead of a silent difference; with
/// `CUBLAS_WORKSPACE_CONFIG` set by the caller before CUDA starts). On the CPU only
/// `deterministic` changes anything.
pub fn set_backend(tf32: bool, deterministic: bool) -> Result<()> {
    check(native::selfsup_set_backend(
        !deterministic as c_int,
        tf32 as c_int,
        deterministic as c_int,
    ))
}

/// What `set_backend` set: (cuDNN benchmark, TF32 for matmul, TF32 for cuDNN,
/// deterministic algorithms).
pub fn backend() -> (bool, bool, bool, bool) {
    let mut out = [0 as c_int; 4];
    // SAFETY: the shim writes exactly four ints.
    unsafe { native::selfsup_get_backend(out.as_mut_ptr()) };
    (out[0] != 0, out[1] != 0, out[2] != 0, out[3] != 0)
}

/// c10::DeviceType's numbers of the devices autocast runs on.
const CPU: c_int = 0;
const CUDA: c_int = 1;

/// An autocast scope: entered by `Autocast::enter`, left (restoring the previous state and, at
/// the outermost level, dropping the cached casts of the weights) when dropped, as
/// `torch.autocast` does. Autocast state belongs to the thread, so the guard stays on it.
#[must_use = "autocast ends when the guard is dropped"]
pub struct Autocast {
    device_type: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
    _this_thread: PhantomData<*const ()>,
}

impl Autocast {
    /// Autocast for `device`'s type (CPU or CUDA, any index) in `dtype` (BFloat16 or Half).
    pub fn enter(device: Device, dtype: Kind) -> Result<Autocast> {
        let device_type = device_type(device)?;
        // c10::ScalarType's numbers.
        let dtype = match dtype {
            Kind::Half => 5,
            Kind::BFloat16 => 15,
            other => bail!("autocast computes in BFloat16 or Half, not {other:?}"),
        };
        let (mut prev_enabled, mut prev_dtype) = (0, 0);
        check(unsafe {
            native::selfsup_autocast_enter(device_type, dtype, &mut prev_enabled, &mut prev_dtype)
        })?;
        Ok(Autocast {
            device_type,
            prev_enabled,
            prev_dtype,
            _this_thread: PhantomData,
        })
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        let e = unsafe {
            native::selfsup_autocast_exit(self.device_type, self.prev_enabled, self.prev_dtype)
        };
        if let Err(e) = check(e) {
            eprintln!("selfsup: leaving autocast: {e:#}");
        }
    }
}

/// Whether autocast is on for `device`'s type in this thread.
pub fn autocast_enabled(device: Device) -> Result<bool> {
    Ok(native::selfsup_autocast_is_enabled(device_type(device)?) != 0)
}

fn device_type(device: Device) -> Result<c_int> {
    match device {
        Device::Cpu => Ok(CPU),
        Device::Cuda(_) => Ok(CUDA),
        other => bail!("autocast runs on CPU or CUDA, not {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    fn ones(shape: &[i64]) -> Tensor {
        Tensor::ones(shape, (Kind::Float, Device::Cpu))
    }

    #[test]
    fn cpu_autocast_computes_in_bfloat16_inside_the_scope_only() {
        let (a, b) = (ones(&[2, 3]), ones(&[3, 4]));
        let (w, bias) = (ones(&[5, 3]), ones(&[5]));
        let (image, kernel) = (ones(&[1, 3, 6, 6]), ones(&[2, 3, 3, 3]));
        let kinds = || {
            [
                a.matmul(&b).kind(),
                a.linear(&w, Some(&bias)).kind(),
                image
                    .conv2d(&kernel, None::<Tensor>, [1], [0], [1], 1)
                    .kind(),
            ]
        };
        assert!(!autocast_enabled(Device::Cpu).unwrap());
        {
            let _amp = Autocast::enter(Device::Cpu, Kind::BFloat16).unwrap();
            assert!(autocast_enabled(Device::Cpu).unwrap());
            assert_eq!(kinds(), [Kind::BFloat16; 3]);
            assert!(
                !autocast_enabled(Device::Cuda(0)).unwrap(),
                "CPU autocast leaves CUDA's alone"
            );
        }
        assert!(!autocast_enabled(Device::Cpu).unwrap());
        assert_eq!(kinds(), [Kind::Float; 3]);
    }

    #[test]
    fn nested_scopes_restore_the_outer_dtype() {
        let (a, b) = (ones(&[2, 3]), ones(&[3, 4]));
        let outer = Autocast::enter(Device::Cpu, Kind::BFloat16).unwrap();
        {
            let _inner = Autocast::enter(Device::Cpu, Kind::Half).unwrap();
            assert_eq!(a.matmul(&b).kind(), Kind::Half);
        }
        assert_eq!(a.matmul(&b).kind(), Kind::BFloat16);
        drop(outer);
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
    }

    #[test]
    fn the_loss_boundary_computes_in_float32_and_autocast_resumes_after_it() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(5);
        let a = Tensor::randn([4, 64], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([64, 3], (Kind::Float, Device::Cpu));
        let exact = a.matmul(&b);
        let _amp = scope(Precision::Bf16, Device::Cpu).unwrap().unwrap();
        let low = a.matmul(&b);
        assert_eq!(low.kind(), Kind::BFloat16);
        assert!(
            !low.to_kind(Kind::Float).equal(&exact),
            "bf16 differs from fp32"
        );
        // Inputs cast to float32 and autocast off: the float32 product, bit for bit.
        let inside = in_fp32([&a, &b], |[a, b]| {
            assert!(!autocast_enabled(Device::Cpu).unwrap());
            a.matmul(&b)
        });
        assert_eq!(inside.kind(), Kind::Float);
        assert!(inside.equal(&exact));
        // bf16 inputs are cast up: the result is float32; float64 stays float64.
        let up = in_fp32([&low], |[x]| x.exp());
        assert_eq!(up.kind(), Kind::Float);
        let wide = in_fp32([&a.to_kind(Kind::Double)], |[x]| x);
        assert_eq!(wide.kind(), Kind::Double);
        assert!(
            autocast_enabled(Device::Cpu).unwrap(),
            "autocast is back on"
        );
        assert_eq!(a.matmul(&b).kind(), Kind::BFloat16);
    }

    #[test]
    fn fp32_has_no_scope_and_without_autocast_restores_even_after_a_panic() {
        assert!(scope(Precision::Fp32, Device::Cpu).unwrap().is_none());
        let _amp = scope(Precision::Bf16, Device::Cpu).unwrap().unwrap();
        let r = std::panic::catch_unwind(|| without_autocast(|| panic!("inside")));
        assert!(r.is_err());
        assert!(autocast_enabled(Device::Cpu).unwrap());
    }

    #[test]
    fn backend_settings_read_back_as_set() {
        // Process-wide flags: the previous ones come back at the end. Deterministic mode is
        // switched on only for the instant of the read (CPU ops that other tests run in
        // parallel have deterministic kernels anyway).
        let before = backend();
        set_backend(false, true).unwrap();
        let strict = backend();
        set_backend(true, false).unwrap();
        let fast = backend();
        check(native::selfsup_set_backend(
            before.0 as c_int,
            before.1 as c_int,
            before.3 as c_int,
        ))
        .unwrap();
        assert_eq!(strict, (false, false, false, true));
        assert_eq!(fast, (true, true, true, false));
    }

    #[test]
    fn unsupported_dtype_or_device_is_an_error() {
        let e = Autocast::enter(Device::Cpu, Kind::Double)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("BFloat16 or Half, not Double"), "{e}");
        let e = Autocast::enter(Device::Mps, Kind::Half)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("CPU or CUDA"), "{e}");
    }
}
