//! Checkpoints: one safetensors file holding the model variables ("model.NAME"), the
//! optimizer state ("optim.NAME") and, in its metadata, JSON with the config, the
//! epoch/step and the RNG state. It is written to a temporary file, synced and renamed
//! over the old one, so a crash never leaves a half-written checkpoint.

use crate::config::Config;
use crate::tensor_io::{read_safetensors, write_safetensors_atomic};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::{Tensor, nn};

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
            optimizer: config.optimizer.to_string(),
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
