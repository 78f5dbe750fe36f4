//! Run folders as units: the config of a `pretrain` invocation (new or resumed), a saved
//! run loaded back with its data and weights, and "train unless already trained".

use super::{Model, TrainOptions, checkpoint, data_info, pretrain};
use crate::config::{self, Config};
use crate::{data, methods};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use tch::Device;

/// The config of `selfsup pretrain` into `out`, checked, and a warning for each key the
/// user set that its method does not read. A new run takes the defaults, then `file`,
/// then `method` (which wins over the file's), then `sets`; a resumed one takes the
/// config saved in its checkpoint (`out`'s last one, or `from`), then `sets`.
pub fn pretrain_config(
    method: Option<&str>,
    file: Option<&Path>,
    sets: &[String],
    out: &Path,
    resume: bool,
    from: Option<&Path>,
) -> Result<(Config, Vec<String>)> {
    let (cfg, given) = if resume {
        if file.is_some() {
            bail!(
                "--resume continues with the config saved in {}; change keys with --set",
                out.display()
            );
        }
        let ck = match from {
            Some(f) => checkpoint::load_file(f),
            None => checkpoint::load(out),
        };
        let saved = ck.context("--resume")?.meta.config;
        if let Some(m) = method
            && m != saved.method
        {
            bail!(
                "--method {m} differs from the method '{}' of the run in {}",
                saved.method,
                out.display()
            );
        }
        Config::assemble(saved, None, sets)?
    } else {
        if from.is_some() {
            bail!("--checkpoint FILE goes with --resume (a new run starts from scratch)");
        }
        let mut all: Vec<String> = method.iter().map(|m| format!("method=\"{m}\"")).collect();
        all.extend(sets.iter().cloned());
        let (cfg, mut given) = Config::assemble(Config::default(), file, &all)?;
        given.retain(|k| k != "method");
        (cfg, given)
    };
    let warnings = methods::check_config(&cfg, &given)?;
    Ok((cfg, warnings))
}

/// A saved run rebuilt: its config (with eval-key overrides applied), its data, and its
/// model holding the checkpoint's weights.
pub struct LoadedRun {
    pub cfg: Config,
    pub meta: checkpoint::Meta,
    pub ds: data::Dataset,
    pub model: Model,
    /// The checkpoint loaded when it is not the run's last one (`--checkpoint`).
    pub checkpoint: Option<PathBuf>,
}

impl LoadedRun {
    /// Loads the run in `dir` from its last checkpoint, or from `checkpoint` (a file, or a
    /// name in `dir` such as `checkpoint-epoch3.safetensors`); `eval_sets` may change only
    /// `config::EVAL_KEYS`.
    pub fn load(
        dir: &Path,
        checkpoint: Option<&Path>,
        eval_sets: &[String],
        device: Device,
    ) -> Result<LoadedRun> {
        for s in eval_sets {
            let key = s.split_once('=').map_or(s.as_str(), |(k, _)| k.trim());
            if !config::EVAL_KEYS.contains(&key) {
                bail!(
                    "--set {s}: only the eval keys {:?} can change for a saved run",
                    config::EVAL_KEYS
                );
            }
        }
        let file = checkpoint.map(|f| checkpoint::resolve(dir, f));
        let path = file
            .clone()
            .unwrap_or_else(|| dir.join(checkpoint::FILE_NAME));
        let ck = match &file {
            Some(f) => checkpoint::load_file(f)?,
            None => checkpoint::load(dir)?,
        };
        let cfg = ck.meta.config.with_overrides(eval_sets)?;
        cfg.validate()?;
        let ds = data::load(&cfg)?;
        let model = Model::build(&cfg, &data_info(&ds), device)?;
        checkpoint::load_into(&model.vs, &ck.model)
            .with_context(|| format!("{}", path.display()))?;
        Ok(LoadedRun {
            cfg,
            meta: ck.meta,
            ds,
            model,
            checkpoint: file,
        })
    }

    /// Where an output named `name` (such as `eval.json`) of this run goes in `dir`.
    pub fn output(&self, dir: &Path, name: &str) -> PathBuf {
        output_path(dir, self.checkpoint.as_deref(), name)
    }

    /// "METHOD (E epochs)", as the evaluation prints it.
    pub fn label(&self) -> String {
        format!("{} ({} epochs)", self.cfg.method, self.meta.epoch)
    }

    /// Trainable encoder parameters.
    pub fn encoder_parameters(&self) -> i64 {
        crate::nets::parameter_count(&self.model.vs, "encoder.")
    }
}

/// Where an output named `name` (such as `eval.json`) of the run in `dir` goes: under that
/// name for the run's last checkpoint, else with the name of the `checkpoint` it comes from
/// added (`eval-checkpoint-epoch3.json`), so that an earlier checkpoint's outputs never
/// replace the run's own.
pub fn output_path(dir: &Path, checkpoint: Option<&Path>, name: &str) -> PathBuf {
    let Some(ck) = checkpoint else {
        return dir.join(name);
    };
    let stem = ck.file_stem().unwrap_or_default().to_string_lossy();
    let p = Path::new(name);
    let base = p.file_stem().unwrap_or_default().to_string_lossy();
    match p.extension() {
        Some(ext) => dir.join(format!("{base}-{stem}.{}", ext.to_string_lossy())),
        None => dir.join(format!("{base}-{stem}")),
    }
}

/// Pretrains `cfg` into `dir` unless a finished run of its method is there; resumes an
/// unfinished one.
pub fn ensure_trained(cfg: &Config, dir: &Path, quiet: bool, device: Device) -> Result<()> {
    let resume = match checkpoint::load(dir) {
        Ok(ck) if ck.meta.config.method != cfg.method => bail!(
            "{} holds a {} run, not {}",
            dir.display(),
            ck.meta.config.method,
            cfg.method
        ),
        Ok(ck) if ck.meta.epoch >= cfg.epochs => return Ok(()),
        Ok(_) => true,
        Err(_) => false,
    };
    let ds = data::load(cfg)?;
    eprintln!("pretraining {} into {}", cfg.method, dir.display());
    let opts = TrainOptions {
        resume,
        quiet,
        ..Default::default()
    };
    pretrain(cfg, &ds, dir, &opts, device)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_of_an_earlier_checkpoint_carry_its_name() {
        let (dir, ck) = (
            Path::new("runs/a"),
            Path::new("runs/a/checkpoint-epoch3.safetensors"),
        );
        assert_eq!(output_path(dir, None, "eval.json"), dir.join("eval.json"));
        assert_eq!(
            output_path(dir, Some(ck), "eval.json"),
            dir.join("eval-checkpoint-epoch3.json")
        );
        assert_eq!(
            output_path(dir, Some(ck), "neighbors.png"),
            dir.join("neighbors-checkpoint-epoch3.png")
        );
        assert_eq!(
            output_path(dir, Some(ck), "log"),
            dir.join("log-checkpoint-epoch3")
        );
    }
}
