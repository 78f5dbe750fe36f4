//! Pretraining methods: one file each, all behind the `Method` trait, listed in `REGISTRY`.
//! Adding a method means one new file and one line in `REGISTRY`.

pub mod autoencoder;
pub mod barlow_twins;
pub mod byol;
pub mod colorization;
pub mod context_encoder;
pub mod cpc;
pub mod denoising;
pub mod dino;
pub mod finetune;
pub mod jigsaw;
pub mod mae;
pub mod moco;
pub mod moco_v3;
pub mod nnclr;
pub mod patches;
pub mod relative_patch;
pub mod rotation;
pub mod simclr;
pub mod simsiam;
pub mod supervised;
pub mod swav;
pub mod vicreg;
pub mod views;

use crate::augment::Views;
pub use crate::config::MethodConfig;
use crate::config::{self, Config, EncoderKind, check};
use crate::nets::Encoder;
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use tch::{Kind, Tensor, nn};

/// Where training is, passed to every step (schedules such as BYOL's momentum use it).
#[derive(Debug, Clone, Copy)]
pub struct StepCtx {
    pub epoch: usize,
    pub step: usize,
    pub total_steps: usize,
}

/// What a method knows of the data it is built for.
#[derive(Debug, Clone, Copy)]
pub struct DataInfo {
    /// `[C, H, W]`
    pub shape: [i64; 3],
    pub num_classes: i64,
}

pub trait Method {
    /// The scalar training loss for a batch. `images`: in [0, 1], one tensor per crop size
    /// (`data::loader::Batch`): without views a single `[B, C, H, W]`; with views one
    /// `[n * B, C, h, w]` per size, its n views view-major. `labels`: `[B]` (only the
    /// supervised baseline may look at them).
    fn loss(&mut self, images: &[Tensor], labels: &Tensor, ctx: &StepCtx) -> Tensor;
    /// The encoder that evaluation, embeddings and the PyTorch export see: for most methods
    /// the trained encoder on whole images; for colorization the same network on the
    /// images' lightness, for CPC on a grid of patches whose codes are mean-pooled (see
    /// `nets::EncoderInput`).
    fn encoder(&self) -> &Encoder;
    /// Runs after each optimizer step, without gradients (momentum updates, queues).
    fn after_step(&mut self, _ctx: &StepCtx) {}
    /// Called once after `build` with the store holding every variable: methods with
    /// momentum networks pair online and target variables here (see nets::momentum).
    fn bind(&mut self, _vs: &nn::VarStore) -> Result<()> {
        Ok(())
    }
    /// Random views the loader should make of each image. `loss` receives one tensor per
    /// crop size, `[n * B, C, h, w]` for the n views of that size: all first views, then all
    /// second views, and so on (`views::crops` splits them per view).
    fn views(&self) -> Option<Arc<Views>> {
        None
    }
    /// Whether the method can train data-parallel on `world_size` processes (each taking an
    /// equal slice of the global batch); an error naming the option that stands in the way.
    fn check_world_size(&self, _world_size: usize) -> Result<()> {
        Ok(())
    }
    /// A picture of the method at work on a few images `[N, C, H, W]`, as an image
    /// `[C', H', W']` in [0, 1] (for example inpaintings next to their input and
    /// original); the training loop saves it as `examples.png` at the end of pretraining.
    /// Called without gradients; `None` for methods with nothing to show.
    fn examples(&self, _images: &Tensor) -> Option<Tensor> {
        None
    }
    /// Class scores `[N, K]` of images `[N, C, H, W]`, for the methods trained with labels
    /// (the supervised baseline, fine-tuning): their test accuracy. None for the others.
    fn logits(&self, _images: &Tensor) -> Option<Tensor> {
        None
    }
}

