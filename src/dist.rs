//! Data-parallel training across processes with PyTorch's own c10d, the engine inside the
//! linked libtorch (Gloo for CPU tensors, NCCL for CUDA tensors), reached through the native
//! shim. `DistEnv` reads what the launcher (torchrun or Slurm) tells each process;
//! `ProcessGroup` joins the others and runs the collectives.
//!
//! `current` holds the group of the forward pass running on a thread, for the code inside
//! it that cannot be handed one (BatchNorm layers, a method's loss); `reducer` averages the
//! gradients over the ranks in buckets while the backward pass runs, as PyTorch DDP does.
//!
//! A leaf module: it uses nothing of selfsup but `native`.
use crate::native::{self, check};
use anyhow::{Context, Result, anyhow, bail, ensure};
use std::ffi::CString;
use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;
use tch::{Tensor, nn};

pub mod current;
pub mod reducer;

pub use reducer::{Launches, Reducer};

/// PyTorch DDP's default bucket size (`bucket_cap_mb = 25`).
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Where this process stands in a multi-process run, as its launcher describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    /// The rank among the processes of this node (which GPU to take).
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Some under torchrun (`TORCHELASTIC_USE_AGENT_STORE=True`): its agent hosts the
    /// TCPStore, so every rank, rank 0 included, connects as a client, and keys go under this
    /// prefix (`/worker/attempt_<TORCHELASTIC_RESTART_COUNT>`, as PyTorch does) so that a
    /// restarted attempt does not read the last one's. None: rank 0 hosts the store.
    pub agent_store_prefix: Option<String>,
}

impl DistEnv {
    /// Reads the launcher's variables: torchrun's (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
    /// `MASTER_ADDR`, `MASTER_PORT`, `TORCHELASTIC_USE_AGENT_STORE`), else Slurm's
    /// (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`; the master is `MASTER_ADDR` or the
    /// first host of `SLURM_JOB_NODELIST`, the port `MASTER_PORT`). None for a single process.
    /// A world of one process is None too, unless `SELFSUP_GROUP_OF_ONE=1`: then it joins a
    /// process group of one rank, to check the collectives where only one GPU is.
    /// Under Slurm, start one task per process with `srun`: a batch script itself also carries
    /// `SLURM_PROCID=0` and the job's `SLURM_NTASKS`.
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// `from_env` over any source of variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let required = |name: &str| var(name).ok_or_else(|| anyhow!("{name} is not set"));
        let torchrun = var("RANK").is_some() || var("WORLD_SIZE").is_some();
        let slurm = var("SLURM_PROCID").is_some() && var("SLURM_NTASKS").is_some();
        let [rank_var, world_var, local_var] = if torchrun {
            ["RANK", "WORLD_SIZE", "LOCAL_RANK"]
        } else if slurm {
            ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"]
        } else {
            return Ok(None);
        };
        let rank: usize = number(rank_var, &required(rank_var)?)?;
        let world_size: usize = number(world_var, &required(world_var)?)?;
        ensure!(
            world_size >= 1,
            "{world_var}={world_size} must be at least 1"
        );
        ensure!(
            rank < world_size,
            "{rank_var}={rank} is not below {world_var}={world_size}"
        );
        // A world of one trains without a group, unless SELFSUP_GROUP_OF_ONE asks for one:
        // the collectives (NCCL's on a machine with one GPU) then run, over one rank.
        if world_size == 1 && var("SELFSUP_GROUP_OF_ONE").is_none_or(|v| v.trim() != "1") {
            return Ok(None);
        }
        // Without LOCAL_RANK, all ranks are taken to share this node.
        let local_rank = var(local_var).map_or(Ok(rank), |v| number(local_var, &v))?;
        let master_addr = match (var("MASTER_ADDR"), torchrun) {
            (Some(addr), _) => addr,
            (None, true) => bail!("MASTER_ADDR is not set"),
            (None, false) => {
                let list = var("SLURM_JOB_NODELIST").or_else(|| var("SLURM_NODELIST"));
                let list = list.context("neither MASTER_ADDR nor SLURM_JOB_NODELIST is set")?;
                first_slurm_host(&list)?
            }
        };
        let port =
            required("MASTER_PORT").context("set MASTER_PORT to a free port on the master")?;
        let master_port: u16 = number("MASTER_PORT", &port)?;
        ensure!(master_port > 0, "MASTER_PORT=0 is not a port");
        let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").filter(|_| torchrun);
        let agent_store_prefix = match agent_store.as_deref().map(str::trim) {
            None | Some("" | "False" | "false" | "0") => None,
            Some("True" | "true" | "1") => {
                let restart = var("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|| "0".into());
                let restart: usize = number("TORCHELASTIC_RESTART_COUNT", &restart)?;
                Some(format!("/worker/attempt_{restart}"))
            }
            Some(other) => {
                bail!("TORCHELASTIC_USE_AGENT_STORE={other:?} is neither True nor False")
            }
        };
        Ok(Some(DistEnv {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
            agent_store_prefix,
        }))
    }
}

