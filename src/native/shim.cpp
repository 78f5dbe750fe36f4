// selfsup's one native module: PyTorch's own c10d (TCPStore, Gloo, NCCL, the functional
// collectives, a gradient reducer after DDP's), libtorch's autocast switches and its fused optimizer kernels (which tch does
// not bind: they take lists of tensors), behind a small C ABI for src/native/mod.rs.
//
// Tensors cross as tch's `torch::Tensor*`. Every entry point returns NULL on success or a
// malloc'ed error message (freed by selfsup_free_error): no C++ exception crosses into Rust.
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_fused_sgd.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/distributed/c10d/GroupRegistry.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "bn_relu.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace {

using Ms = std::chrono::milliseconds;
using BackendType = c10d::ProcessGroup::BackendType;

// The host-read counter's state (selfsup_host_reads, below), declared here for the fused
// optimizer, whose CPU kernels read each parameter's step count with item(): a CPU loop's own
// business, which the CUDA kernels do on the device, so not counted.
thread_local int64_t host_reads = 0;
thread_local bool host_reads_counted = false;
thread_local bool host_reads_ignored = false;
struct IgnoreHostReads {
  bool prev;
  explicit IgnoreHostReads(bool on) : prev(host_reads_ignored) { host_reads_ignored = prev || on; }
  ~IgnoreHostReads() { host_reads_ignored = prev; }
};

// An exception's message; a c10 error's without its C++ backtrace, which would bury the cause.
std::string message(const std::exception& e) {
  auto c10_error = dynamic_cast<const c10::Error*>(&e);
  return c10_error ? c10_error->what_without_backtrace() : e.what();
}

// Runs `f`, turning any exception into a malloc'ed error message.
template <class F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(message(e).c_str());
  } catch (...) {
    return strdup("unknown C++ exception");
  }
}

constexpr Ms kHeartbeatEvery{500};
constexpr Ms kHeartbeatWindow{2000};

}  // namespace

// A process group, as Rust holds it (an opaque pointer).
struct SelfsupGroup {
  int rank, world;
  std::string name;
  c10::intrusive_ptr<c10d::Store> store;  // this group's keys; outlives `pg`
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  // After a failed collective the peers are out of step: teardown skips its barrier.
  bool broken = false;
  // Each rank bumps `heartbeat/<rank>` in the store every kHeartbeatEvery on its own
  // connection, so that a failed collective can name the ranks that are gone.
  std::thread heartbeat;
  std::mutex mutex;
  std::condition_variable wake;
  bool stop = false;

  ~SelfsupGroup() { stop_heartbeat(); }

  void beat(c10::intrusive_ptr<c10d::Store> own) {
    std::unique_lock<std::mutex> lock(mutex);
    const auto key = "heartbeat/" + std::to_string(rank);
    while (!stop) {
      try {
        own->add(key, 1);
      } catch (...) {
        return;  // the store is gone; the next collective reports the failure
      }
      wake.wait_for(lock, kHeartbeatEvery, [&] { return stop; });
    }
  }

  void stop_heartbeat() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stop = true;
    }
    wake.notify_all();
    if (heartbeat.joinable()) heartbeat.join();
  }

  // Which peers stopped beating: reads every counter twice, kHeartbeatWindow apart.
  std::string diagnose() {
    try {
      auto read = [&] {
        std::vector<int64_t> beats;
        for (int r = 0; r < world; r++) beats.push_back(store->add("heartbeat/" + std::to_string(r), 0));
        return beats;
      };
      auto before = read();
      std::this_thread::sleep_for(kHeartbeatWindow);
      auto after = read();
      std::string lost;
      for (int r = 0; r < world; r++)
        if (r != rank && before[r] == after[r]) lost += (lost.empty() ? "" : ", ") + std::to_string(r);
      if (lost.empty())
        return "every rank's heartbeat is still alive: a rank is slow or stuck, or the timeout is too short";
      return "lost rank " + lost + ": no heartbeat for " + std::to_string(kHeartbeatWindow.count()) +
             " ms (exited, killed or unreachable)";
    } catch (const std::exception& e) {
      return "the store is unreachable too (rank 0 or the launcher that hosts it is gone?): " + message(e);
    }
  }

  // Waits for a collective; on failure marks the group broken and says who is lost.
  void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* what) {
    try {
      work->wait();
    } catch (const std::exception& e) {
      fail(what, message(e));
    }
  }

  [[noreturn]] void fail(const char* what, const std::string& cause) {
    broken = true;
    throw std::runtime_error(std::string(what) + " failed on rank " + std::to_string(rank) + ": " + cause +
                             "; " + diagnose());
  }
};

namespace {

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

// Gloo binds each rank to a local address that the other ranks must reach. With every rank on
// this host (a loopback master) that is 127.0.0.1; otherwise PyTorch's default: the
// interfaces in GLOO_SOCKET_IFNAME, else the address this machine's hostname resolves to.
c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> gloo_options(const std::string& master, Ms timeout) {
  const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
  if ((ifname && *ifname) || !is_loopback(master)) return c10d::ProcessGroupGloo::Options::create_default(timeout);
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  return options;
}

#ifdef USE_C10D_NCCL
void set_nccl_backend(SelfsupGroup& g, int cuda_device, Ms timeout) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  g.pg->setBoundDeviceId(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda_device)));
  auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(g.store, g.rank, g.world, options);
  g.pg->setDefaultBackend(BackendType::NCCL);
  g.pg->setBackend(c10::DeviceType::CUDA, BackendType::NCCL, nccl);
}
#endif

}  // namespace

