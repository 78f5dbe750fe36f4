//! SGD with momentum, Adam and AdamW, written over tensors so that their state (momentum
//! buffers, moment estimates, step count) can be saved in a checkpoint and a resumed run
//! continues exactly. Update rules follow torch.optim (SGD: dampening 0, not Nesterov).

use crate::config::OptimizerKind;
use anyhow::{Result, bail};
use std::collections::BTreeMap;
use tch::{Kind, Tensor, nn};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptKind {
    Sgd { momentum: f64 },
    Adam,
    AdamW,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

pub struct Optimizer {
    pub kind: OptKind,
    pub weight_decay: f64,
    /// Trainable parameters, by variable-store name.
    params: Vec<(String, Tensor)>,
    /// Per-parameter state tensors, keyed "NAME/momentum", "NAME/exp_avg", "NAME/exp_avg_sq".
    state: BTreeMap<String, Tensor>,
    pub steps_taken: i64,
}

impl Optimizer {
    pub fn new(
        vs: &nn::VarStore,
        kind: OptimizerKind,
        momentum: f64,
        weight_decay: f64,
    ) -> Optimizer {
        let kind = match kind {
            OptimizerKind::Sgd => OptKind::Sgd { momentum },
            OptimizerKind::Adam => OptKind::Adam,
            OptimizerKind::AdamW => OptKind::AdamW,
        };
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Optimizer {
            kind,
            weight_decay,
            params,
            state: BTreeMap::new(),
            steps_taken: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// The gradients currently stored, of the parameters that have one, in name order
    /// (the same order on every rank of a data-parallel run).
    pub fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(Tensor::defined)
            .collect()
    }

    /// Applies one update with learning rate `lr` from the gradients currently stored.
    pub fn step(&mut self, lr: f64) {
        self.steps_taken += 1;
        let t = self.steps_taken as f64;
        let wd = self.weight_decay;
        tch::no_grad(|| {
            for (name, p) in &self.params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                match self.kind {
                    OptKind::Sgd { momentum } => {
                        let d = if wd != 0.0 {
                            &g + &p * wd
                        } else {
                            g.shallow_clone()
                        };
                        let d = if momentum != 0.0 {
                            match self.state.get_mut(&format!("{name}/momentum")) {
                                Some(buf) => {
                                    let _ = buf.g_mul_scalar_(momentum).g_add_(&d);
                                    buf.shallow_clone()
                                }
                                None => {
                                    let buf = d.detach().copy();
                                    self.state
                                        .insert(format!("{name}/momentum"), buf.shallow_clone());
                                    buf
                                }
                            }
                        } else {
                            d
                        };
                        let _ = p.g_sub_(&(d * lr));
                    }
                    OptKind::Adam | OptKind::AdamW => {
                        let g = if self.kind == OptKind::Adam && wd != 0.0 {
                            &g + &p * wd
                        } else {
                            g.shallow_clone()
                        };
                        if self.kind == OptKind::AdamW && wd != 0.0 {
                            let _ = p.g_mul_scalar_(1.0 - lr * wd);
                        }
                        let m = self
                            .state
                            .entry(format!("{name}/exp_avg"))
                            .or_insert_with(|| p.zeros_like());
                        let _ = m.g_mul_scalar_(BETA1).g_add_(&(&g * (1.0 - BETA1)));
                        let m = m.shallow_clone();
                        let v = self
                            .state
                            .entry(format!("{name}/exp_avg_sq"))
                            .or_insert_with(|| p.zeros_like());
                        let _ = v.g_mul_scalar_(BETA2).g_add_(&(g.square() * (1.0 - BETA2)));
                        let bc1 = 1.0 - BETA1.powf(t);
                        let bc2 = 1.0 - BETA2.powf(t);
                        let denom = (v.sqrt() / bc2.sqrt()) + EPS;
                        let _ = p.g_sub_(&(m / denom * (lr / bc1)));
                    }
                }
            }
        });
    }

    /// State tensors to store in a checkpoint (the step count travels as a scalar tensor).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .state
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        v.push(("steps_taken".into(), Tensor::from(self.steps_taken)));
        v
    }

    /// Restores what `state_tensors` returned; every entry must belong to a parameter.
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>) -> Result<()> {
        self.state.clear();
        let device = self
            .params
            .first()
            .map(|(_, p)| p.device())
            .unwrap_or(tch::Device::Cpu);
        for (k, t) in tensors {
            if k == "steps_taken" {
                self.steps_taken = t.int64_value(&[]);
                continue;
            }
            let Some((pname, _)) = k.rsplit_once('/') else {
                bail!("optimizer state '{k}' is not NAME/KIND")
            };
            let Some((_, p)) = self.params.iter().find(|(n, _)| n == pname) else {
                bail!("optimizer state '{k}' belongs to no trainable parameter");
            };
            if t.size() != p.size() {
                bail!(
                    "optimizer state '{k}' has shape {:?}, parameter has {:?}",
                    t.size(),
                    p.size()
                );
            }
            self.state
                .insert(k, t.to_kind(Kind::Float).to_device(device).copy());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// One parameter p = [1, -2] with loss sum(p^2) / 2, so the gradient is p.
    fn setup(kind: OptimizerKind, wd: f64) -> (nn::VarStore, Optimizer, Tensor) {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().var_copy("p", &Tensor::from_slice(&[1f32, -2.0]));
        let opt = Optimizer::new(&vs, kind, 0.9, wd);
        (vs, opt, p)
    }

    fn step(opt: &mut Optimizer, p: &Tensor, lr: f64) {
        opt.zero_grad();
        (p.square().sum(Kind::Float) * 0.5).backward();
        opt.step(lr);
    }

    fn vals(p: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(p).unwrap()
    }

    #[test]
    fn sgd_momentum_matches_hand_computation() {
        let _rng = crate::torch_rng_lock();
        let (_vs, mut opt, p) = setup(OptimizerKind::Sgd, 0.0);
        step(&mut opt, &p, 0.1); // buf = g = p0; p1 = 0.9 p0
        step(&mut opt, &p, 0.1); // buf = 0.9 p0 + 0.9 p0 = 1.8 p0; p2 = 0.9 p0 - 0.18 p0 = 0.72 p0
        let v = vals(&p);
        assert!(
            (v[0] - 0.72).abs() < 1e-6 && (v[1] + 1.44).abs() < 1e-6,
            "{v:?}"
        );
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        let _rng = crate::torch_rng_lock();
        // Adam's first update is lr * sign(g) (bias-corrected m/sqrt(v) = g/|g|).
        let (_vs, mut opt, p) = setup(OptimizerKind::Adam, 0.0);
        step(&mut opt, &p, 0.01);
        let v = vals(&p);
        assert!(
            (v[0] - 0.99).abs() < 1e-5 && (v[1] + 1.99).abs() < 1e-5,
            "{v:?}"
        );
    }

    #[test]
    fn adamw_decays_weights_decoupled() {
        let _rng = crate::torch_rng_lock();
        // p <- p (1 - lr wd) - lr sign(g)
        let (_vs, mut opt, p) = setup(OptimizerKind::AdamW, 0.5);
        step(&mut opt, &p, 0.1);
        let v = vals(&p);
        assert!(
            (v[0] - (0.95 - 0.1)).abs() < 1e-5 && (v[1] - (-1.9 + 0.1)).abs() < 1e-5,
            "{v:?}"
        );
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let _rng = crate::torch_rng_lock();
        let (_vs, mut a, pa) = setup(OptimizerKind::Adam, 0.01);
        step(&mut a, &pa, 0.05);
        let (_vs2, mut b, pb) = setup(OptimizerKind::Adam, 0.01);
        tch::no_grad(|| pb.shallow_clone().copy_(&pa));
        b.load_state(a.state_tensors()).unwrap();
        step(&mut a, &pa, 0.05);
        step(&mut b, &pb, 0.05);
        assert_eq!(vals(&pa), vals(&pb));
        assert!(
            b.load_state(vec![("q/exp_avg".into(), Tensor::from(1f32))])
                .is_err()
        );
    }
}
