//! A run as a unit: the model of a config (a method and its variables), and a saved run
//! loaded back from its folder with its config, data and weights. Evaluation, the report
//! and segmentation read runs through this module; the training loop (`train`) writes them.

pub mod checkpoint;
pub mod lock;

use crate::config::{self, Config, Precision};
use crate::data::{self, Dataset};
use crate::methods::{self, DataInfo, Method};
pub use crate::rundir::RunDir;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use tch::{Device, nn};

/// A method with its variables, built from a config for a data set.
pub struct Model {
    pub spec: &'static methods::MethodSpec,
    /// float32 whatever the precision: the master weights, as checkpoints hold them.
    pub vs: nn::VarStore,
    pub method: Box<dyn Method>,
    /// The precision of its forward passes (`cfg.train.precision`).
    pub precision: Precision,
}

impl Model {
    /// Builds the method named in `cfg.method`; initialisation is seeded by `cfg.train.seed`.
    pub fn build(cfg: &Config, info: &DataInfo, device: Device) -> Result<Model> {
        let spec = methods::find(&cfg.method)?;
        if cfg.train.deterministic
            && device.is_cuda()
            && std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none()
        {
            bail!(
                "deterministic = true on CUDA needs CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment (cuBLAS reads it when it starts)"
            );
        }
        crate::precision::set_backend(cfg.train.tf32, cfg.train.deterministic)?;
        tch::manual_seed(cfg.train.seed as i64);
        let vs = nn::VarStore::new(device);
        let mut method = (spec.build)(&vs.root(), &cfg.method_view(), info)?;
        method.bind(&vs)?;
        if device.is_cuda() {
            crate::nets::channels_last_weights(&vs);
        }
        Ok(Model {
            spec,
            vs,
            method,
            precision: cfg.train.precision,
        })
    }
}

pub fn data_info(ds: &Dataset) -> DataInfo {
    let [c, h, w] = ds.pretrain_split().shape.map(|d| d as i64);
    DataInfo {
        shape: [c, h, w],
        num_classes: ds.num_classes as i64,
    }
}

/// A saved run rebuilt: its config (with eval-key overrides applied), its data, and its
/// model holding the checkpoint's weights.
pub struct LoadedRun {
    pub dir: RunDir,
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
        let run = RunDir::new(dir);
        let file = checkpoint.map(|f| run.resolve(f));
        let path = file.clone().unwrap_or_else(|| run.file(RunDir::CHECKPOINT));
        let ck = match &file {
            Some(f) => checkpoint::load_file(f)?,
            None => checkpoint::load(dir)?,
        };
        let cfg = ck.meta.config.with_overrides(eval_sets)?;
        cfg.validate()?;
        let ds = data::load(&cfg.data, cfg.train.seed)?;
        let model = Model::build(&cfg, &data_info(&ds), device)?;
        checkpoint::load_into(&model.vs, &ck.model)
            .with_context(|| format!("{}", path.display()))?;
        Ok(LoadedRun {
            dir: run,
            cfg,
            meta: ck.meta,
            ds,
            model,
            checkpoint: file,
        })
    }

    /// Where an output named `name` (such as `eval.json`) of this run goes: see
    /// `RunDir::output`.
    pub fn output(&self, name: &str) -> PathBuf {
        self.dir.output(self.checkpoint.as_deref(), name)
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