extern "C" {

void selfsup_free_error(char* e) { free(e); }

int selfsup_has_nccl() {
#ifdef USE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

// A process group of `world` ranks over the TCPStore at master:port, which rank 0 hosts unless
// `store_prefix` is non-empty (torchrun's agent hosts it and each restart has its own prefix).
// backend: 0 = Gloo (CPU tensors), 1 = NCCL (CUDA tensors of device `cuda_device`).
char* selfsup_pg_create(int rank, int world, const char* master, int port, const char* store_prefix,
                        int64_t timeout_ms, int backend, int cuda_device, SelfsupGroup** out) {
  *out = nullptr;
  return guarded([&] {
    TORCH_CHECK(backend != 1 || selfsup_has_nccl(),
                "this selfsup build has no NCCL support (built without the CUDA headers that "
                "ProcessGroupNCCL.hpp needs: nccl.h, cuda_runtime_api.h, crt/host_config.h, nv/target; "
                "see build.rs)");
    static std::atomic<int> groups{0};
    const Ms timeout(timeout_ms);
    const std::string prefix(store_prefix);
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port);
    so.isServer = prefix.empty() && rank == 0;
    so.numWorkers = world;
    so.timeout = timeout;
    so.multiTenant = true;  // as PyTorch: several groups of one process may share the port
    c10::intrusive_ptr<c10d::Store> base = c10::make_intrusive<c10d::TCPStore>(master, so);
    if (!prefix.empty()) base = c10::make_intrusive<c10d::PrefixStore>(prefix, base);

    // Every rank creates its groups in the same order, so the names agree across ranks.
    auto g = std::make_unique<SelfsupGroup>();
    g->rank = rank;
    g->world = world;
    g->name = "selfsup_pg_" + std::to_string(groups++);
    g->store = c10::make_intrusive<c10d::PrefixStore>(g->name + "/", base);
    g->pg = c10::make_intrusive<c10d::ProcessGroup>(g->store, rank, world);
    if (backend == 1) {
#ifdef USE_C10D_NCCL
      set_nccl_backend(*g, cuda_device, timeout);
#else
      (void)cuda_device;  // refused above
#endif
    } else {
      auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(g->store, rank, world, gloo_options(master, timeout));
      g->pg->setDefaultBackend(BackendType::GLOO);
      g->pg->setBackend(c10::DeviceType::CPU, BackendType::GLOO, gloo);
    }
    g->pg->setGroupName(g->name);
    c10d::register_process_group(g->name, g->pg);  // the functional collectives look it up by name
    g->heartbeat = std::thread(&SelfsupGroup::beat, g.get(), g->store->clone());
    *out = g.release();
  });
}

// Barrier (skipped once a collective failed), unregister, free. `g` is freed even on error.
// Without the barrier, a rank could tear down while a peer's last collective (e.g. the
// reduce-scatter of a backward) still needs it: that crashed the probe.
char* selfsup_pg_destroy(SelfsupGroup* g) {
  std::unique_ptr<SelfsupGroup> owned(g);  // frees the group (the backend, then the store)
  g->stop_heartbeat();
  char* barrier_error = g->broken ? nullptr : guarded([&] { g->wait(g->pg->barrier(), "barrier"); });
  char* unregister_error = guarded([&] { c10d::unregister_process_group(g->name); });
  if (!barrier_error) return unregister_error;
  free(unregister_error);
  return barrier_error;
}

// The plain collectives work on the data of their tensors, outside autograd (as PyTorch's
// `dist.all_reduce(p.data)`): grad mode off, so that a parameter may be updated in place.
char* selfsup_pg_all_reduce_sum(SelfsupGroup* g, const at::Tensor* t) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> ts{*t};
    g->wait(g->pg->allreduce(ts), "all-reduce");
  });
}

char* selfsup_pg_broadcast(SelfsupGroup* g, const at::Tensor* t, int root) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    g->wait(g->pg->broadcast(ts, options), "broadcast");
  });
}

// A collective that failed outside the shim (the reduce-scatter that autograd runs in the
// backward of a differentiable all-gather): marks the group broken and returns `what` and
// `cause` with the heartbeat diagnosis, as a failure inside the shim reads.
char* selfsup_pg_fail(SelfsupGroup* g, const char* what, const char* cause) {
  return guarded([&] { g->fail(what, cause); });
}

char* selfsup_pg_barrier(SelfsupGroup* g) {
  return guarded([&] { g->wait(g->pg->barrier(), "barrier"); });
}

// [B, ...] -> [world * B, ...], rank r's rows at [r * B, (r + 1) * B).
char* selfsup_pg_all_gather(SelfsupGroup* g, const at::Tensor* t, at::Tensor** out) {
  *out = nullptr;
  return guarded([&] {
    at::NoGradGuard no_grad;
    auto input = t->contiguous();
    auto sizes = input.sizes().vec();
    TORCH_CHECK(!sizes.empty(), "all-gather needs a tensor with a batch dimension");
    sizes[0] *= g->world;
    auto gathered = at::empty(sizes, input.options());
    g->wait(g->pg->_allgather_base(gathered, input), "all-gather");
    *out = new at::Tensor(std::move(gathered));
  });
}