/// A registry entry. `build` creates the method's variables under the given path; the
/// encoder must live under `encoder` so evaluation and export can find it.
pub struct MethodSpec {
    pub name: &'static str,
    pub summary: &'static str,
    /// The config keys the method reads besides the general ones (`config::is_general`), in groups (such as
    /// `views::AUG_KEYS`). A key that several methods share is checked by `shared_check`;
    /// the `aug_*` keys by `views::validate`, the multi-crop keys by
    /// `views::validate_multicrop`.
    pub keys: &'static [&'static [&'static str]],
    /// Checks the method's own keys (those no other method reads).
    pub validate: fn(&MethodConfig) -> Result<()>,
    /// `loss` uses the labels (only the supervised baseline): training then takes the
    /// labelled training split instead of the pretraining split.
    pub uses_labels: bool,
    /// The encoders it works with (`ANY_ENCODER`, or MAE's ViT alone); `check_config`
    /// refuses the others.
    pub encoders: &'static [EncoderKind],
    pub build: fn(&nn::Path, &MethodConfig, &DataInfo) -> Result<Box<dyn Method>>,
}

/// `MethodSpec::encoders` of a method that works with every encoder.
pub const ANY_ENCODER: &[EncoderKind] = EncoderKind::ALL;

/// `MethodSpec::validate` of a method without keys of its own.
pub fn no_own_keys(_: &MethodConfig) -> Result<()> {
    Ok(())
}

/// The checks of the keys that several methods read.
fn shared_check(cfg: &MethodConfig, key: &str) -> Result<()> {
    match key {
        "proj_hidden_dim" => check::at_least(key, cfg.keys.proj_hidden_dim, 1),
        "proj_dim" => check::at_least(key, cfg.keys.proj_dim, 1),
        "pred_hidden_dim" => check::at_least(key, cfg.keys.pred_hidden_dim, 1),
        "temperature" => check::positive(key, cfg.keys.temperature),
        "ema_momentum" => check::fraction_below_one(key, cfg.keys.ema_momentum),
        "decoder_widths" => check::widths(key, &cfg.keys.decoder_widths),
        "tile_size" => check::at_least(key, cfg.keys.tile_size, 1),
        _ => Ok(()),
    }
}

/// Checks `cfg` for its method: the general keys, then the method's (shared and own).
/// Returns a warning for each key in `given` (the keys the user set) that the method
/// does not read.
pub fn check_config(cfg: &Config, given: &[String]) -> Result<Vec<String>> {
    if cfg.method.is_empty() {
        bail!(
            "no method: pass --method NAME (see `selfsup methods`) or set method in a --config file"
        );
    }
    let spec = find(&cfg.method)?;
    cfg.validate()?;
    if !spec.encoders.contains(&cfg.encoder.kind) {
        let names: Vec<String> = spec.encoders.iter().map(|e| format!("\"{e}\"")).collect();
        bail!(
            "method {} needs encoder = {} (it is \"{}\")",
            spec.name,
            names.join(" or "),
            cfg.encoder.kind
        );
    }
    let view = cfg.method_view();
    for key in spec.keys() {
        shared_check(&view, key)?;
    }
    if spec.reads(views::AUG_KEYS[0]) {
        views::validate(&cfg.aug)?;
    }
    if spec.reads(views::MULTICROP_KEYS[0]) {
        views::validate_multicrop(&cfg.aug)?;
    }
    (spec.validate)(&view).with_context(|| format!("method {}", spec.name))?;
    let mut warnings = Vec::new();
    for key in given {
        if !config::is_general(key) && !spec.reads(key) {
            warnings.push(format!(
                "option {key} is not read by method {} and is ignored",
                spec.name
            ));
        }
    }
    Ok(warnings)
}

impl MethodSpec {
    /// The keys the method reads besides the general ones.
    pub fn keys(&self) -> impl Iterator<Item = &'static str> {
        self.keys.iter().flat_map(|g| g.iter().copied())
    }

    pub fn reads(&self, key: &str) -> bool {
        self.keys().any(|k| k == key)
    }

    /// Every key a run of this method reads: the general ones and the method's.
    pub fn keys_read(&self) -> Vec<&'static str> {
        let general = config::GENERAL_KEYS.iter().chain(config::EVAL_KEYS.iter());
        general.copied().chain(self.keys()).collect()
    }
}

pub const REGISTRY: &[MethodSpec] = &[
    autoencoder::SPEC,
    denoising::SPEC,
    cpc::SPEC,
    simclr::SPEC,
    moco::SPEC_V1,
    moco::SPEC_V2,
    moco_v3::SPEC,
    nnclr::SPEC,
    byol::SPEC,
    simsiam::SPEC,
    barlow_twins::SPEC,
    vicreg::SPEC,
    swav::SPEC,
    dino::SPEC,
    supervised::SPEC,
    context_encoder::SPEC,
    rotation::SPEC,
    jigsaw::SPEC,
    relative_patch::SPEC,
    colorization::SPEC,
    mae::SPEC,
];

/// Puts the batches in `columns` (each `[N, C, H, W]`, same shape, values in [0, 1]) side
/// by side, one image per row, with a 2-pixel white gap: `[C, N*(H+2)-2, k*(W+2)-2]`.
pub fn side_by_side(columns: &[Tensor]) -> Tensor {
    let gap = |t: &Tensor, dim: i64| {
        let mut s = t.size();
        s[dim as usize] = 2;
        Tensor::ones(s.as_slice(), (Kind::Float, t.device()))
    };
    let mut parts = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            parts.push(gap(c, 3));
        }
        parts.push(c.to_kind(Kind::Float));
    }
    let rows = Tensor::cat(&parts, 3); // [N, C, H, k*(W+2)-2]
    let mut out = Vec::new();
    for i in 0..rows.size()[0] {
        let r = rows.get(i); // [C, H, W']
        if i > 0 {
            out.push(gap(&r, 1));
        }
        out.push(r);
    }
    Tensor::cat(&out, 1)
}

