//! Momentum (EMA) target networks for MoCo and BYOL: the target copy of a network lives
//! under `target.` + the online name and is updated without gradients as
//! target <- m * target + (1 - m) * online. Only parameters are averaged; each BatchNorm
//! of the target keeps its own running statistics, as in the reference implementations.

use super::{Encoder, MlpNorm, build_encoder, mlp};
use crate::config::EncoderSpec;
use crate::native;
use anyhow::{Result, bail};
use tch::nn::ModuleT;
use tch::{Tensor, nn};

pub const TARGET_PREFIX: &str = "target.";

#[derive(Debug, Default)]
pub struct MomentumPairs {
    /// (online parameter, target parameter)
    pairs: Vec<(Tensor, Tensor)>,
}

impl MomentumPairs {
    /// Pairs every trainable variable under `online_prefixes` with its `target.` twin,
    /// copies the online values into the target and freezes the target.
    pub fn bind(vs: &nn::VarStore, online_prefixes: &[&str]) -> Result<MomentumPairs> {
        let vars = vs.variables();
        let mut names: Vec<&String> = vars
            .keys()
            .filter(|k| {
                online_prefixes.iter().any(|p| k.starts_with(p)) && vars[*k].requires_grad()
            })
            .collect();
        names.sort();
        let mut pairs = Vec::new();
        for name in names {
            let Some(target) = vars.get(&format!("{TARGET_PREFIX}{name}")) else {
                bail!("momentum target for '{name}' is missing");
            };
            let online = &vars[name];
            if (target.size(), target.kind()) != (online.size(), online.kind()) {
                bail!("momentum target for '{name}' differs from it in shape or dtype");
            }
            pairs.push((online.shallow_clone(), target.shallow_clone()));
        }
        // Target buffers (BatchNorm statistics) start equal too.
        let targets: Vec<(&String, &Tensor)> = vars
            .iter()
            .filter(|(k, _)| k.starts_with(TARGET_PREFIX))
            .collect();
        tch::no_grad(|| {
            for (k, t) in &targets {
                let online = &vars[&k[TARGET_PREFIX.len()..]];
                let _ = t.set_requires_grad(false);
                t.shallow_clone().copy_(online);
            }
        });
        if pairs.is_empty() {
            bail!("no online parameters under {online_prefixes:?}");
        }
        Ok(MomentumPairs { pairs })
    }

    /// target <- m * target + (1 - m) * online, for every pair in two multi-tensor kernels.
    pub fn update(&self, m: f64) {
        let targets = native::ptrs(self.pairs.iter().map(|(_, t)| t));
        let online = native::ptrs(self.pairs.iter().map(|(o, _)| o));
        // SAFETY: as many pointers to live tensors in each list, borrowed for the call.
        native::check(unsafe {
            native::selfsup_ema(targets.as_ptr(), online.as_ptr(), targets.len() as _, m)
        })
        .expect("the pairs have equal shapes, dtypes and devices (bind checks)");
    }

    /// The update as three kernels per pair, the reference `update` is tested against.
    #[cfg(test)]
    fn update_per_tensor(&self, m: f64) {
        tch::no_grad(|| {
            for (online, target) in &self.pairs {
                let mut t = target.shallow_clone();
                let _ = t.g_mul_scalar_(m).g_add_(&(online * (1.0 - m)));
            }
        });
    }
}

/// An online network (encoder -> projector -> predictor) and its EMA target (encoder ->
/// projector), as BYOL and MoCo v3 use them. Projector and predictor are BatchNorm MLPs;
/// MoCo v3's projector also normalises its output (`MlpNorm::All`).
pub struct OnlineTarget {
    pub encoder: Encoder,
    projector: nn::SequentialT,
    predictor: nn::SequentialT,
    target_encoder: Encoder,
    target_projector: nn::SequentialT,
    pairs: MomentumPairs,
}