fn number<T: FromStr>(name: &str, value: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| anyhow!("{name}={value:?} is not a non-negative integer"))
}

/// The first host of a Slurm node list: `node[01-04,07],gpu5` -> `node01`. Every bracket is
/// replaced by its first number (zero-padding kept); the whole list is checked.
pub fn first_slurm_host(list: &str) -> Result<String> {
    let bad = |why: &str| anyhow!("Slurm node list {list:?}: {why}");
    let mut hosts = vec![String::new()]; // the first host of each comma-separated entry
    let mut rest = list.trim();
    while let Some(c) = rest.chars().next() {
        let host = hosts.last_mut().expect("never empty");
        match c {
            ',' => hosts.push(String::new()),
            '[' => {
                let end = rest.find(']').ok_or_else(|| bad("'[' without ']'"))?;
                let first = first_of_ranges(&rest[1..end])
                    .ok_or_else(|| bad("a bracket is not like [1-3,07]"))?;
                host.push_str(first);
                rest = &rest[end..]; // at the ']', skipped below
            }
            ']' => bail!(bad("']' without '['")),
            c => host.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    ensure!(
        hosts.iter().all(|h| !h.is_empty()),
        bad("an empty host name")
    );
    Ok(hosts.swap_remove(0))
}

/// The first number of `01-04,07`, if every entry is `N` or `N-M` with N <= M.
fn first_of_ranges(ranges: &str) -> Option<&str> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut entries = ranges
        .split(',')
        .map(|e| e.split_once('-').unwrap_or((e, e)));
    let valid = entries.clone().all(|(lo, hi)| {
        digits(lo) && digits(hi) && lo.parse::<u128>().ok() <= hi.parse::<u128>().ok()
    });
    valid.then(|| entries.next().map(|(lo, _)| lo)).flatten()
}

/// Which c10d backend carries the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors.
    Gloo,
    /// Tensors on CUDA device `cuda_device` (one GPU per rank, usually `local_rank`).
    Nccl { cuda_device: usize },
}

/// Whether this build can create NCCL groups (build.rs found the CUDA headers).
pub fn nccl_compiled() -> bool {
    native::selfsup_has_nccl() != 0
}

/// A c10d process group. Every rank must issue the same collectives in the same order.
/// Dropping it runs a barrier (skipped after a failed collective), then tears it down;
/// `shutdown` does the same and reports errors.
pub struct ProcessGroup {
    raw: *mut native::Group,
    rank: usize,
    world_size: usize,
}

