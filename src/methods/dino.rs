//! DINO (Caron et al. 2021): self-distillation without labels. A student (encoder and
//! head) and a teacher, the EMA of the student (momentum rising from `ema_momentum` to 1
//! along a cosine). Multi-crop views: the teacher sees the 2 global crops, the student
//! every crop (the encoder once per crop size). The head is DINO's: a 3-layer GELU MLP
//! (`proj_hidden_dim`) to a `proj_dim` bottleneck, L2-normalised, then a weight-normalised
//! linear layer without bias to `dino_out_dim` (its norm fixed at 1). The loss is the
//! cross-entropy between the teacher's centred and sharpened softmax (temperature rising
//! linearly from `dino_warmup_teacher_temp` to `dino_teacher_temp` over
//! `dino_warmup_teacher_epochs`) and the student's softmax at `temperature`, over every
//! (global crop, other crop) pair. The centre is an EMA (`dino_center_momentum`) of the
//! teacher's mean output over the global batch; it is a variable, so checkpoints carry it.
//! Global views are BYOL's asymmetric pair (blur always / p = 0.1, solarization 0 / 0.2),
//! as in the paper; local views take the `aug_*` pipeline with blur p = 0.5.

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx, byol, views};
use crate::augment::{Op, Views};
use crate::config::check;
use crate::dist::current as dist;
use crate::losses::{self, l2_normalize};
use crate::nets::{self, Encoder, momentum::MomentumPairs};
use crate::precision;
use crate::schedule::{cosine_momentum, linear_ramp};
use anyhow::Result;
use std::sync::Arc;
use tch::Tensor;
use tch::nn::{self, Module};

pub const SPEC: MethodSpec = MethodSpec {
    name: "dino",
    summary: "self-distillation: student matches an EMA teacher's centred, sharpened output",
    keys: KEYS,
    validate,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(Dino::new(p, cfg, data))),
};

const KEYS: &[&[&str]] = &[
    views::AUG_KEYS,
    views::MULTICROP_KEYS,
    &[
        "proj_hidden_dim",
        "proj_dim",
        "temperature",
        "ema_momentum",
        "dino_out_dim",
        "dino_teacher_temp",
        "dino_warmup_teacher_temp",
        "dino_warmup_teacher_epochs",
        "dino_center_momentum",
    ],
];

fn validate(cfg: &MethodConfig) -> Result<()> {
    check::at_least("dino_out_dim", cfg.keys.dino_out_dim, 2)?;
    check::positive("dino_teacher_temp", cfg.keys.dino_teacher_temp)?;
    check::positive(
        "dino_warmup_teacher_temp",
        cfg.keys.dino_warmup_teacher_temp,
    )?;
    check::fraction_below_one("dino_center_momentum", cfg.keys.dino_center_momentum)
}

/// DINO's projection head: MLP -> L2 normalisation -> weight-normalised linear layer.
struct Head {
    mlp: nn::Sequential,
    /// `[K, bottleneck]`: the last layer's direction; its rows are normalised in use.
    last: Tensor,
}

impl Head {
    fn new(p: &nn::Path, input: i64, cfg: &MethodConfig) -> Head {
        let (hidden, bottleneck) = (cfg.keys.proj_hidden_dim, cfg.keys.proj_dim);
        let lin = |name: &str, i, o| nn::linear(p / name, i, o, Default::default());
        let mlp = nn::seq()
            .add(lin("fc0", input, hidden))
            .add_fn(|x| x.gelu("none"))
            .add(lin("fc1", hidden, hidden))
            .add_fn(|x| x.gelu("none"))
            .add(lin("fc2", hidden, bottleneck));
        let last = p.var(
            "last",
            &[cfg.keys.dino_out_dim, bottleneck],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        );
        Head { mlp, last }
    }

    /// `[N, input]` -> `[N, K]`
    fn forward(&self, x: &Tensor) -> Tensor {
        l2_normalize(&self.mlp.forward(x)).matmul(&l2_normalize(&self.last).tr())
    }
}

