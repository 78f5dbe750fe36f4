//! Mixed precision through libtorch's autocast, on CPU as on CUDA (tch's own `autocast`
//! drives only CUDA's). Inside an `Autocast` scope, ops such as matmul, linear and conv run
//! in the lower precision and ops that need range (softmax, losses) in float.
//!
//! A leaf module: it uses nothing of selfsup but `native`.
use crate::native::{self, check};
use anyhow::{Result, bail};
use std::ffi::c_int;
use std::marker::PhantomData;
use tch::{Device, Kind};

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

/// c10::DeviceType's numbers.
fn device_type(device: Device) -> Result<c_int> {
    match device {
        Device::Cpu => Ok(0),
        Device::Cuda(_) => Ok(1),
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