// SAFETY: c10d groups may be used from any thread; `&self` methods need no `Sync` since every
// rank must issue collectives in one order, so the group is not shared between threads.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group of `env`: rank 0 (or torchrun's agent) hosts the TCPStore at
    /// MASTER_ADDR:MASTER_PORT and every rank connects to it. The rendezvous and every
    /// collective fail with an error after `timeout`; a collective whose peer died fails as
    /// soon as Gloo sees the closed connection, naming the ranks whose heartbeat stopped.
    /// Gloo reaches other nodes through the interfaces in `GLOO_SOCKET_IFNAME`, else the
    /// address of this machine's hostname (127.0.0.1 when MASTER_ADDR is a loopback address).
    pub fn new(env: &DistEnv, backend: Backend, timeout: Duration) -> Result<ProcessGroup> {
        let c_int = |n: usize, what: &str| {
            i32::try_from(n).with_context(|| format!("{what} {n} is too large"))
        };
        let (backend_code, cuda_device) = match backend {
            Backend::Gloo => (0, 0),
            Backend::Nccl { cuda_device } => (1, c_int(cuda_device, "CUDA device")?),
        };
        let master = CString::new(env.master_addr.as_str())?;
        let prefix = CString::new(env.agent_store_prefix.as_deref().unwrap_or(""))?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: valid C strings for the call's duration; `raw` receives an owned group.
        check(unsafe {
            native::selfsup_pg_create(
                c_int(env.rank, "rank")?,
                c_int(env.world_size, "world size")?,
                master.as_ptr(),
                env.master_port.into(),
                prefix.as_ptr(),
                timeout.as_millis().try_into().unwrap_or(i64::MAX),
                backend_code,
                cuda_device,
                &mut raw,
            )
        })
        .with_context(|| {
            format!(
                "joining the process group at {}:{}",
                env.master_addr, env.master_port
            )
        })?;
        Ok(ProcessGroup {
            raw,
            rank: env.rank,
            world_size: env.world_size,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Sums `t` over all ranks, in place (divide by `world_size` for the mean). Like
    /// `broadcast_`, it works on the data outside autograd, so `t` may be a parameter.
    pub fn all_reduce_sum_(&self, t: &Tensor) -> Result<()> {
        check(unsafe { native::selfsup_pg_all_reduce_sum(self.raw, t.as_ptr()) })
    }

    /// Overwrites `t` with rank `root`'s `t`.
    pub fn broadcast_(&self, t: &Tensor, root: usize) -> Result<()> {
        let root = i32::try_from(root).context("root rank")?;
        check(unsafe { native::selfsup_pg_broadcast(self.raw, t.as_ptr(), root) })
    }

    pub fn barrier(&self) -> Result<()> {
        check(unsafe { native::selfsup_pg_barrier(self.raw) })
    }

    /// `[B, ...]` from every rank -> `[world_size * B, ...]`, rank-major: rank r's rows are
    /// `r * B..(r + 1) * B`. Not differentiable.
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        self.gather_with(t, native::selfsup_pg_all_gather)
    }

    /// `all_gather`, differentiable: the backward is a reduce-scatter with sum, so each rank's
    /// `t` receives the gradient of its rows summed over every rank's loss (what a loss over
    /// the global batch, such as contrastive negatives from all ranks, needs).
    pub fn all_gather_autograd(&self, t: &Tensor) -> Result<Tensor> {
        self.gather_with(t, native::selfsup_pg_all_gather_autograd)
    }

    fn gather_with(&self, t: &Tensor, gather: native::GatherFn) -> Result<Tensor> {
        // SAFETY: the group and `t` are alive for the call.
        unsafe { native::new_tensor(|out| gather(self.raw, t.as_ptr(), out)) }
    }

    /// Copies rank 0's variables (parameters and buffers) of `vs` to every rank, so that all
    /// start from the same weights.
    pub fn broadcast_var_store(&self, vs: &nn::VarStore) -> Result<()> {
        let mut named: Vec<_> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0)); // the same order on every rank
        let tensors: Vec<Tensor> = named.into_iter().map(|(_, t)| t).collect();
        bucketed(&tensors, DEFAULT_BUCKET_BYTES, |flat| {
            self.broadcast_(flat, 0)?;
            Ok(flat.shallow_clone())
        })
    }

    /// The error of a collective `what` that failed outside this module (the reduce-scatter
    /// that autograd runs in the backward of `all_gather_autograd`) with `cause`: marks the
    /// group broken and names the ranks whose heartbeat stopped, as the collectives here do.
    pub fn failure(&self, what: &str, cause: &str) -> anyhow::Error {
        let c = |s: &str| CString::new(s.replace('\0', " ")).expect("no NUL left");
        let (c_what, c_cause) = (c(what), c(cause));
        // SAFETY: valid C strings for the call's duration; the shim always returns an error.
        let result =
            check(unsafe { native::selfsup_pg_fail(self.raw, c_what.as_ptr(), c_cause.as_ptr()) });
        result
            .err()
            .unwrap_or_else(|| anyhow!("{what} failed on rank {}: {cause}", self.rank))
    }

    /// Tears the group down after a barrier, reporting what failed.
    pub fn shutdown(mut self) -> Result<()> {
        let raw = std::mem::replace(&mut self.raw, std::ptr::null_mut());
        check(unsafe { native::selfsup_pg_destroy(raw) })
    }
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessGroup(rank {} of {})", self.rank, self.world_size)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if !self.raw.is_null()
            && let Err(e) = check(unsafe { native::selfsup_pg_destroy(self.raw) })
        {
            eprintln!("selfsup: tearing down the process group: {e:#}");
        }
    }
}

