//! The reference points every representation is compared with: raw pixels as features,
//! and a randomly initialised encoder of the same architecture.

use super::{Scores, evaluate_encoder, pixel_features, score};
use crate::config::{Config, EncoderKind};
use crate::data::Dataset;
use crate::nets;
use anyhow::Result;
use std::sync::Arc;
use tch::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// The pixels in [0, 1], flattened.
    Raw,
    /// The configured encoder with its seeded random initialisation.
    Random,
}

impl Baseline {
    pub const NAMES: [&str; 2] = ["raw", "random"];

    pub fn parse(s: &str) -> anyhow::Result<Baseline> {
        match s {
            "raw" => Ok(Baseline::Raw),
            "random" => Ok(Baseline::Random),
            other => anyhow::bail!("baseline '{other}' is not one of {:?}", Baseline::NAMES),
        }
    }

    /// The name of its row: "raw pixels", "random-init cnn".
    pub fn label(self, encoder: EncoderKind) -> String {
        match self {
            Baseline::Raw => "raw pixels".into(),
            Baseline::Random => format!("random-init {encoder}"),
        }
    }

    /// Its scores on `ds` and its number of parameters. The random encoder runs in
    /// `cfg.train.precision`, as the runs it is compared with.
    pub fn evaluate(self, cfg: &Config, ds: &Dataset, device: Device) -> Result<(Scores, i64)> {
        match self {
            Baseline::Raw => {
                let (tr, te) = (Arc::new(ds.train.clone()), Arc::new(ds.test.clone()));
                let train = pixel_features(&tr, device)?;
                let test = pixel_features(&te, device)?;
                Ok((
                    score(&train, &test, ds.num_classes as i64, &cfg.eval_view()),
                    0,
                ))
            }
            Baseline::Random => {
                tch::manual_seed(cfg.train.seed as i64);
                let vs = tch::nn::VarStore::new(device);
                let enc = nets::build_encoder(
                    &(vs.root() / "encoder"),
                    &cfg.encoder,
                    ds.train.shape[0] as i64,
                );
                Ok((
                    evaluate_encoder(&enc, ds, &cfg.eval_view(), device)?,
                    nets::parameter_count(&vs, "encoder."),
                ))
            }
        }
    }
}
