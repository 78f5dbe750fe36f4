//! Checkpoints: one safetensors file holding the model variables ("model.NAME"), the
//! optimizer state ("optim.NAME") and, in its metadata, JSON with the config, the
//! epoch/step and the RNG state. It is written to a temporary file, synced and renamed
//! over the old one, so a crash never leaves a half-written checkpoint.

use crate::config::Config;
use anyhow::{Context, Result, bail};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use tch::{Kind, Tensor, nn};

pub const FILE_NAME: &str = "checkpoint.safetensors";
const META_KEY: &str = "selfsup";
const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Meta {
    pub format_version: u32,
    pub config: Config,
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps completed.
    pub step: usize,
    /// The RNG state: every random draw of step s is made after seeding libtorch with
    /// `step_seed(seed, s)` and every data order comes from (seed, epoch), so (seed, step)
    /// is the whole RNG state.
    pub rng_seed: u64,
    pub optimizer: String,
    pub wall_seconds: f64,
}

impl Meta {
    pub fn new(config: &Config, epoch: usize, step: usize, wall_seconds: f64) -> Meta {
        Meta {
            format_version: FORMAT_VERSION,
            config: config.clone(),
            epoch,
            step,
            rng_seed: config.seed,
            optimizer: config.optimizer.clone(),
            wall_seconds,
        }
    }
}

/// The libtorch seed used for step `step` of a run seeded with `seed`.
pub fn step_seed(seed: u64, step: usize) -> i64 {
    (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (step as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9))
        as i64
        & i64::MAX
}

fn dtype(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Uint8 => Dtype::U8,
        k => bail!("cannot store tensors of kind {k:?}"),
    })
}

fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let n = t.numel() * t.kind().elt_size_in_bytes();
    let mut buf = vec![0u8; n];
    t.copy_data_u8(&mut buf, t.numel());
    buf
}

/// Writes `tensors` with `metadata` to `path` atomically (temp file, fsync, rename).
pub fn write_safetensors_atomic(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.clone(), dtype(t.kind())?, shape, tensor_bytes(t)));
    }
    let mut views = Vec::with_capacity(owned.len());
    for (name, dt, shape, bytes) in &owned {
        views.push((
            name.clone(),
            TensorView::new(*dt, shape.clone(), bytes).context("bad tensor view")?,
        ));
    }
    let bytes = safetensors::tensor::serialize(views, &Some(metadata))
        .context("cannot serialize tensors")?;
    let tmp = path.with_extension("safetensors.tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(&bytes)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Reads all tensors and the metadata of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<(Vec<(String, Tensor)>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F64 => Kind::Double,
            Dtype::I64 => Kind::Int64,
            Dtype::U8 => Kind::Uint8,
            d => bail!(
                "{}: tensor {name} has unsupported dtype {d:?}",
                path.display()
            ),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name, Tensor::from_data_size(view.data(), &shape, kind)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, metadata))
}

pub struct Checkpoint {
    pub meta: Meta,
    pub model: Vec<(String, Tensor)>,
    pub optim: Vec<(String, Tensor)>,
}

pub fn save(dir: &Path, vs: &nn::VarStore, optim: &[(String, Tensor)], meta: &Meta) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (format!("model.{k}"), t.detach()))
        .collect();
    tensors.extend(
        optim
            .iter()
            .map(|(k, t)| (format!("optim.{k}"), t.detach())),
    );
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let meta_json = serde_json::to_string(meta)?;
    write_safetensors_atomic(
        &dir.join(FILE_NAME),
        &tensors,
        HashMap::from([(META_KEY.to_string(), meta_json)]),
    )
}

pub fn load(dir: &Path) -> Result<Checkpoint> {
    let path = dir.join(FILE_NAME);
    if !path.is_file() {
        bail!(
            "no checkpoint in {} (expected {})",
            dir.display(),
            path.display()
        );
    }
    let (tensors, metadata) = read_safetensors(&path)?;
    let Some(json) = metadata.get(META_KEY) else {
        bail!(
            "{} has no selfsup metadata: not a selfsup checkpoint",
            path.display()
        );
    };
    let meta: Meta = serde_json::from_str(json)
        .with_context(|| format!("{}: unreadable metadata", path.display()))?;
    if meta.format_version != FORMAT_VERSION {
        bail!(
            "{}: checkpoint format {} is not the supported {FORMAT_VERSION}",
            path.display(),
            meta.format_version
        );
    }
    let (mut model, mut optim) = (Vec::new(), Vec::new());
    for (k, t) in tensors {
        if let Some(n) = k.strip_prefix("model.") {
            model.push((n.to_string(), t));
        } else if let Some(n) = k.strip_prefix("optim.") {
            optim.push((n.to_string(), t));
        } else {
            bail!("{}: unexpected tensor '{k}'", path.display());
        }
    }
    Ok(Checkpoint { meta, model, optim })
}

/// Copies `tensors` into the variables of `vs`; names and shapes must match exactly.
pub fn load_into(vs: &nn::VarStore, tensors: &[(String, Tensor)]) -> Result<()> {
    let vars = vs.variables();
    let given: HashMap<&str, &Tensor> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    for (name, var) in &vars {
        let Some(src) = given.get(name.as_str()) else {
            bail!("checkpoint lacks variable '{name}'")
        };
        if src.size() != var.size() {
            bail!(
                "variable '{name}': checkpoint shape {:?}, model shape {:?}",
                src.size(),
                var.size()
            );
        }
    }
    if let Some((extra, _)) = tensors.iter().find(|(k, _)| !vars.contains_key(k)) {
        bail!("checkpoint has variable '{extra}' that the model lacks");
    }
    tch::no_grad(|| {
        for (name, var) in &vars {
            let src = given[name.as_str()];
            var.shallow_clone()
                .copy_(&src.to_kind(var.kind()).to_device(var.device()));
        }
    });
    Ok(())
}