// The same gather, differentiable: its backward is a reduce-scatter with SUM, so each rank
// receives the summed gradient of its own rows from every rank's loss.
char* selfsup_pg_all_gather_autograd(SelfsupGroup* g, const at::Tensor* t, at::Tensor** out) {
  *out = nullptr;
  return guarded([&] {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("_c10d_functional_autograd::all_gather_into_tensor", "")
                         .typed<at::Tensor(const at::Tensor&, int64_t, const std::string&)>();
    TORCH_CHECK(t->dim() > 0, "all-gather needs a tensor with a batch dimension");
    at::Tensor gathered;
    try {
      gathered = op.call(t->contiguous(), g->world, g->name);  // [world * B, ...]
      c10d::wait_tensor(gathered);
    } catch (const std::exception& e) {
      g->fail("all-gather", message(e));
    }
    // The backward's reduce-scatter rejects a non-contiguous gradient ("Expected
    // input.is_contiguous()", pytorch #120386), e.g. when the gathered tensor is used
    // through a transpose: hand it a contiguous one.
    if (gathered.requires_grad())
      gathered.register_hook([](const at::Tensor& grad) { return grad.contiguous(); });
    *out = new at::Tensor(std::move(gathered));
  });
}

// Autocast for device_type (0 = CPU, 1 = CUDA) in `dtype` (a c10::ScalarType), as
// torch.autocast.__enter__ does; the previous state comes back for selfsup_autocast_exit.
char* selfsup_autocast_enter(int device_type, int dtype, int* prev_enabled, int* prev_dtype) {
  return guarded([&] {
    const auto device = static_cast<at::DeviceType>(device_type);
    *prev_enabled = at::autocast::is_autocast_enabled(device);
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(device));
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::set_autocast_dtype(device, static_cast<at::ScalarType>(dtype));
    at::autocast::increment_nesting();
  });
}

// As torch.autocast.__exit__: the outermost exit drops the cached casts of the weights.
char* selfsup_autocast_exit(int device_type, int prev_enabled, int prev_dtype) {
  return guarded([&] {
    const auto device = static_cast<at::DeviceType>(device_type);
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device, prev_enabled != 0);
    at::autocast::set_autocast_dtype(device, static_cast<at::ScalarType>(prev_dtype));
  });
}

int selfsup_autocast_is_enabled(int device_type) {
  return at::autocast::is_autocast_enabled(static_cast<at::DeviceType>(device_type));
}

// Switches autocast on or off for a device type without touching the nesting or the cast
// cache (as torch.autocast(enabled=False) inside an autocast scope); returns the previous
// state, for the caller to restore. For CPU and CUDA (the only types passed) it flips a
// thread-local flag and cannot throw.
int selfsup_autocast_set_enabled(int device_type, int enabled) {
  const auto device = static_cast<at::DeviceType>(device_type);
  const int prev = at::autocast::is_autocast_enabled(device);
  at::autocast::set_autocast_enabled(device, enabled != 0);
  return prev;
}

// The process-wide backend settings of a run (as torch.backends.cudnn.benchmark,
// torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 and
// torch.use_deterministic_algorithms set them); settable without a GPU.
char* selfsup_set_backend(int cudnn_benchmark, int tf32, int deterministic) {
  return guarded([&] {
    auto& ctx = at::globalContext();
    ctx.setBenchmarkCuDNN(cudnn_benchmark != 0);
    ctx.setAllowTF32CuBLAS(tf32 != 0);
    ctx.setAllowTF32CuDNN(tf32 != 0);
    ctx.setDeterministicAlgorithms(deterministic != 0, false);
  });
}

// The settings selfsup_set_backend sets, read back: cuDNN benchmark, TF32 for matmul, TF32
// for cuDNN, deterministic algorithms.
void selfsup_get_backend(int* out) {
  auto& ctx = at::globalContext();
  out[0] = ctx.benchmarkCuDNN();
  out[1] = ctx.allowTF32CuBLAS();
  out[2] = ctx.allowTF32CuDNN();
  out[3] = ctx.deterministicAlgorithms();
}

namespace {
std::vector<at::Tensor> tensors(const at::Tensor* const* ts, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; ++i) v.push_back(*ts[i]);
  return v;
}
}  // namespace

// One step of torch.optim.Adam(fused=True) (AdamW when `decoupled`) over n parameters, their
// gradients and moment estimates, all updated in place. `step` is the step being taken (1 for
// the first), as the state_steps that torch.optim increments before calling the kernel.
char* selfsup_fused_adam(int decoupled, const at::Tensor* const* params, const at::Tensor* const* grads,
                         const at::Tensor* const* exp_avgs, const at::Tensor* const* exp_avg_sqs, int n,
                         double lr, double beta1, double beta2, double weight_decay, double eps,
                         int64_t step) {
  return guarded([&] {
    if (n == 0) return;
    auto p = tensors(params, n), g = tensors(grads, n), m = tensors(exp_avgs, n), v = tensors(exp_avg_sqs, n);
    std::vector<at::Tensor> steps;
    steps.reserve(n);
    for (int i = 0; i < n; ++i)
      steps.push_back(at::full({}, static_cast<double>(step), p[i].options().dtype(at::kFloat)));
    IgnoreHostReads cpu_kernel_reads(p[0].is_cpu());
    if (decoupled)
      at::_fused_adamw_(p, g, m, v, {}, steps, lr, beta1, beta2, weight_decay, eps, false, false);
    else
      at::_fused_adam_(p, g, m, v, {}, steps, lr, beta1, beta2, weight_decay, eps, false, false);
  });
}