/// Runs `collective` on each bucket of `tensors` flattened into one vector and copies the
/// vector it returns back into the tensors.
fn bucketed(
    tensors: &[Tensor],
    bucket_bytes: usize,
    collective: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<()> {
    if let Some(i) = tensors.iter().position(|t| !t.defined()) {
        bail!("tensor {i} of the list is undefined");
    }
    let _no_grad = tch::no_grad_guard();
    for range in buckets(tensors, bucket_bytes, bucket_bytes) {
        let bucket = &tensors[range];
        let parts: Vec<Tensor> = bucket.iter().map(|t| t.reshape(-1)).collect();
        let flat = Tensor::cat(&parts, 0); // [sum of numel]
        let result = collective(&flat)?;
        let mut offset = 0;
        for t in bucket {
            let n = t.numel() as i64;
            t.shallow_clone()
                .copy_(&result.narrow(0, offset, n).view_as(t));
            offset += n;
        }
    }
    Ok(())
}

/// Consecutive runs of `tensors` of one dtype and device and at most `bucket_bytes`, the
/// first at most `first_bytes` (or one larger tensor alone).
fn buckets(tensors: &[Tensor], first_bytes: usize, bucket_bytes: usize) -> Vec<Range<usize>> {
    let mut ranges: Vec<Range<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, t) in tensors.iter().enumerate() {
        let size = t.numel() * t.kind().elt_size_in_bytes();
        let cap = match ranges.len() {
            1 => first_bytes,
            _ => bucket_bytes,
        };
        match ranges.last_mut() {
            Some(last)
                if tensors[last.start].kind() == t.kind()
                    && tensors[last.start].device() == t.device()
                    && bytes + size <= cap =>
            {
                last.end = i + 1;
                bytes += size;
            }
            _ => {
                ranges.push(i..i + 1);
                bytes = size;
            }
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tch::Kind;

    fn env_of(vars: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DistEnv::from_vars(|name| vars.get(name).cloned())
    }

    fn error_of(vars: &[(&str, &str)]) -> String {
        format!("{:#}", env_of(vars).expect_err("should be an error"))
    }

    const TORCHRUN: [(&str, &str); 5] = [
        ("RANK", "3"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "10.0.0.7"),
        ("MASTER_PORT", "29500"),
    ];

    #[test]
    fn torchrun_variables() {
        let env = env_of(&TORCHRUN).unwrap().unwrap();
        let expected = DistEnv {
            rank: 3,
            world_size: 4,
            local_rank: 1,
            master_addr: "10.0.0.7".into(),
            master_port: 29500,
            agent_store_prefix: None,
        };
        assert_eq!(env, expected);
    }

    #[test]
    fn torchrun_agent_store_gets_the_attempt_prefix() {
        let with =
            |extra: &[(&'static str, &'static str)]| env_of(&[&TORCHRUN[..], extra].concat());
        let prefix = |extra| with(extra).unwrap().unwrap().agent_store_prefix;
        assert_eq!(
            prefix(&[("TORCHELASTIC_USE_AGENT_STORE", "True")]),
            Some("/worker/attempt_0".into())
        );
        let restarted = [
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ];
        assert_eq!(prefix(&restarted), Some("/worker/attempt_2".into()));
        assert_eq!(prefix(&[("TORCHELASTIC_USE_AGENT_STORE", "False")]), None);
        let e = format!(
            "{:#}",
            with(&[("TORCHELASTIC_USE_AGENT_STORE", "yes")]).unwrap_err()
        );
        assert!(e.contains("TORCHELASTIC_USE_AGENT_STORE=\"yes\""), "{e}");
    }

    #[test]
    fn single_process_is_none() {
        assert_eq!(env_of(&[]).unwrap(), None);
        assert_eq!(env_of(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(), None);
        assert_eq!(
            env_of(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]).unwrap(),
            None
        );
    }

    #[test]
    fn a_group_of_one_when_asked() {
        let one = [
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29500"),
        ];
        let asked = |v| env_of(&[&one[..], &[("SELFSUP_GROUP_OF_ONE", v)]].concat());
        let env = asked("1").unwrap().unwrap();
        assert_eq!((env.rank, env.world_size, env.local_rank), (0, 1, 0));
        assert_eq!(asked("0").unwrap(), None);
        assert_eq!(env_of(&one).unwrap(), None);
        // No launcher: one process, whatever the variable says.
        assert_eq!(env_of(&[("SELFSUP_GROUP_OF_ONE", "1")]).unwrap(), None);
    }

    #[test]
    fn malformed_variables_are_named() {
        let err = |vars: &[(&str, &str)], expected: &str| {
            let e = error_of(vars);
            assert!(e.contains(expected), "{e:?} should contain {expected:?}");
        };
        err(
            &[("RANK", "2"), ("WORLD_SIZE", "2")],
            "RANK=2 is not below WORLD_SIZE=2",
        );
        err(
            &[("RANK", "one"), ("WORLD_SIZE", "2")],
            "RANK=\"one\" is not a non-negative integer",
        );
        err(&[("RANK", "-1"), ("WORLD_SIZE", "2")], "RANK=\"-1\"");
        err(
            &[("RANK", "0"), ("WORLD_SIZE", "0")],
            "WORLD_SIZE=0 must be at least 1",
        );
        err(&[("WORLD_SIZE", "2")], "RANK is not set");
        err(
            &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")],
            "MASTER_ADDR is not set",
        );
        err(
            &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")],
            "MASTER_PORT is not set",
        );
        err(
            &[
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "70000"),
            ],
            "MASTER_PORT=\"70000\"",
        );
        err(
            &[
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "0"),
            ],
            "MASTER_PORT=0",
        );
        err(
            &[
                ("SLURM_PROCID", "1"),
                ("SLURM_NTASKS", "2"),
                ("SLURM_JOB_NODELIST", "a"),
            ],
            "MASTER_PORT is not set",
        );
        err(
            &[
                ("SLURM_PROCID", "1"),
                ("SLURM_NTASKS", "2"),
                ("MASTER_PORT", "5"),
            ],
            "SLURM_JOB_NODELIST",
        );
        err(
            &[("SLURM_PROCID", "x"), ("SLURM_NTASKS", "2")],
            "SLURM_PROCID=\"x\"",
        );
    }

    #[test]
    fn slurm_variables() {
        let slurm = [
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[07-08,11],cpu1"),
            ("MASTER_PORT", "12345"),
        ];
        let env = env_of(&slurm).unwrap().unwrap();
        let expected = DistEnv {
            rank: 5,
            world_size: 8,
            local_rank: 1,
            master_addr: "gpu07".into(),
            master_port: 12345,
            agent_store_prefix: None,
        };
        assert_eq!(env, expected);
        // SLURM_NODELIST is the older name; MASTER_ADDR overrides the node list.
        let older = [
            &slurm[..3],
            &[("SLURM_NODELIST", "n1,n2"), ("MASTER_PORT", "1")],
        ]
        .concat();
        assert_eq!(env_of(&older).unwrap().unwrap().master_addr, "n1");
        let addr = [&slurm[..], &[("MASTER_ADDR", "10.1.1.1")]].concat();
        assert_eq!(env_of(&addr).unwrap().unwrap().master_addr, "10.1.1.1");
        // The agent-store switch is torchrun's alone.
        let agent = [&slurm[..], &[("TORCHELASTIC_USE_AGENT_STORE", "True")]].concat();
        assert_eq!(env_of(&agent).unwrap().unwrap().agent_store_prefix, None);
    }

    #[test]
    fn torchrun_wins_over_slurm() {
        let both = [
            &TORCHRUN[..],
            &[
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "16"),
                ("SLURM_JOB_NODELIST", "x"),
            ],
        ]
        .concat();
        let env = env_of(&both).unwrap().unwrap();
        assert_eq!(
            (env.rank, env.world_size, env.master_addr.as_str()),
            (3, 4, "10.0.0.7")
        );
    }

    #[test]
    fn slurm_node_lists() {
        let first = |list| first_slurm_host(list).unwrap();
        assert_eq!(first("node[01-04,07],gpu5"), "node01");
        assert_eq!(first("gpu5,node[01-04]"), "gpu5");
        assert_eq!(first("node7"), "node7");
        assert_eq!(first("node[7]"), "node7");
        assert_eq!(first("rack[2-3]-n[010-012]-ib"), "rack2-n010-ib");
        assert_eq!(first(" a[9,1-2] "), "a9");
        for bad in [
            "",
            "node[01-04",
            "node]1",
            "node[a-b]",
            "node[4-1]",
            "node[]",
            "a,,b",
            "node[1-2],x[",
            "n[[1]]",
        ] {
            let e = first_slurm_host(bad).expect_err(bad).to_string();
            assert!(e.contains("Slurm node list"), "{bad}: {e}");
        }
    }

    #[test]
    fn buckets_keep_dtype_and_size() {
        let f = |n| Tensor::zeros([n], (Kind::Float, tch::Device::Cpu)); // 4 bytes each
        let d = |n| Tensor::zeros([n], (Kind::Double, tch::Device::Cpu));
        let ts = [f(2), f(2), f(3), f(20), f(1), d(1), d(1), f(1)];
        // 16 bytes: [8 + 8], [12], [80 alone], [4], then a new dtype twice, then back.
        assert_eq!(
            buckets(&ts, 16, 16),
            vec![0..2, 2..3, 3..4, 4..5, 5..7, 7..8]
        );
        let all = DEFAULT_BUCKET_BYTES;
        assert_eq!(buckets(&ts, all, all), vec![0..5, 5..7, 7..8]);
        // A first bucket of 8 bytes (as DDP's small first bucket), then 16 bytes.
        let small_first = vec![0..1, 1..2, 2..3, 3..4, 4..5, 5..7, 7..8];
        assert_eq!(buckets(&ts, 8, 16), small_first);
        assert_eq!(buckets(&[], 16, 16), Vec::<Range<usize>>::new());
    }
}
