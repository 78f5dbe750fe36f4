//! The C ABI of `shim.cpp` (compiled by build.rs) and its error strings. The safe API over
//! it is `dist` (c10d process groups and the gradient reducer), `precision` (autocast) and `optim` (the fused
//! optimizer kernels), the modules above it.
//!
//! Each fallible function returns null on success or an error message allocated by the shim,
//! which `check` turns into an `anyhow::Error` and frees.
use anyhow::{Result, anyhow};
use std::ffi::{CStr, c_char, c_int};
use tch::Tensor;
use torch_sys::C_tensor;

/// A c10d process group (the shim's `SelfsupGroup`), only ever behind a pointer.
#[repr(C)]
pub(crate) struct Group {
    _opaque: [u8; 0],
}

/// The shim's gradient reducer (`SelfsupReducer`), only ever behind a pointer.
#[repr(C)]
pub(crate) struct Reducer {
    _opaque: [u8; 0],
}

/// The shape of the two all-gathers: (group, input, out: the gathered tensor) -> error.
pub(crate) type GatherFn =
    unsafe extern "C" fn(*mut Group, *const C_tensor, *mut *mut C_tensor) -> *mut c_char;

unsafe extern "C" {
    fn selfsup_free_error(error: *mut c_char);
    pub(crate) safe fn selfsup_has_nccl() -> c_int;
    pub(crate) fn selfsup_pg_create(
        rank: c_int,
        world: c_int,
        master_addr: *const c_char,
        master_port: c_int,
        store_prefix: *const c_char,
        timeout_ms: i64,
        backend: c_int,
        cuda_device: c_int,
        out: *mut *mut Group,
    ) -> *mut c_char;
    pub(crate) fn selfsup_pg_destroy(group: *mut Group) -> *mut c_char;
    pub(crate) fn selfsup_pg_all_reduce_sum(group: *mut Group, t: *const C_tensor) -> *mut c_char;
    pub(crate) fn selfsup_pg_broadcast(
        group: *mut Group,
        t: *const C_tensor,
        root: c_int,
    ) -> *mut c_char;
    pub(crate) fn selfsup_pg_barrier(group: *mut Group) -> *mut c_char;
    pub(crate) fn selfsup_pg_fail(
        group: *mut Group,
        what: *const c_char,
        cause: *const c_char,
    ) -> *mut c_char;
    pub(crate) fn selfsup_pg_all_gather(
        group: *mut Group,
        t: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    pub(crate) fn selfsup_pg_all_gather_autograd(
        group: *mut Group,
        t: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    pub(crate) fn selfsup_reducer_create(
        group: *mut Group,
        params: *const *const C_tensor,
        n: c_int,
        bucket_sizes: *const i64,
        buckets: c_int,
        out: *mut *mut Reducer,
    ) -> *mut c_char;
    pub(crate) fn selfsup_reducer_destroy(reducer: *mut Reducer);
    pub(crate) fn selfsup_reducer_matches(
        reducer: *mut Reducer,
        params: *const *const C_tensor,
        n: c_int,
    ) -> c_int;
    pub(crate) fn selfsup_reducer_prepare(
        reducer: *mut Reducer,
        loss: *const C_tensor,
    ) -> *mut c_char;
    pub(crate) fn selfsup_reducer_finish(reducer: *mut Reducer) -> *mut c_char;
    pub(crate) fn selfsup_reducer_abort(reducer: *mut Reducer);
    pub(crate) fn selfsup_reducer_stats(reducer: *mut Reducer, out: *mut i64);
    pub(crate) fn selfsup_autocast_enter(
        device_type: c_int,
        dtype: c_int,
        prev_enabled: *mut c_int,
        prev_dtype: *mut c_int,
    ) -> *mut c_char;
    pub(crate) fn selfsup_autocast_exit(
        device_type: c_int,
        prev_enabled: c_int,
        prev_dtype: c_int,
    ) -> *mut c_char;
    pub(crate) safe fn selfsup_autocast_is_enabled(device_type: c_int) -> c_int;
    pub(crate) safe fn selfsup_autocast_set_enabled(device_type: c_int, enabled: c_int) -> c_int;
    pub(crate) safe fn selfsup_set_backend(
        cudnn_benchmark: c_int,
        tf32: c_int,
        deterministic: c_int,
    ) -> *mut c_char;
    pub(crate) fn selfsup_get_backend(out: *mut c_int);
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn selfsup_fused_adam(
        decoupled: c_int,
        params: *const *const C_tensor,
        grads: *const *const C_tensor,
        exp_avgs: *const *const C_tensor,
        exp_avg_sqs: *const *const C_tensor,
        n: c_int,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        step: i64,
    ) -> *mut c_char;
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn selfsup_clear_grads(params: *const *const C_tensor, n: c_int) -> *mut c_char;
    pub(crate) fn selfsup_ema(
        targets: *const *const C_tensor,
        online: *const *const C_tensor,
        n: c_int,
        m: f64,
    ) -> *mut c_char;
    #[cfg(test)]
    safe fn selfsup_host_reads() -> i64;
    fn selfsup_profile_start() -> *mut c_char;
    #[allow(clippy::too_many_arguments)]
    fn selfsup_conv_bn_relu_eval(
        x: *const C_tensor,
        w: *const C_tensor,
        gamma: *const C_tensor,
        beta: *const C_tensor,
        mean: *const C_tensor,
        var: *const C_tensor,
        eps: f64,
        stride: i64,
        padding: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn selfsup_profile_stop() -> *mut c_char;
    #[allow(clippy::too_many_arguments)]
    fn selfsup_bn_relu_train(
        x: *const C_tensor,
        weight: *const C_tensor,
        bias: *const C_tensor,
        residual: *const C_tensor,
        running_mean: *const C_tensor,
        running_var: *const C_tensor,
        momentum: f64,
        eps: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    pub(crate) fn selfsup_fused_sgd(
        params: *const *const C_tensor,
        grads: *const *const C_tensor,
        bufs: *const *const C_tensor,
        n: c_int,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        first_step: c_int,
    ) -> *mut c_char;
}

/// The shim's view of a list of tensors: pointers that stay valid while the tensors live.
pub(crate) fn ptrs<'a>(ts: impl IntoIterator<Item = &'a Tensor>) -> Vec<*const C_tensor> {
    ts.into_iter().map(Tensor::as_ptr).collect()
}

/// How many times libtorch has made the host wait for a tensor's value (`Tensor::item`, and the
/// operators whose output shape depends on the data: nonzero, masked_select, unique) on this
/// thread since its first call, which starts the count. On a GPU each is a synchronisation
/// that stalls the step; the count sees them on the CPU too, for the tests. (A copy of a
/// CPU tensor's data into a Vec, `Vec::try_from`, calls no operator and is not counted.)
#[cfg(test)]
pub fn host_reads() -> i64 {
    selfsup_host_reads()
}

/// relu(batch_norm(x) + residual) in training mode (`[N, C, H, W]`, batch statistics; the
/// running mean and variance `[C]` updated in place as libtorch's batch_norm updates them; the
/// residual optional, like x), forward and backward as one autograd function: on the CPU over
/// channels-last float32 or bfloat16 input, one pass for the statistics and one for the output
/// forward, two backward, where libtorch's batch_norm and relu make seven (the ReLU's mask is
/// recomputed from the input). Elsewhere it is libtorch's batch_norm, add and relu.
#[allow(clippy::too_many_arguments)]
pub fn bn_relu_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    residual: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    momentum: f64,
    eps: f64,
) -> Result<Tensor> {
    // SAFETY: the tensors are alive for the call.
    unsafe {
        new_tensor(|out| {
            selfsup_bn_relu_train(
                x.as_ptr(),
                weight.as_ptr(),
                bias.as_ptr(),
                residual.map_or(std::ptr::null(), Tensor::as_ptr),
                running_mean.as_ptr(),
                running_var.as_ptr(),
                momentum,
                eps,
                out,
            )
        })
    }
}

/// relu(batch_norm(conv2d(x, w, stride, padding), running statistics)) in evaluation mode as
/// one oneDNN convolution, the batch norm folded into its weights and bias and the ReLU its
/// post-op; an error where that does not apply (not the CPU, gradients on, a dtype other
/// than float32 and bfloat16), for the caller to run the three steps instead.
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_relu_eval(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    stride: i64,
    padding: i64,
) -> Result<Tensor> {
    // SAFETY: the tensors are alive for the call.
    unsafe {
        new_tensor(|out| {
            selfsup_conv_bn_relu_eval(
                x.as_ptr(),
                w.as_ptr(),
                gamma.as_ptr(),
                beta.as_ptr(),
                mean.as_ptr(),
                var.as_ptr(),
                eps,
                stride,
                padding,
                out,
            )
        })
    }
}

/// One operator in a profile: how many times it ran and its self time (its wall time less
/// that of the operators it called), as PyTorch's profiler counts them.
#[derive(Debug, Clone, PartialEq)]
pub struct OpTime {
    pub name: String,
    pub calls: u64,
    pub self_secs: f64,
}

/// Runs `f` with every libtorch operator on this thread timed (forward, a CPU backward pass,
/// the optimizer's kernels; not other threads' work): `f`'s result and the operators, slowest
/// first. Used by `bench-step --profile`; the timing costs a few microseconds per operator.
pub fn profile<T>(f: impl FnOnce() -> T) -> Result<(T, Vec<OpTime>)> {
    /// Stops the profile even where `f` panics, so that no callback outlives it.
    struct Running;
    impl Running {
        fn stop(self) -> String {
            std::mem::forget(self);
            // SAFETY: stop returns a NUL-terminated string from strdup.
            unsafe { take_string(selfsup_profile_stop()) }
        }
    }
    impl Drop for Running {
        fn drop(&mut self) {
            unsafe { selfsup_free_error(selfsup_profile_stop()) };
        }
    }
    check(unsafe { selfsup_profile_start() })?;
    let running = Running;
    let out = f();
    let text = running.stop();
    let mut ops = Vec::new();
    for line in text.lines() {
        let mut parts = line.rsplitn(3, '\t');
        let (Some(ns), Some(calls), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(anyhow!("a garbled line from the op profiler: {line:?}"));
        };
        ops.push(OpTime {
            name: name.to_string(),
            calls: calls.parse()?,
            self_secs: ns.parse::<i64>()? as f64 * 1e-9,
        });
    }
    ops.sort_by(|a, b| b.self_secs.total_cmp(&a.self_secs));
    Ok((out, ops))
}

/// The result of a shim call: Ok for null, else its message (which is freed here).
pub(crate) fn check(error: *mut c_char) -> Result<()> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string from the shim's strdup.
    Err(anyhow!(unsafe { take_string(error) }))
}

/// Runs a shim call that hands over a new tensor through its `out` argument (the pointer
/// `call` is given): that tensor, or the shim's error.
///
/// # Safety
/// `call` passes its argument to the shim function as `out`, and every tensor it names is
/// alive for the call.
pub(crate) unsafe fn new_tensor(
    call: impl FnOnce(*mut *mut C_tensor) -> *mut c_char,
) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    check(call(&mut out))?;
    // SAFETY: on success the shim has put a new tensor in `out`, which is now ours.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// A string the shim allocated (strdup), copied and freed.
///
/// # Safety
/// `s` is a non-null, NUL-terminated string from the shim's strdup, not used after this.
unsafe fn take_string(s: *mut c_char) -> String {
    let text = unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned();
    unsafe { selfsup_free_error(s) };
    text
}

#[cfg(test)]
mod tests {
    use super::{host_reads, profile};
    use tch::{Device, Kind, Tensor};

    /// The profiler counts each operator's calls, nests self times inside the wall time of
    /// the whole, times the backward pass on this thread, and stops with its scope.
    #[test]
    fn the_op_profiler_counts_calls_and_self_times_within_the_wall_time() {
        let x = Tensor::rand([64, 8, 16, 16], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let k = Tensor::rand([16, 8, 3, 3], (Kind::Float, Device::Cpu));
        let m = Tensor::rand([256, 256], (Kind::Float, Device::Cpu));
        let start = std::time::Instant::now();
        let (_, ops) = profile(|| {
            for _ in 0..3 {
                let _ = m.mm(&m);
            }
            let y = x
                .conv2d(&k, None::<Tensor>, [1], [1], [1], 1)
                .sum(Kind::Float);
            y.backward();
        })
        .unwrap();
        let wall = start.elapsed().as_secs_f64();
        let get = |n: &str| ops.iter().find(|o| o.name == n);
        assert_eq!(get("aten::mm").map(|o| o.calls), Some(3), "{ops:?}");
        assert!(
            ops.iter().any(|o| o.name.contains("convolution_backward")),
            "the backward pass: {ops:?}"
        );
        let total: f64 = ops.iter().map(|o| o.self_secs).sum();
        assert!(ops.iter().all(|o| o.self_secs >= 0.0), "{ops:?}");
        assert!(
            total > 0.0 && total <= wall,
            "self times {total} s, wall {wall} s"
        );
        // The callback went with the profile: a second one starts afresh and sees only its own.
        let (_, again) = profile(|| m.relu()).unwrap();
        assert!(again.iter().all(|o| o.name != "aten::mm"), "{again:?}");
        assert_eq!(
            again
                .iter()
                .find(|o| o.name == "aten::relu")
                .map(|o| o.calls),
            Some(1)
        );
    }

    /// The counter sees each kind of host read once, and none in arithmetic or autograd.
    #[test]
    fn host_reads_count_item_and_data_dependent_shapes_only() {
        let x = Tensor::rand([4, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let before = host_reads();
        let y = (x.matmul(&x.tr()).relu() * 2.0).sum(Kind::Float);
        y.backward();
        assert_eq!(host_reads(), before, "arithmetic and backward read nothing");
        let _ = y.double_value(&[]);
        assert_eq!(host_reads(), before + 1, "double_value");
        let _ = x.int64_value(&[0, 0]);
        assert_eq!(host_reads(), before + 2, "int64_value");
        let _ = x.gt(0.5).nonzero();
        assert_eq!(host_reads(), before + 3, "nonzero");
        // (masked_select counts twice: it runs nonzero inside.)
        let _ = x.masked_select(&x.gt(0.5));
        assert!(host_reads() > before + 3, "masked_select");
        // Another thread's reads are its own.
        let mine = host_reads();
        std::thread::spawn(|| Tensor::from(1.0).double_value(&[]))
            .join()
            .unwrap();
        assert_eq!(host_reads(), mine, "another thread's read");
    }
}