// One step of torch.optim.SGD(fused=True) (dampening 0, not Nesterov) over n parameters, their
// gradients and momentum buffers; with `first_step` the buffers are set to the gradients.
char* selfsup_fused_sgd(const at::Tensor* const* params, const at::Tensor* const* grads,
                        const at::Tensor* const* bufs, int n, double weight_decay, double momentum,
                        double lr, int first_step) {
  return guarded([&] {
    if (n == 0) return;
    auto p = tensors(params, n), g = tensors(grads, n);
    auto b = momentum != 0 ? tensors(bufs, n) : std::vector<at::Tensor>{};
    at::_fused_sgd_(p, g, b, weight_decay, momentum, lr, 0.0, false, false, first_step != 0);
  });
}

// Each parameter's gradient set to none, as torch.optim's zero_grad(set_to_none=True): no kernel
// zeroes it, the next backward pass writes it fresh, and a parameter that pass does not reach
// keeps none (so that the optimizer leaves it alone).
char* selfsup_clear_grads(const at::Tensor* const* params, int n) {
  return guarded([&] {
    for (int i = 0; i < n; ++i) params[i]->mutable_grad().reset();
  });
}

// The momentum (EMA) update target <- m target + (1 - m) online of n pairs, in two multi-tensor
// kernels (torch._foreach_mul_ and _foreach_add_) instead of three kernels per pair.
char* selfsup_ema(const at::Tensor* const* targets, const at::Tensor* const* online, int n, double m) {
  return guarded([&] {
    if (n == 0) return;
    at::NoGradGuard no_grad;
    auto t = tensors(targets, n), o = tensors(online, n);
    at::_foreach_mul_(t, at::Scalar(m));
    at::_foreach_add_(t, o, at::Scalar(1.0 - m));
  });
}

// Host reads: the operators that make the host wait for a device's result. `aten::_local_scalar_dense`
// is every Tensor::item (tch's double_value, int64_value, f64::try_from); nonzero, masked_select
// and unique have shapes that depend on the data. Counted by a RecordFunction callback, which sees
// them on any device, so that a CPU test can find a read a GPU step would stall on. The callback
// is the calling thread's (the training step and its CPU backward pass run there), so that other
// threads (data loaders, other tests) do not count.
namespace {

bool is_host_read(const char* name) {
  static const char* const names[] = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select",
                                      "aten::_unique", "aten::_unique2", "aten::unique_dim",
                                      "aten::unique_consecutive"};
  for (const char* n : names)
    if (std::strcmp(name, n) == 0) return true;
  return false;
}
}  // namespace

// The number of host reads on this thread since its first call (which starts the count).
int64_t selfsup_host_reads() {
  if (!host_reads_counted) {
    host_reads_counted = true;
    at::addThreadLocalCallback(at::RecordFunctionCallback(
                                   [](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
                                     if (!host_reads_ignored && is_host_read(fn.name())) ++host_reads;
                                     return nullptr;
                                   })
                                   .scopes({at::RecordScope::FUNCTION}));
  }
  return host_reads;
}

// Evaluation-mode convolution (no bias) -> batch norm on its running statistics -> ReLU as one
// oneDNN convolution: the batch norm folded into the weights and a bias, the ReLU its post-op
// (mkldnn::_convolution_pointwise, what inductor calls for frozen CPU inference). Where it
// applies: the CPU with oneDNN, gradients off, float32 or bfloat16 (autocast's dtype when
// autocast is on, as the convolution would have run); else an error, and the caller runs the
// three steps.
char* selfsup_conv_bn_relu_eval(const at::Tensor* x, const at::Tensor* w, const at::Tensor* gamma,
                                const at::Tensor* beta, const at::Tensor* mean, const at::Tensor* var,
                                double eps, int64_t stride, int64_t padding, at::Tensor** out) {
  return guarded([&] {
    if (at::GradMode::is_enabled()) throw std::runtime_error("the fused evaluation convolution needs gradients off");
    if (!x->is_cpu() || !at::hasMKLDNN() || !at::globalContext().userEnabledMkldnn())
      throw std::runtime_error("the fused evaluation convolution is oneDNN's, on the CPU");
    const at::ScalarType dtype =
        at::autocast::is_autocast_enabled(at::kCPU) ? at::autocast::get_autocast_dtype(at::kCPU) : x->scalar_type();
    if (dtype != at::kFloat && dtype != at::kBFloat16)
      throw std::runtime_error("the fused evaluation convolution runs in float32 or bfloat16");
    at::Tensor scale = *gamma * (*var + eps).rsqrt();  // [C_out]
    at::Tensor wf = (*w * scale.view({-1, 1, 1, 1})).to(dtype);
    at::Tensor bf = (*beta - *mean * scale).to(dtype);
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_convolution_pointwise", "");
    std::vector<c10::IValue> stack;
    stack.emplace_back(x->to(dtype));
    stack.emplace_back(wf);
    stack.emplace_back(bf);
    stack.emplace_back(std::vector<int64_t>{padding, padding});
    stack.emplace_back(std::vector<int64_t>{stride, stride});
    stack.emplace_back(std::vector<int64_t>{1, 1});
    stack.emplace_back(int64_t{1});
    stack.emplace_back(std::string("relu"));
    stack.emplace_back(c10::List<std::optional<at::Scalar>>());
    stack.emplace_back(c10::IValue());
    op.callBoxed(&stack);
    *out = new at::Tensor(stack.at(0).toTensor());
  });
}

