//! Checkpoints: one safetensors file holding the model variables ("model.NAME"), the
//! optimizer state ("optim.NAME") and, in its metadata, JSON with the config, the
//! epoch/step, the RNG state and the sums of the epoch in progress. It is written to a
//! temporary file, synced and renamed over the old one (and the folder synced), so a crash
//! never leaves a half-written checkpoint and readers always find a whole one. The rolling
//! `checkpoint.safetensors` is written at every epoch's end and within epochs as
//! `checkpoint_every` says; `keep_checkpoints` keeps the last epochs' as
//! `checkpoint-epochE.safetensors`.

use crate::config::{CheckpointEvery, Config};
use crate::rundir::RunDir;
use crate::tensor_io::{self, read_safetensors, write_safetensors_atomic};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;
use tch::{Tensor, nn};

const META_KEY: &str = "selfsup";
const FORMAT_VERSION: u32 = 1;

/// The sums of the epoch in progress that its record in metrics.jsonl needs, carried by a
/// mid-epoch checkpoint so that a resumed epoch logs what an uninterrupted one would.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq)]
pub struct EpochSums {
    /// The sum of the step losses so far (the steps are `step - epoch * steps_per_epoch`).
    pub loss_sum: f64,
    /// Training seconds of the epoch so far.
    pub seconds: f64,
}

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
    /// The epoch in progress (zero at an epoch's end, and in checkpoints written before
    /// mid-epoch checkpoints existed).
    #[serde(default)]
    pub in_epoch: EpochSums,
}

impl Meta {
    pub fn new(
        config: Config,
        epoch: usize,
        step: usize,
        wall_seconds: f64,
        in_epoch: EpochSums,
    ) -> Meta {
        Meta {
            format_version: FORMAT_VERSION,
            rng_seed: config.train.seed,
            optimizer: config.train.optimizer.to_string(),
            config,
            epoch,
            step,
            wall_seconds,
            in_epoch,
        }
    }