pub struct Dino {
    encoder: Encoder,
    head: Head,
    teacher_encoder: Encoder,
    teacher_head: Head,
    pairs: MomentumPairs,
    /// `[1, K]`, a variable without gradient.
    center: Tensor,
    /// The teacher's mean output over this step's global batch, for the centre's update.
    batch_center: Option<Tensor>,
    base_m: f64,
    student_temp: f64,
    teacher_temp: [f64; 2],
    warmup_epochs: usize,
    center_m: f64,
    views: Arc<Views>,
}

/// DINO's views: BYOL's asymmetric global pair, then the local crops (blur p = 0.5).
fn dino_views(cfg: &MethodConfig, data: &DataInfo) -> Arc<Views> {
    let global = byol::byol_views(cfg, data).pipelines.clone();
    let mut local = views::pipeline(cfg.aug, data);
    for op in &mut local.ops {
        if let Op::GaussianBlur { p, .. } = op {
            *p = 0.5;
        }
    }
    views::multi_crop(cfg.aug, data, global, local)
}

impl Dino {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Dino {
        let c = data.shape[0];
        let encoder = nets::build_encoder(&(p / "encoder"), cfg.encoder, c);
        let t = p / "target";
        let teacher_encoder = nets::build_encoder(&(&t / "encoder"), cfg.encoder, c);
        Dino {
            head: Head::new(&(p / "head"), encoder.dim, cfg),
            teacher_head: Head::new(&(&t / "head"), encoder.dim, cfg),
            encoder,
            teacher_encoder,
            pairs: MomentumPairs::default(),
            center: p.zeros_no_train("center", &[1, cfg.keys.dino_out_dim]),
            batch_center: None,
            base_m: cfg.keys.ema_momentum,
            student_temp: cfg.keys.temperature,
            teacher_temp: [
                cfg.keys.dino_warmup_teacher_temp,
                cfg.keys.dino_teacher_temp,
            ],
            warmup_epochs: cfg.keys.dino_warmup_teacher_epochs,
            center_m: cfg.keys.dino_center_momentum,
            views: dino_views(cfg, data),
        }
    }
}

impl Method for Dino {
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, ctx: &StepCtx) -> Tensor {
        // images: the global crops [2B, C, H, W], then the local ones [(V - 2) B, C, h, w]
        let v = self.views.pipelines.len() as i64;
        let student = self.head.forward(&views::encode(&self.encoder, images)); // [V B, K]
        let teacher = tch::no_grad(|| {
            let h = self.teacher_encoder.forward_t(&images[0], true);
            self.teacher_head.forward(&h) // [2B, K]
        });
        let [warm, temp] = self.teacher_temp;
        let t = linear_ramp(ctx.epoch, self.warmup_epochs, warm, temp);
        // Softmaxes, centre and loss in float32 whatever the training precision.
        precision::in_fp32([&student, &teacher], |[student, teacher]| {
            let global = dist::all_gather(&teacher); // [W 2B, K]
            self.batch_center = Some(global.mean_dim(&[0i64][..], true, global.kind()));
            let (student, teacher) = (student.chunk(v, 0), teacher.chunk(2, 0)); // V, 2 x [B, K]
            losses::dino(&student, &teacher, &self.center, self.student_temp, t)
        })
    }
    fn after_step(&mut self, ctx: &StepCtx) {
        self.pairs
            .update(cosine_momentum(ctx.step, ctx.total_steps, self.base_m));
        if let Some(c) = self.batch_center.take() {
            let m = self.center_m;
            tch::no_grad(|| {
                let new = &self.center * m + c * (1.0 - m);
                self.center.shallow_clone().copy_(&new);
            });
        }
    }
    fn bind(&mut self, vs: &nn::VarStore) -> Result<()> {
        self.pairs = MomentumPairs::bind(vs, &["encoder.", "head."])?;
        Ok(())
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    fn views(&self) -> Option<Arc<Views>> {
        Some(self.views.clone())
    }
}