// Training-mode batch norm (batch statistics, running statistics updated as libtorch's
// batch_norm updates them), plus a residual where one is given (a ResNet block's shortcut),
// followed by ReLU, forward and backward as one autograd function
// over channels-last float32 or bfloat16 activations: the loops in bn_relu.cpp, split among
// libtorch's threads. Where that does not apply (another layout or dtype, not the CPU, one value
// per channel) it is libtorch's batch_norm and relu.
extern "C++" {
namespace {
// The residual is an empty tensor where there is none: libtorch's custom autograd functions take
// no undefined tensors.
bool bn_relu_fusable(const at::Tensor& x, const at::Tensor& residual) {
  const bool fits = residual.numel() == 0 || (residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type() &&
                                            residual.is_contiguous(at::MemoryFormat::ChannelsLast));
  return fits && x.is_cpu() && x.dim() == 4 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast) && x.size(1) > 0 && x.numel() / x.size(1) > 1;
}

// A tensor's elements as T* (its storage read as the loops' element type); null for an undefined
// or empty tensor (no residual).
template <typename T>
T* elements(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
}

// Calls f with a null pointer of x's element type (float, or uint16_t for bfloat16).
template <class F>
void by_element(const at::Tensor& x, F&& f) {
  if (x.scalar_type() == at::kFloat)
    f(static_cast<float*>(nullptr));
  else
    f(static_cast<uint16_t*>(nullptr));
}

struct BnRelu : public torch::autograd::Function<BnRelu> {
  // x [N, C, H, W] channels-last, residual like x or empty; weight, bias, running mean and variance [C].
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& residual, const at::Tensor& running_mean,
                            const at::Tensor& running_var, double momentum, double eps) {
    RECORD_FUNCTION("selfsup::bn_relu_forward", std::vector<c10::IValue>());
    const int64_t C = x.size(1), M = x.numel() / C;
    const at::Tensor rows = x.permute({0, 2, 3, 1}).reshape({M, C});  // [M, C], a view
    const at::Tensor origin = rows[0].to(at::kFloat).contiguous();    // [C], the sums' shift
    at::Tensor y = at::empty_like(x);
    at::Tensor sums = at::empty({2, C}, at::kDouble);
    double* sp = sums.data_ptr<double>();
    by_element(x, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      selfsup_kernels::bn_relu_stats(elements<const T>(x), M, C, origin.data_ptr<float>(), sp, sp + C);
    });
    const at::Tensor d = sums[0] / double(M);                             // [C], mean - origin
    const at::Tensor var = (sums[1] / double(M) - d * d).clamp_min(0.0);  // [C], biased
    const at::Tensor mean64 = origin.to(at::kDouble) + d;
    const at::Tensor invstd64 = (var + eps).rsqrt();
    const at::Tensor scale64 = weight.to(at::kDouble) * invstd64;
    const at::Tensor mean = mean64.to(at::kFloat), invstd = invstd64.to(at::kFloat);
    const at::Tensor scale = scale64.to(at::kFloat), shift = (bias.to(at::kDouble) - mean64 * scale64).to(at::kFloat);
    running_mean.mul_(1.0 - momentum).add_((mean64 * momentum).to(running_mean.scalar_type()));
    running_var.mul_(1.0 - momentum).add_((var * (momentum * double(M) / double(M - 1))).to(running_var.scalar_type()));
    by_element(x, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      selfsup_kernels::bn_relu_forward(elements<const T>(x), elements<const T>(residual), elements<T>(y), M, C,
                                       scale.data_ptr<float>(), shift.data_ptr<float>());
    });
    ctx->save_for_backward({x, residual});
    ctx->saved_data["mean"] = mean;
    ctx->saved_data["invstd"] = invstd;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["shift"] = shift;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    RECORD_FUNCTION("selfsup::bn_relu_backward", std::vector<c10::IValue>());
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &residual = saved[1];
    const at::Tensor gy = grads[0].to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor mean = ctx->saved_data["mean"].toTensor(), invstd = ctx->saved_data["invstd"].toTensor();
    const at::Tensor scale = ctx->saved_data["scale"].toTensor(), shift = ctx->saved_data["shift"].toTensor();
    const int64_t C = x.size(1), M = x.numel() / C;
    at::Tensor gx = at::empty_like(x), grad_residual = residual.numel() > 0 ? at::empty_like(x) : at::Tensor();
    at::Tensor sums = at::empty({2, C}, at::kDouble);  // sum of g, sum of g (x - mean); g past the ReLU
    double* sp = sums.data_ptr<double>();
    const float *sc = scale.data_ptr<float>(), *sh = shift.data_ptr<float>();
    by_element(x, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      selfsup_kernels::bn_relu_backward_sums(elements<const T>(gy), elements<const T>(x), elements<const T>(residual),
                                             M, C, sc, sh, mean.data_ptr<float>(), sp, sp + C);
    });
    const at::Tensor istd = invstd.to(at::kDouble);
    const at::Tensor grad_bias = sums[0], grad_weight = sums[1] * istd;
    // gx = w istd (g - sum_g / M - (x - mean) istd^2 sum_gx / M) = g a + x b + c0, a = w istd = scale
    const at::Tensor a = scale.to(at::kDouble);
    const at::Tensor k = istd * istd * sums[1] / double(M);
    const at::Tensor fa = a.to(at::kFloat), fb = (-a * k).to(at::kFloat);
    const at::Tensor fc = (a * (k * mean.to(at::kDouble) - sums[0] / double(M))).to(at::kFloat);
    by_element(x, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      selfsup_kernels::bn_relu_backward_grad(elements<const T>(gy), elements<const T>(x), elements<const T>(residual),
                                             elements<T>(gx), elements<T>(grad_residual), M, C, sc, sh,
                                             fa.data_ptr<float>(), fb.data_ptr<float>(), fc.data_ptr<float>());
    });
    // (in double: the autograd engine casts each gradient to its input's dtype)
    return {gx, grad_weight, grad_bias, grad_residual, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};
}  // namespace
}  // extern "C++"

