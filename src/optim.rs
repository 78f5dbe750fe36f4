//! SGD with momentum, Adam and AdamW, with their state (momentum buffers, moment
//! estimates, step count) in tensors that a checkpoint saves, so that a resumed run
//! continues exactly. Update rules follow torch.optim (SGD: dampening 0, not Nesterov).
//!
//! A step runs libtorch's fused kernels (`_fused_sgd_`, `_fused_adam_`, `_fused_adamw_`,
//! what `torch.optim`'s `fused=True` calls: one pass over each parameter instead of ~6 to
//! 13 element-wise kernels) over every float32 parameter with a gradient; `step_unfused`
//! writes the same rules out tensor by tensor, for other dtypes and as the tests' reference.

use crate::config::OptimizerKind;
use crate::native::{self, check, ptrs};
use anyhow::{Result, bail};
use std::collections::BTreeMap;
use std::ffi::c_int;
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

    /// Sets every gradient to none (as PyTorch's default `zero_grad(set_to_none=True)`):
    /// nothing to zero, and a parameter the next backward pass does not reach is left alone
    /// by `step` (no momentum, no weight decay).
    pub fn zero_grad(&mut self) {
        let p = ptrs(self.params.iter().map(|(_, p)| p));
        // SAFETY: p.len() pointers to the live parameters, borrowed for the call.
        check(unsafe { native::selfsup_clear_grads(p.as_ptr(), p.len() as c_int) })
            .expect("resetting a gradient cannot fail");
    }

    /// Applies one update with learning rate `lr` from the gradients currently stored,
    /// through libtorch's fused kernels.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.steps_taken += 1;
        let wd = self.weight_decay;
        let mut unfused = Vec::new();
        // Parameters with a gradient, by the state their kernel call needs: SGD's first
        // step creates the momentum buffers, so those parameters go in a call of their own.
        let mut fresh = Vec::new();
        let mut known = Vec::new();
        for (name, p) in &self.params {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            if p.kind() != Kind::Float || g.kind() != Kind::Float {
                unfused.push(name.clone());
                continue;
            }
            let first = match self.kind {
                OptKind::Sgd { momentum } if momentum != 0.0 => {
                    !self.state.contains_key(&format!("{name}/momentum"))
                }
                _ => false,
            };
            if first { &mut fresh } else { &mut known }.push((name.clone(), p.shallow_clone(), g));
        }
        for (group, first) in [(fresh, true), (known, false)] {
            if group.is_empty() {
                continue;
            }
            let p = ptrs(group.iter().map(|(_, p, _)| p));
            let g = ptrs(group.iter().map(|(_, _, g)| g));
            let n = group.len() as c_int;
            match self.kind {
                OptKind::Sgd { momentum } => {
                    let bufs: Vec<Tensor> = group
                        .iter()
                        .map(|(name, p, _)| {
                            if momentum == 0.0 {
                                Tensor::new()
                            } else {
                                self.state
                                    .entry(format!("{name}/momentum"))
                                    .or_insert_with(|| p.empty_like())
                                    .shallow_clone()
                            }
                        })
                        .collect();
                    let b = ptrs(&bufs);
                    // SAFETY: n pointers to live tensors in each list, borrowed for the call.
                    check(unsafe {
                        native::selfsup_fused_sgd(
                            p.as_ptr(),
                            g.as_ptr(),
                            b.as_ptr(),
                            n,
                            wd,
                            momentum,
                            lr,
                            first as c_int,
                        )
                    })?;
                }
                OptKind::Adam | OptKind::AdamW => {
                    let mut moment = |kind: &str| -> Vec<Tensor> {
                        group
                            .iter()
                            .map(|(name, p, _)| {
                                self.state
                                    .entry(format!("{name}/{kind}"))
                                    .or_insert_with(|| p.zeros_like())
                                    .shallow_clone()
                            })
                            .collect()
                    };
                    let (m, v) = (moment("exp_avg"), moment("exp_avg_sq"));
                    let (m, v) = (ptrs(&m), ptrs(&v));
                    // SAFETY: n pointers to live tensors in each list, borrowed for the call.
                    check(unsafe {
                        native::selfsup_fused_adam(
                            (self.kind == OptKind::AdamW) as c_int,
                            p.as_ptr(),
                            g.as_ptr(),
                            m.as_ptr(),
                            v.as_ptr(),
                            n,
                            lr,
                            BETA1,
                            BETA2,
                            wd,
                            EPS,
                            self.steps_taken,
                        )
                    })?;
                }
            }
        }
        if !unfused.is_empty() {
            self.update_unfused(lr, |name| unfused.iter().any(|u| u == name));
        }
        Ok(())
    }

    /// The update rules written out tensor by tensor (the reference of the fused kernels),
    /// counting the step as `step` does.
    pub fn step_unfused(&mut self, lr: f64) {
        self.steps_taken += 1;
        self.update_unfused(lr, |_| true);
    }

    /// `step_unfused`'s update, for the parameters that `pick` names.
    fn update_unfused(&mut self, lr: f64, pick: impl Fn(&str) -> bool) {
        let t = self.steps_taken as f64;
        let wd = self.weight_decay;
        tch::no_grad(|| {
            for (name, p) in &self.params {
                let g = p.grad();
                if !g.defined() || !pick(name) {
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
        opt.step(lr).unwrap();
    }

    fn vals(p: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(p).unwrap()
    }

    /// zero_grad leaves no gradient (nothing zeroed), and a parameter that a step's backward
    /// pass does not reach is left alone: no momentum, no weight decay (as PyTorch).
    #[test]
    fn gradients_are_set_to_none_and_unreached_parameters_stay() {
        let _rng = crate::torch_rng_lock();
        let (vs, _, p) = setup(OptimizerKind::AdamW, 0.1);
        let q = vs.root().var_copy("q", &Tensor::from_slice(&[3f32]));
        let mut opt = Optimizer::new(&vs, OptimizerKind::AdamW, 0.9, 0.1);
        opt.zero_grad();
        ((p.square().sum(Kind::Float) + q.square().sum(Kind::Float)) * 0.5).backward();
        opt.step(0.1).unwrap();
        opt.zero_grad();
        assert!(
            !p.grad().defined() && !q.grad().defined(),
            "no gradient after zero_grad"
        );
        let q1 = vals(&q);
        (p.square().sum(Kind::Float) * 0.5).backward(); // q not reached
        opt.step(0.1).unwrap();
        assert_eq!(vals(&q), q1, "q has no gradient this step: unchanged");
        assert!(!q.grad().defined());
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

    /// A small network's parameters (a conv weight, biases, a matrix; float32), the same
    /// in every call, and a loss on them whose gradients change from step to step.
    fn net() -> (nn::VarStore, Vec<Tensor>) {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        tch::manual_seed(11);
        let shapes: [&[i64]; 4] = [&[8, 3, 3, 3], &[8], &[5, 8], &[5]];
        let ps = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                root.var_copy(
                    &format!("p{i}"),
                    &Tensor::randn(*s, (Kind::Float, Device::Cpu)),
                )
            })
            .collect();
        (vs, ps)
    }

    fn loss(ps: &[Tensor], step: usize, with_bias: bool) -> Tensor {
        let x = Tensor::linspace(-1.0, 1.0, 8, (Kind::Float, Device::Cpu)) * (step as f64 + 1.0);
        let l = (&ps[0] * &ps[0]).sum(Kind::Float) * 0.1
            + (ps[2].matmul(&x.sin())).square().sum(Kind::Float);
        if with_bias {
            l + (&ps[1] * &x).sum(Kind::Float).square() + ps[3].exp().sum(Kind::Float)
        } else {
            l
        }
    }

    #[test]
    fn fused_kernels_match_the_rules_written_out_to_1e_6_per_step() {
        let _rng = crate::torch_rng_lock();
        for (kind, wd) in [
            (OptimizerKind::Sgd, 0.0),
            (OptimizerKind::Sgd, 1e-2),
            (OptimizerKind::Adam, 0.0),
            (OptimizerKind::Adam, 1e-2),
            (OptimizerKind::AdamW, 0.05),
        ] {
            let (vs_a, pa) = net();
            let (vs_b, pb) = net();
            let mut fused = Optimizer::new(&vs_a, kind, 0.9, wd);
            let mut written = Optimizer::new(&vs_b, kind, 0.9, wd);
            for step in 0..6 {
                // The biases get no gradient in the first two steps: their state starts
                // later (SGD's first step with momentum buffers for some parameters only).
                let with_bias = step >= 2;
                fused.zero_grad();
                loss(&pa, step, with_bias).backward();
                fused.step(0.01).unwrap();
                written.zero_grad();
                loss(&pb, step, with_bias).backward();
                written.step_unfused(0.01);
                for (a, b) in pa.iter().zip(&pb) {
                    let d = (a - b).abs().max().double_value(&[]);
                    let scale = b.abs().max().double_value(&[]);
                    assert!(
                        d.is_finite() && d <= 1e-6 * scale.max(1.0),
                        "{kind:?} wd {wd}, step {step}: parameters differ by {d}"
                    );
                }
            }
            let start = net().1;
            let moved: f64 = pa
                .iter()
                .zip(&start)
                .map(|(a, s)| (a - s).abs().max().double_value(&[]))
                .fold(0.0, f64::max);
            assert!(
                moved > 1e-3,
                "{kind:?}: the parameters did not move ({moved})"
            );
            // The state is the same too, so a checkpoint of either resumes the other.
            let (sa, sb) = (fused.state_tensors(), written.state_tensors());
            assert_eq!(sa.len(), sb.len());
            for ((ka, ta), (kb, tb)) in sa.iter().zip(&sb) {
                assert_eq!(ka, kb);
                let (ta, tb) = (ta.to_kind(Kind::Double), tb.to_kind(Kind::Double));
                let d = (&ta - &tb).abs().max().double_value(&[]);
                let scale = tb.abs().max().double_value(&[]).max(1.0);
                assert!(
                    d.is_finite() && d <= 1e-6 * scale,
                    "{kind:?}: state {ka} differs by {d} (largest value {scale})"
                );
            }
        }
    }

    #[test]
    fn float64_parameters_take_the_written_out_rules() {
        let _rng = crate::torch_rng_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().var_copy("p", &Tensor::from_slice(&[1f64, -2.0]));
        let mut vs = vs;
        vs.double();
        assert_eq!(p.kind(), Kind::Double);
        let mut opt = Optimizer::new(&vs, OptimizerKind::Sgd, 0.9, 0.0);
        opt.zero_grad();
        (p.square().sum(Kind::Double) * 0.5).backward();
        opt.step(0.1).unwrap();
        assert_eq!(Vec::<f64>::try_from(&p).unwrap(), vec![0.9, -1.8]);
    }
}