    /// The batches of epoch `self.epoch` already done, for `steps_per_epoch` steps per
    /// epoch: a resumed run skips them. An error when the step does not fall in that epoch
    /// (the data or the batch size changed).
    pub fn batches_done(&self, steps_per_epoch: usize) -> Result<usize> {
        let start = self.epoch * steps_per_epoch;
        if !(start..start + steps_per_epoch).contains(&self.step) {
            bail!(
                "step {} is not in epoch {} of {steps_per_epoch} steps; was the data or batch size changed?",
                self.step,
                self.epoch + 1
            );
        }
        Ok(self.step - start)
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

/// Writes the checkpoint of `vs`, `optim` and `meta` to `path`, atomically.
pub fn save_file(
    path: &Path,
    vs: &nn::VarStore,
    optim: &[(String, Tensor)],
    meta: &Meta,
) -> Result<()> {
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
        path,
        &tensors,
        HashMap::from([(META_KEY.to_string(), meta_json)]),
    )
}

/// Writes the rolling checkpoint of the run in `dir`.
pub fn save(dir: &Path, vs: &nn::VarStore, optim: &[(String, Tensor)], meta: &Meta) -> Result<()> {
    save_file(&dir.join(RunDir::CHECKPOINT), vs, optim, meta)
}

/// Writes the checkpoint of the end of epoch `meta.epoch`: the rolling one and, when `keep`
/// is not 0, `checkpoint-epochE.safetensors` (the same file under a second name), deleting
/// the kept ones older than the last `keep` epochs.
pub fn save_epoch(
    dir: &Path,
    vs: &nn::VarStore,
    optim: &[(String, Tensor)],
    meta: &Meta,
    keep: usize,
) -> Result<()> {
    if keep == 0 {
        return save(dir, vs, optim, meta);
    }
    // The kept file first: a kill between the two writes leaves the rolling checkpoint
    // older, so the epoch is trained and both written again on resume.
    let kept = dir.join(RunDir::epoch_checkpoint(meta.epoch));
    save_file(&kept, vs, optim, meta)?;
    tensor_io::link_atomic(&kept, &dir.join(RunDir::CHECKPOINT))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let old = path
            .file_name()
            .and_then(|n| RunDir::epoch_of_checkpoint(&n.to_string_lossy()));
        if old.is_some_and(|e| e + keep <= meta.epoch) {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Removes the temporary files that writers killed in mid-write left in the run folder
/// `dir` (`checkpoint*.safetensors.PID-N.tmp`). Only the holder of the run's lock calls it.
pub fn remove_temp_files(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("checkpoint")
            && name.contains(".safetensors.")
            && name.ends_with(tensor_io::TEMP_SUFFIX)
        {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Loads the rolling checkpoint of the run in `dir`.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let path = dir.join(RunDir::CHECKPOINT);
    if !path.is_file() {
        bail!(
            "no checkpoint in {} (expected {})",
            dir.display(),
            path.display()
        );
    }
    load_file(&path)
}

/// Loads the checkpoint file `path`.
pub fn load_file(path: &Path) -> Result<Checkpoint> {
    if !path.is_file() {
        bail!("no checkpoint file {}", path.display());
    }
    let (tensors, metadata) = read_safetensors(path)?;
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

/// When the loop writes a checkpoint within an epoch, after the `checkpoint_every` rule.
pub struct Interval {
    every: CheckpointEvery,
    last: Instant,
}

impl Interval {
    /// Counts time from now (the start of training, or of a resumed run).
    pub fn new(every: CheckpointEvery) -> Interval {
        Interval {
            every,
            last: Instant::now(),
        }
    }

    /// Whether a checkpoint is due after `step` steps of the run, at `now`.
    pub fn due(&self, step: usize, now: Instant) -> bool {
        match self.every {
            CheckpointEvery::Steps(n) => step.is_multiple_of(n),
            CheckpointEvery::Time(t) => now.duration_since(self.last) >= t,
            CheckpointEvery::Epoch => false,
        }
    }

    /// A checkpoint was written at `now` (mid-epoch or at an epoch's end).
    pub fn saved(&mut self, now: Instant) {
        self.last = now;
    }
}

/// Copies `tensors` into the variables of `vs`; names and shapes must match exactly.
pub fn load_into(vs: &nn::VarStore, tensors: &[(String, Tensor)]) -> Result<()> {
    let vars = vs.variables();
    if let Some((extra, _)) = tensors.iter().find(|(k, _)| !vars.contains_key(k)) {
        bail!("checkpoint has variable '{extra}' that the model lacks");
    }
    copy_vars(vars.iter().collect(), tensors)
}

/// Copies each of `vars` from the same-named tensor of `tensors`, after checking that every
/// one is there with its shape.
fn copy_vars(vars: Vec<(&String, &Tensor)>, tensors: &[(String, Tensor)]) -> Result<()> {
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
    tch::no_grad(|| {
        for (name, var) in &vars {
            let src = given[name.as_str()];
            var.shallow_clone()
                .copy_(&src.to_kind(var.kind()).to_device(var.device()));
        }
    });
    Ok(())
}

/// Copies the variables of `tensors` whose names start with `prefix` (`encoder.`) into the
/// same-named variables of `vs`: a fine-tuning run starts from a pretrained encoder. Every
/// variable of `vs` under `prefix` must be given, with its shape.
pub fn load_prefix_into(
    vs: &nn::VarStore,
    tensors: &[(String, Tensor)],
    prefix: &str,
) -> Result<usize> {
    let vars = vs.variables();
    let mine: Vec<(&String, &Tensor)> =
        vars.iter().filter(|(k, _)| k.starts_with(prefix)).collect();
    if mine.is_empty() {
        bail!("the model has no variables under '{prefix}'");
    }
    let n = mine.len();
    copy_vars(mine, tensors)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn meta(epoch: usize, step: usize) -> Meta {
        Meta::new(Config::default(), epoch, step, 1.0, EpochSums::default())
    }

    #[test]
    fn the_resume_position_is_the_batches_done_of_the_epoch_in_progress() {
        assert_eq!(meta(0, 0).batches_done(10).unwrap(), 0);
        assert_eq!(meta(2, 20).batches_done(10).unwrap(), 0);
        assert_eq!(meta(2, 27).batches_done(10).unwrap(), 7);
        for (e, s) in [(2, 30), (2, 19), (0, 10)] {
            let err = meta(e, s).batches_done(10).unwrap_err().to_string();
            assert!(
                err.contains(&format!("step {s}")) && err.contains("batch size"),
                "{err}"
            );
        }
    }

    #[test]
    fn intervals_fall_on_step_multiples_or_after_the_time() {
        let steps = Interval::new(CheckpointEvery::Steps(5));
        let now = Instant::now();
        let due: Vec<usize> = (1..=16).filter(|&s| steps.due(s, now)).collect();
        assert_eq!(due, [5, 10, 15]);
        let mut time = Interval::new(CheckpointEvery::Time(Duration::from_secs(60)));
        let start = time.last;
        assert!(!time.due(1, start + Duration::from_secs(59)));
        assert!(time.due(2, start + Duration::from_secs(60)));
        time.saved(start + Duration::from_secs(60));
        assert!(!time.due(3, start + Duration::from_secs(100)));
        assert!(time.due(4, start + Duration::from_secs(121)));
        let epoch = Interval::new(CheckpointEvery::Epoch);
        assert!(!epoch.due(5, start + Duration::from_secs(1 << 20)));
    }

    /// serde_json reads floats back exactly only with its `float_roundtrip` feature; the
    /// epoch's loss sum must come back bit for bit for a resumed epoch to log the same mean.
    #[test]
    fn metadata_floats_come_back_bit_for_bit() {
        let mut x = 0.1f64;
        for i in 0..2000 {
            x = (x * 7.31 + i as f64 / 3.0).fract() * 10f64.powi(i % 9 - 4);
            let mut m = meta(1, 3);
            m.in_epoch = EpochSums {
                loss_sum: x,
                seconds: x / 3.0,
            };
            let back: Meta = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
            assert_eq!(back.in_epoch.loss_sum.to_bits(), x.to_bits(), "{x:e}");
            assert_eq!(back, m);
        }
    }

    #[test]
    fn epoch_checkpoints_keep_the_last_k_and_stale_temporary_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let w = vs.root().zeros("w", &[2]);
        for epoch in 1..=4 {
            let _ = tch::no_grad(|| w.shallow_clone().fill_(epoch as f64));
            save_epoch(dir.path(), &vs, &[], &meta(epoch, epoch * 10), 2).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                &RunDir::epoch_checkpoint(3),
                &RunDir::epoch_checkpoint(4),
                RunDir::CHECKPOINT
            ]
        );
        let kept = load_file(&dir.path().join(RunDir::epoch_checkpoint(3))).unwrap();
        assert_eq!(kept.meta.epoch, 3);
        assert_eq!(Vec::<f32>::try_from(&kept.model[0].1).unwrap(), [3.0, 3.0]);
        assert_eq!(load(dir.path()).unwrap().meta.epoch, 4);
        // keep = 0 writes the rolling checkpoint only and deletes nothing.
        save_epoch(dir.path(), &vs, &[], &meta(5, 50), 0).unwrap();
        assert_eq!(load(dir.path()).unwrap().meta.epoch, 5);
        assert!(dir.path().join(RunDir::epoch_checkpoint(3)).is_file());

        let stale = [
            "checkpoint.safetensors.77-0.tmp",
            "checkpoint-epoch9.safetensors.5-3.tmp",
        ];
        for s in stale {
            std::fs::write(dir.path().join(s), b"half").unwrap();
        }
        std::fs::write(dir.path().join("notes.tmp"), b"mine").unwrap();
        remove_temp_files(dir.path()).unwrap();
        for s in stale {
            assert!(!dir.path().join(s).exists(), "{s}");
        }
        assert!(dir.path().join("notes.tmp").exists());
        // A kept checkpoint is named by its file, or by its name in the run folder.
        let named = RunDir::new(dir.path()).resolve(Path::new(&RunDir::epoch_checkpoint(4)));
        assert_eq!(named, dir.path().join(RunDir::epoch_checkpoint(4)));
        assert_eq!(load_file(&named).unwrap().meta.epoch, 4);
        let e = load_file(&dir.path().join("nope.safetensors"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("no checkpoint file"), "{e}");
    }
}