char* selfsup_bn_relu_train(const at::Tensor* x, const at::Tensor* weight, const at::Tensor* bias,
                            const at::Tensor* residual, const at::Tensor* running_mean, const at::Tensor* running_var,
                            double momentum, double eps, at::Tensor** out) {
  return guarded([&] {
    const at::Tensor res = residual ? *residual : at::empty({0}, x->options());
    if (!bn_relu_fusable(*x, res)) {
      at::Tensor y = at::batch_norm(*x, *weight, *bias, *running_mean, *running_var, true, momentum, eps, false);
      *out = new at::Tensor((residual ? y + res : y).relu());
      return;
    }
    *out = new at::Tensor(BnRelu::apply(*x, *weight, *bias, res, *running_mean, *running_var, momentum, eps));
  });
}

// The op profiler of `selfsup bench-step --profile`: every operator libtorch runs on this
// thread (forward, the CPU backward pass, the optimizer's kernels), timed by a RecordFunction
// callback, as PyTorch's profiler times them: each op's self time is its wall time less that of
// the ops it calls. One profile at a time per thread; stop returns the table and removes the
// callback.
namespace {
struct OpTime {
  int64_t calls = 0;
  int64_t self_ns = 0;
};
struct Frame {
  std::chrono::steady_clock::time_point start;
  int64_t children_ns = 0;
};
thread_local std::unordered_map<std::string, OpTime> profile_ops;
thread_local std::vector<Frame> profile_stack;
thread_local at::CallbackHandle profile_handle = 0;
}  // namespace

char* selfsup_profile_start() {
  return guarded([&] {
    if (profile_handle != 0) throw std::runtime_error("a profile is already running on this thread");
    profile_ops.clear();
    profile_stack.clear();
    profile_handle = at::addThreadLocalCallback(
        at::RecordFunctionCallback(
            [](const at::RecordFunction&) -> std::unique_ptr<at::ObserverContext> {
              profile_stack.push_back({std::chrono::steady_clock::now(), 0});
              return nullptr;
            },
            [](const at::RecordFunction& fn, at::ObserverContext*) {
              if (profile_stack.empty()) return;  // began before the profile did
              Frame f = profile_stack.back();
              profile_stack.pop_back();
              int64_t wall = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 std::chrono::steady_clock::now() - f.start)
                                 .count();
              if (!profile_stack.empty()) profile_stack.back().children_ns += wall;
              OpTime& t = profile_ops[fn.name()];
              t.calls += 1;
              t.self_ns += wall - f.children_ns;
            })
            .needsInputs(false));
  });
}

// The profile so far as lines "name\tcalls\tself_ns" (malloc'ed, freed by selfsup_free_error),
// and the callback removed.
char* selfsup_profile_stop() {
  if (profile_handle != 0) at::removeCallback(profile_handle);
  profile_handle = 0;
  std::string out;
  for (const auto& [name, t] : profile_ops)
    out += name + "\t" + std::to_string(t.calls) + "\t" + std::to_string(t.self_ns) + "\n";
  profile_ops.clear();
  profile_stack.clear();
  return strdup(out.c_str());
}

}  // extern "C"

// The gradient reducer of data-parallel training, after PyTorch DDP's (torch/csrc/distributed/
// c10d/reducer.cpp): the parameters, in the order their gradients become ready in the backward
// pass (the reverse of the forward's), are cut into buckets, each a flat buffer of one dtype and
// device. A post hook on each parameter's gradient accumulator copies its gradient into its slot
// as soon as autograd has accumulated it; a bucket whose every gradient is in is all-reduced
// (sum) at once, asynchronously, while the backward pass goes on. Buckets are launched in their
// order only, so that every rank issues the same collectives in the same order. After the
// backward pass, `finish` waits for every bucket, divides by the world size and writes the means
// into the gradients.
//
// A parameter that the graph of the loss does not reach gets no gradient in this backward pass:
// it is ready from the start (as DDP's find_unused_parameters), with the gradient it holds
// (zeroed by the optimizer, or none). A parameter without a gradient adds zeros to the sum and
// keeps no gradient, as the parameters left out of a list of gradients were.
struct SelfsupReducer {
  using Node = torch::autograd::Node;
  struct Bucket {
    at::Tensor flat;  // the gradients of params [first, end), flattened
    size_t first = 0, end = 0;
    size_t pending = 0;  // its parameters not ready yet
    c10::intrusive_ptr<c10d::Work> work;
  };

  SelfsupGroup* group = nullptr;
  std::vector<at::Tensor> params;  // bucket order
  std::vector<int64_t> numel, offset;
  std::vector<size_t> bucket_of;
  std::vector<Bucket> buckets;
  // The accumulators are held weakly by their parameters: kept alive here, so that every later
  // graph uses the same ones, with the hooks.
  std::vector<std::shared_ptr<Node>> accumulators;
  std::vector<uintptr_t> hooks;
  std::unordered_map<const Node*, size_t> index_of;

