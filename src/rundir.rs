//! The run folder: every file a run folder holds is named here, once. `pretrain` writes the
//! config, the metrics, the checkpoints and the lock; the commands that read a run write
//! their outputs beside them (`RunDir::output`).

use std::path::{Path, PathBuf};

/// A run folder.
#[derive(Debug, Clone, PartialEq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The keys of the run's method (the checkpoint carries the whole config).
    pub const CONFIG: &str = "config.toml";
    /// One JSON object per logged step and per epoch.
    pub const METRICS: &str = "metrics.jsonl";
    /// The rolling checkpoint.
    pub const CHECKPOINT: &str = "checkpoint.safetensors";
    /// Held (flock) by the one `pretrain` writing the folder.
    pub const LOCK: &str = "pretrain.lock";
    /// The loss and learning-rate curves.
    pub const LOSS_PLOT: &str = "loss.png";
    /// `Method::examples` of a few training images.
    pub const EXAMPLES: &str = "examples.png";
    /// The scores of `eval --run` (and `report`).
    pub const EVAL: &str = "eval.json";
    /// The evaluation's features of a streamed data set (train and test), computed once.
    pub const FEATURES: &str = "features.safetensors";
    /// The test accuracy of the run's encoder fine-tuned on each fraction of the labels.
    pub const FINETUNE: &str = "finetune.json";
    /// `report`'s t-SNE map of test embeddings.
    pub const EMBEDDING: &str = "embedding.png";
    /// Test images and their nearest training images.
    pub const NEIGHBORS: &str = "neighbors.png";
    /// `report`'s static page.
    pub const REPORT: &str = "index.html";
    /// The results of `segment`.
    pub const SEGMENT: &str = "segment.json";
    /// `segment`'s picture of test images, true and predicted masks.
    pub const SEGMENTATION: &str = "segmentation.png";

    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `name` in the folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The name of epoch `epoch`'s kept checkpoint (`keep_checkpoints`).
    pub fn epoch_checkpoint(epoch: usize) -> String {
        format!("checkpoint-epoch{epoch}.safetensors")
    }

    /// The epoch of a kept checkpoint's file name.
    pub fn epoch_of_checkpoint(name: &str) -> Option<usize> {
        name.strip_prefix("checkpoint-epoch")?
            .strip_suffix(".safetensors")?
            .parse()
            .ok()
    }

    /// A checkpoint given on the command line: `file` itself when it exists (or is
    /// absolute), else `file` in the folder, so that `--checkpoint
    /// checkpoint-epoch3.safetensors` names a kept checkpoint of the run.
    pub fn resolve(&self, file: &Path) -> PathBuf {
        if file.is_absolute() || file.exists() {
            file.to_path_buf()
        } else {
            self.root.join(file)
        }
    }

    /// Where an output named `name` (such as `eval.json`) of the run goes: under that name
    /// for the run's last checkpoint, else with the name of the `checkpoint` it comes from
    /// added (`eval-checkpoint-epoch3.json`), so that an earlier checkpoint's outputs never
    /// replace the run's own.
    pub fn output(&self, checkpoint: Option<&Path>, name: &str) -> PathBuf {
        let Some(ck) = checkpoint else {
            return self.root.join(name);
        };
        let stem = ck.file_stem().unwrap_or_default().to_string_lossy();
        let p = Path::new(name);
        let base = p.file_stem().unwrap_or_default().to_string_lossy();
        match p.extension() {
            Some(ext) => self
                .root
                .join(format!("{base}-{stem}.{}", ext.to_string_lossy())),
            None => self.root.join(format!("{base}-{stem}")),
        }
    }
}