impl OnlineTarget {
    pub fn new(
        p: &nn::Path,
        spec: &EncoderSpec,
        in_channels: i64,
        [proj_hidden_dim, proj_dim, pred_hidden_dim]: [i64; 3],
        projector_norm: MlpNorm,
    ) -> OnlineTarget {
        let encoder = build_encoder(&(p / "encoder"), spec, in_channels);
        let proj = [encoder.dim, proj_hidden_dim, proj_dim];
        let pred = [proj_dim, pred_hidden_dim, proj_dim];
        let t = p / "target";
        OnlineTarget {
            projector: mlp(&(p / "projector"), &proj, projector_norm),
            predictor: mlp(&(p / "predictor"), &pred, MlpNorm::Hidden),
            target_encoder: build_encoder(&(&t / "encoder"), spec, in_channels),
            target_projector: mlp(&(&t / "projector"), &proj, projector_norm),
            encoder,
            pairs: MomentumPairs::default(),
        }
    }

    /// Pairs the online encoder and projector with their targets (see `MomentumPairs::bind`).
    pub fn bind(&mut self, vs: &nn::VarStore) -> Result<()> {
        self.pairs = MomentumPairs::bind(vs, &["encoder.", "projector."])?;
        Ok(())
    }

    /// predictor(projector(encoder(x))): `[B, C, H, W]` -> `[B, proj_dim]`
    pub fn online(&self, x: &Tensor) -> Tensor {
        self.predictor.forward_t(
            &self
                .projector
                .forward_t(&self.encoder.forward_t(x, true), true),
            true,
        )
    }

    /// target_projector(target_encoder(x)) without gradients, in training mode (batch statistics).
    pub fn target(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            self.target_projector
                .forward_t(&self.target_encoder.forward_t(x, true), true)
        })
    }

    pub fn update(&self, m: f64) {
        self.pairs.update(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn ema_update_matches_hand_computation_and_freezes_the_target() {
        let vs = nn::VarStore::new(Device::Cpu);
        let online = vs
            .root()
            .sub("head")
            .var_copy("w", &Tensor::from_slice(&[1f32, 2.0]));
        let target = vs
            .root()
            .sub("target")
            .sub("head")
            .var("w", &[2], nn::Init::Const(0.0));
        let pairs = MomentumPairs::bind(&vs, &["head."]).unwrap();
        assert!(!target.requires_grad());
        assert_eq!(
            Vec::<f32>::try_from(&target).unwrap(),
            vec![1.0, 2.0],
            "the target starts as a copy"
        );
        tch::no_grad(|| {
            online
                .shallow_clone()
                .copy_(&Tensor::from_slice(&[3f32, 6.0]))
        });
        pairs.update(0.75);
        // 0.75 * [1, 2] + 0.25 * [3, 6] = [1.5, 3]
        assert_eq!(Vec::<f32>::try_from(&target).unwrap(), vec![1.5, 3.0]);
        assert_eq!(online.kind(), Kind::Float);
        // The multi-tensor update gives the per-tensor update's numbers (1e-6 a step).
        let vs = nn::VarStore::new(Device::Cpu);
        for (i, shape) in [vec![3, 4], vec![7], vec![2, 3, 5]].iter().enumerate() {
            let name = format!("w{i}");
            let _ = vs.root().sub("net").var(
                &name,
                shape,
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            );
            let _ = vs
                .root()
                .sub("target")
                .sub("net")
                .var(&name, shape, nn::Init::Const(0.0));
        }
        let pairs = MomentumPairs::bind(&vs, &["net."]).unwrap();
        let reference: Vec<(Tensor, Tensor)> = pairs
            .pairs
            .iter()
            .map(|(o, t)| (o.shallow_clone(), t.copy()))
            .collect();
        let reference = MomentumPairs { pairs: reference };
        for step in 0..5 {
            tch::no_grad(|| {
                for (o, _) in &pairs.pairs {
                    let _ = o.shallow_clone().g_add_(&o.randn_like());
                }
            });
            pairs.update(0.99);
            reference.update_per_tensor(0.99);
            for ((_, t), (_, r)) in pairs.pairs.iter().zip(&reference.pairs) {
                let d = (t - r).abs().max().double_value(&[]);
                assert!(d <= 1e-6, "step {step}: {d}");
            }
        }
        let lonely = nn::VarStore::new(Device::Cpu);
        let _ = lonely
            .root()
            .sub("enc")
            .var("w", &[1], nn::Init::Const(0.0));
        assert!(
            MomentumPairs::bind(&lonely, &["enc."])
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
    }
}