  std::mutex mutex;  // the hooks run on autograd's threads (one per device)
  bool armed = false;
  std::vector<char> ready, has_grad;
  size_t next_bucket = 0;  // the first bucket not launched
  int64_t launched_before = 0, launched_during = 0;
  std::string hook_error;  // the first failure inside a hook, reported by `finish`
  bool hook_error_collective = false;

  ~SelfsupReducer() {
    for (size_t i = 0; i < hooks.size(); i++) accumulators[i]->del_post_hook(hooks[i]);
  }

  at::Tensor slot(size_t i) const { return buckets[bucket_of[i]].flat.narrow(0, offset[i], numel[i]); }

  // Parameter i's gradient (this backward's, accumulated) into its slot; lock held.
  void mark_ready(size_t i) {
    TORCH_CHECK(!ready[i], "parameter ", i, " of the reducer got a gradient twice in one backward pass");
    ready[i] = 1;
    const auto& grad = params[i].grad();
    auto s = slot(i);
    if (grad.defined()) {
      s.view(grad.sizes()).copy_(grad);
      has_grad[i] = 1;
    } else {
      s.zero_();
    }
    buckets[bucket_of[i]].pending--;
  }

  // Launches the buckets that are complete, in order; lock held.
  void launch_ready(int64_t* count) {
    while (next_bucket < buckets.size() && buckets[next_bucket].pending == 0) {
      auto& b = buckets[next_bucket++];
      std::vector<at::Tensor> ts{b.flat};
      b.work = group->pg->allreduce(ts);
      if (count) ++*count;
    }
  }

  // The hook of parameter i: outside `prepare`..`finish` it does nothing (another backward
  // pass over the same parameters, such as an evaluation's, is not the training step's).
  void on_ready(size_t i) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!armed || !hook_error.empty()) return;
    at::NoGradGuard no_grad;
    try {
      mark_ready(i);
    } catch (const std::exception& e) {
      hook_error = message(e);
      return;
    }
    try {
      launch_ready(&launched_during);
    } catch (const std::exception& e) {
      hook_error = message(e);
      hook_error_collective = true;
    }
  }

  // Leaves the launched collectives to themselves: fresh buffers, so that one still running
  // cannot write into a later step's; lock held.
  void abandon() {
    armed = false;
    for (auto& b : buckets) {
      if (b.work) b.flat = at::empty_like(b.flat);
      b.work.reset();
    }
  }
};

namespace {

struct ReadyHook : torch::autograd::FunctionPostHook {
  SelfsupReducer* reducer;
  size_t index;
  ReadyHook(SelfsupReducer* r, size_t i) : reducer(r), index(i) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    reducer->on_ready(index);
    return outputs;
  }
};

// The gradient accumulators that the graph of `root` reaches.
std::unordered_set<const torch::autograd::Node*> reached_from(const std::shared_ptr<torch::autograd::Node>& root) {
  std::unordered_set<const torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> stack;
  if (root) {
    seen.insert(root.get());
    stack.push_back(root.get());
  }
  while (!stack.empty()) {
    auto* node = stack.back();
    stack.pop_back();
    for (const auto& edge : node->next_edges()) {
      auto* next = edge.function.get();
      if (next && seen.insert(next).second) stack.push_back(next);
    }
  }
  return seen;
}

}  // namespace