/// The fine-tuning of `selfsup finetune`: trained as a method, not a pretraining one, so
/// not in `REGISTRY` (nor in `selfsup methods`).
pub const FINETUNE: &MethodSpec = &finetune::SPEC;

pub fn find(name: &str) -> Result<&'static MethodSpec> {
    if name == FINETUNE.name {
        return Ok(FINETUNE);
    }
    match REGISTRY.iter().find(|m| m.name == name) {
        Some(m) => Ok(m),
        None => {
            let names: Vec<&str> = REGISTRY.iter().map(|m| m.name).collect();
            bail!("unknown method '{name}'; available: {}", names.join(", "))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::run::Model;
    use tch::{Device, Kind};

    /// An entry of tests/fixtures/methods.json (scripts/make_method_fixtures.py: reference
    /// implementations run in float64).
    pub(crate) fn fixture(name: &str) -> serde_json::Value {
        crate::losses::fixtures::load("methods.json", name)
    }

    /// A float64 tensor of a fixture, written as {"shape": [...], "data": [...]}.
    pub(crate) fn fixture_tensor(v: &serde_json::Value) -> Tensor {
        let ints = |k: &str| -> Vec<i64> {
            v[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        };
        let data: Vec<f64> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        Tensor::from_slice(&data).view(ints("shape").as_slice())
    }

    /// Another valid value for every key that some method reads and others do not.
    fn other_value(key: &str) -> &'static str {
        match key {
            "decoder_widths" => "[16, 8]",
            "noise" => "masking",
            "noise_std" => "0.2",
            "mask_ratio" => "0.3",
            "aug_crop_size" => "6",
            "aug_crop_scale" => "[0.3, 0.9]",
            "aug_crop_ratio" => "[0.5, 2.0]",
            "aug_flip_p" => "0.1",
            "aug_jitter_p" => "0.3",
            "aug_jitter" => "[0.1, 0.2, 0.3, 0.05]",
            "aug_gray_p" => "0.5",
            "aug_blur_p" => "0.5",
            "aug_blur_sigma" => "[0.5, 1.0]",
            "aug_solarize_p" => "0.5",
            "proj_hidden_dim" => "24",
            "proj_dim" => "12",
            "temperature" => "0.3",
            "pred_hidden_dim" => "20",
            "ema_momentum" => "0.9",
            "moco_queue" => "64",
            "shuffle_bn_groups" => "4",
            "cpc_patch" => "5",
            "cpc_stride" => "1",
            "cpc_steps" => "1",
            "cpc_context" => "gru",
            "cpc_context_layers" => "2",
            "cpc_negatives" => "8",
            "ce_mask" => "random-blocks",
            "ce_hole" => "0.4",
            "ce_overlap" => "2",
            "ce_overlap_weight" => "5.0",
            "ce_adversarial" => "true",
            "ce_adv_weight" => "0.01",
            "tile_size" => "1",
            "jigsaw_permutations" => "50",
            "colorization_loss" => "regress",
            "barlow_lambda" => "0.1",
            "vicreg_weights" => "[1.0, 2.0, 3.0]",
            "multicrop_local" => "3",
            "multicrop_local_size" => "5",
            "multicrop_local_scale" => "[0.1, 0.3]",
            "swav_prototypes" => "20",
            "swav_epsilon" => "0.1",
            "swav_iterations" => "5",
            "swav_freeze_epochs" => "0",
            "swav_queue" => "16",
            "dino_out_dim" => "30",
            "dino_teacher_temp" => "0.07",
            "dino_warmup_teacher_temp" => "0.02",
            "dino_warmup_teacher_epochs" => "3",
            "dino_center_momentum" => "0.5",
            "nnclr_queue" => "48",
            "mae_mask_ratio" => "0.5",
            "mae_decoder_width" => "16",
            "mae_decoder_depth" => "3",
            "mae_decoder_heads" => "8",
            "mae_norm_pix_loss" => "false",
            other => panic!("no other value for key {other}: add one here"),
        }
    }

    /// The variables, the views and one loss of `cfg`'s method on fixed images.
    fn fingerprint(cfg: &Config) -> (Vec<(String, Tensor)>, Option<Arc<Views>>, f64) {
        let info = DataInfo {
            shape: [3, 8, 8],
            num_classes: 4,
        };
        let mut model = Model::build(cfg, &info, Device::Cpu).unwrap();
        let mut vars: Vec<_> = model.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let views = model.method.views();
        // A batch of 8 images' views, as the loader makes it.
        let groups = crate::data::loader::size_groups([3, 8, 8], views.as_deref());
        let numel: usize = groups.iter().map(|(n, [c, h, w])| 8 * n * c * h * w).sum();
        tch::manual_seed(7);
        let x = Tensor::rand([numel as i64], (Kind::Float, Device::Cpu)); // [numel]
        let x = crate::data::loader::pack(&x, &groups);
        let labels = Tensor::arange(8, (Kind::Int64, Device::Cpu)).remainder(4);
        let ctx = StepCtx {
            epoch: 0,
            step: 0,
            total_steps: 10,
        };
        let loss = model.method.loss(&x, &labels, &ctx).double_value(&[]);
        (vars, views, loss)
    }

    /// `MethodSpec::keys` is complete: changing any key outside a method's keys (and the
    /// general ones) changes neither its variables, nor its views, nor its loss.
    #[test]
    fn methods_read_no_key_beyond_the_ones_they_name() {
        let _rng = crate::torch_rng_lock();
        let all = Config::keys();
        for spec in REGISTRY {
            for k in spec.keys() {
                assert!(all.iter().any(|a| a == k), "{}: unknown key {k}", spec.name);
            }
            let base = {
                let mut c = Config {
                    method: spec.name.into(),
                    ..Config::default()
                };
                c.encoder.cnn_widths = vec![4, 8];
                c.keys.decoder_widths = vec![8, 4];
                c.train.batch_size = 8;
                c.keys.proj_hidden_dim = 16;
                c.keys.proj_dim = 8;
                c.keys.pred_hidden_dim = 8;
                c.keys.moco_queue = 32;
                c.keys.nnclr_queue = 32;
                c.keys.shuffle_bn_groups = 2;
                c.keys.cpc_patch = 4;
                c.keys.cpc_stride = 2;
                c.keys.cpc_negatives = 16;
                c.keys.tile_size = 2;
                match spec.encoders.contains(&EncoderKind::Cnn) {
                    true => c,
                    false => c.with_tiny_vit(),
                }
            };
            let (vars, views, loss) = fingerprint(&base);
            for key in all
                .iter()
                .filter(|k| !config::is_general(k) && !spec.reads(k))
            {
                let set = format!("{key}={}", other_value(key));
                let changed = base.with_overrides(std::slice::from_ref(&set)).unwrap();
                assert_ne!(changed, base, "{set} changes nothing");
                let (vars2, views2, loss2) = fingerprint(&changed);
                let what = format!("{}: {set}", spec.name);
                assert_eq!(vars.len(), vars2.len(), "{what} changes the variables");
                for ((n1, t1), (n2, t2)) in vars.iter().zip(&vars2) {
                    assert!(n1 == n2 && t1.equal(t2), "{what} changes variable {n1}");
                }
                assert_eq!(views, views2, "{what} changes the views");
                assert_eq!(loss, loss2, "{what} changes the loss");
            }
        }
    }

    #[test]
    fn check_config_validates_method_keys_and_warns_of_unread_ones() {
        let cfg = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Config::assemble(Config::default(), None, &sets).unwrap()
        };
        // MoCo's split BatchNorm must divide the batch; SimCLR does not read it.
        let (c, given) = cfg(&["method=moco-v2", "batch_size=6"]);
        let e = check_config(&c, &given).unwrap_err();
        assert!(format!("{e:#}").contains("shuffle_bn_groups = 4"), "{e:#}");
        let (c, given) = cfg(&["method=simclr", "batch_size=6", "moco_queue=9"]);
        let w = check_config(&c, &given).unwrap();
        assert_eq!(
            w,
            vec!["option moco_queue is not read by method simclr and is ignored"]
        );
        // A shared key is checked for the methods that read it...
        let (c, given) = cfg(&["method=simclr", "temperature=0"]);
        assert!(check_config(&c, &given).is_err());
        // ...and so are the view keys.
        let (c, given) = cfg(&["method=byol", "aug_flip_p=2"]);
        assert!(format!("{:#}", check_config(&c, &given).unwrap_err()).contains("aug_flip_p"));
        let (c, given) = cfg(&["method=autoencoder", "aug_flip_p=2"]);
        assert_eq!(check_config(&c, &given).unwrap().len(), 1);
        let (c, given) = cfg(&[]);
        assert!(
            check_config(&c, &given)
                .unwrap_err()
                .to_string()
                .contains("no method")
        );
    }
}