extern "C" {

// A reducer over `group` for n parameters (leaves that require grad) in the order their
// gradients become ready, cut into nb buckets of bucket_sizes[b] consecutive parameters, each
// of one dtype and device.
char* selfsup_reducer_create(SelfsupGroup* g, const at::Tensor* const* params, int n, const int64_t* bucket_sizes,
                             int nb, SelfsupReducer** out) {
  *out = nullptr;
  return guarded([&] {
    auto r = std::make_unique<SelfsupReducer>();
    r->group = g;
    size_t i = 0;
    for (int b = 0; b < nb; b++) {
      SelfsupReducer::Bucket bucket;
      bucket.first = i;
      int64_t total = 0;
      for (int64_t k = 0; k < bucket_sizes[b]; k++, i++) {
        TORCH_CHECK(static_cast<int>(i) < n, "the buckets hold more parameters than the ", n, " given");
        const auto& p = *params[i];
        TORCH_CHECK(p.is_leaf() && p.requires_grad(), "parameter ", i, " is not a leaf that requires grad");
        const auto& head = *params[bucket.first];
        TORCH_CHECK(p.scalar_type() == head.scalar_type() && p.device() == head.device(), "bucket ", b,
                    " mixes dtypes or devices");
        r->params.push_back(p);
        r->numel.push_back(p.numel());
        r->offset.push_back(total);
        r->bucket_of.push_back(b);
        total += p.numel();
      }
      bucket.end = i;
      bucket.pending = bucket.end - bucket.first;
      TORCH_CHECK(bucket.pending > 0, "bucket ", b, " is empty");
      bucket.flat = at::zeros({total}, at::TensorOptions().dtype(params[bucket.first]->scalar_type()).device(
                                           params[bucket.first]->device()));
      r->buckets.push_back(std::move(bucket));
    }
    TORCH_CHECK(static_cast<int>(i) == n, "the buckets hold ", i, " of the ", n, " parameters");
    r->ready.assign(n, 0);
    r->has_grad.assign(n, 0);
    for (size_t j = 0; j < r->params.size(); j++) {
      auto acc = torch::autograd::impl::grad_accumulator(r->params[j]);
      TORCH_CHECK(acc, "parameter ", j, " has no gradient accumulator");
      TORCH_CHECK(r->index_of.emplace(acc.get(), j).second, "parameter ", j, " is listed twice");
      auto key = acc->add_post_hook(std::make_unique<ReadyHook>(r.get(), j));
      r->accumulators.push_back(std::move(acc));
      r->hooks.push_back(key);
    }
    *out = r.release();
  });
}

// Removes the hooks and frees the reducer.
void selfsup_reducer_destroy(SelfsupReducer* r) { delete r; }

// 1 when the reducer was made for these n parameters (in this order) and they are unchanged:
// the same tensors, dtypes, devices, sizes and gradient accumulators (a change of dtype gives
// a parameter a new accumulator, without the hook); else 0.
int selfsup_reducer_matches(SelfsupReducer* r, const at::Tensor* const* params, int n) {
  try {
    if (static_cast<size_t>(n) != r->params.size()) return 0;
    for (size_t i = 0; i < r->params.size(); i++) {
      const auto& p = *params[i];
      const auto& flat = r->buckets[r->bucket_of[i]].flat;
      if (p.unsafeGetTensorImpl() != r->params[i].unsafeGetTensorImpl() || p.scalar_type() != flat.scalar_type() ||
          p.device() != flat.device() || p.numel() != r->numel[i] ||
          torch::autograd::impl::try_get_grad_accumulator(p) != r->accumulators[i])
        return 0;
    }
    return 1;
  } catch (...) {
    return 0;
  }
}

// Before the backward pass of `loss`: the parameters its graph does not reach are ready now
// (their buckets may go at once), and the hooks are armed.
char* selfsup_reducer_prepare(SelfsupReducer* r, const at::Tensor* loss) {
  return guarded([&] {
    std::lock_guard<std::mutex> lock(r->mutex);
    TORCH_CHECK(!r->armed, "the reducer is prepared already (a backward pass without finish?)");
    r->abandon();  // nothing in flight after a finish; after an abort, no stale buffer
    std::fill(r->ready.begin(), r->ready.end(), 0);
    std::fill(r->has_grad.begin(), r->has_grad.end(), 0);
    for (auto& b : r->buckets) b.pending = b.end - b.first;
    r->next_bucket = 0;
    r->launched_before = r->launched_during = 0;
    r->hook_error.clear();
    r->hook_error_collective = false;
    at::NoGradGuard no_grad;
    const auto reached = reached_from(loss->grad_fn());
    for (size_t i = 0; i < r->params.size(); i++)
      if (!reached.count(r->accumulators[i].get())) r->mark_ready(i);
    try {
      r->launch_ready(&r->launched_before);
    } catch (const std::exception& e) {
      r->abandon();
      r->group->fail("all-reduce", message(e));
    }
    r->armed = true;
  });
}

// After the backward pass: launches what is left (a parameter whose hook did not run), waits
// for every bucket and writes the means into the gradients. On a failure the gradients are
// left as they are.
char* selfsup_reducer_finish(SelfsupReducer* r) {
  return guarded([&] {
    std::lock_guard<std::mutex> lock(r->mutex);
    TORCH_CHECK(r->armed, "the reducer was not prepared for this backward pass");
    r->armed = false;
    if (!r->hook_error.empty()) {
      r->abandon();
      if (r->hook_error_collective) r->group->fail("all-reduce", r->hook_error);
      r->group->broken = true;  // the ranks' collectives may be out of step
      throw std::runtime_error(r->hook_error);
    }
    at::NoGradGuard no_grad;
    std::string failed;
    try {
      for (size_t i = 0; i < r->params.size(); i++)
        if (!r->ready[i]) r->mark_ready(i);
      r->launch_ready(nullptr);
    } catch (const std::exception& e) {
      failed = message(e);
    }
    // Every launched bucket is waited for, even after a failure: none is left writing.
    for (auto& b : r->buckets) {
      if (!b.work) continue;
      try {
        b.work->wait();
      } catch (const std::exception& e) {
        if (failed.empty()) failed = message(e);
      }
      b.work.reset();
    }
    if (!failed.empty()) {
      r->abandon();
      r->group->fail("all-reduce", failed);
    }
    const double world = r->group->world;
    for (auto& b : r->buckets) b.flat.div_(world);
    for (size_t i = 0; i < r->params.size(); i++) {
      if (!r->has_grad[i]) continue;
      const auto& grad = r->params[i].grad();
      grad.copy_(r->slot(i).view(grad.sizes()));
    }
  });
}

// After a failed backward pass: disarms the hooks and leaves the launched buckets.
void selfsup_reducer_abort(SelfsupReducer* r) {
  std::lock_guard<std::mutex> lock(r->mutex);
  r->armed = false;
  try {
    r->abandon();
  } catch (...) {
    // No memory for fresh buffers: the run ends with the backward pass's error anyway.
  }
}

// out[0]: buckets; out[1]: launched before the last backward pass ran (all their parameters
// out of its graph); out[2]: launched during it, by the hooks.
void selfsup_reducer_stats(SelfsupReducer* r, int64_t* out) {
  std::lock_guard<std::mutex> lock(r->mutex);
  out[0] = static_cast<int64_t>(r->buckets.size());
  out[1] = r->launched_before;
  out[2] = r->launched_during;
}

}  // extern "C"
