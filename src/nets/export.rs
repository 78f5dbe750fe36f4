//! Encoder weights for PyTorch: the `encoder.*` variables of a run, renamed to PyTorch's
//! conventions, in a safetensors file that `torch.nn.Module.load_state_dict(strict=True)`
//! accepts.
//!
//! - `resnet18`: torchvision's `resnet18` names (conv1, bn1, layerN.M.conv1/bn1/conv2/bn2,
//!   layerN.0.downsample.0/1). Differences: conv1 is 3x3 with stride 1 and padding 1 (not
//!   7x7 stride 2), there is no max-pool (use `nn.Identity()`), and no `fc` (the encoder
//!   ends at the global average pool; use `nn.Identity()`).
//! - `cnn`: `stageI.conv1/bn1/conv2/bn2`, as the module in scripts/check_torch_export.py.
//! - `vit`: timm's `VisionTransformer` names for `class_token=False, global_pool="avg",
//!   fc_norm=False, num_classes=0` (see `nets::vit`); the metadata carries `vit_patch`,
//!   `vit_depth`, `vit_width`, `vit_heads` and `vit_image_size`.
//!
//! BatchNorm layers get the `num_batches_tracked` counter PyTorch expects (set to 0: it is
//! only read when momentum is None).
//!
//! The metadata's `input` says what the network is applied to, as selfsup's evaluation
//! does it: `image`; `lightness` (colorization: the Lab L / 100 of sRGB images, a
//! 1-channel network); `patch-mean` (CPC: every `patch` x `patch` patch at `stride`
//! encoded on its own, the codes averaged). `input_shape` is `[C, H, W]` of the images the
//! evaluation feeds it (values in [0, 1]). `python/selfsup/models.py` builds each, as
//! torchvision, timm or its own modules; it also writes the ONNX model (`write_onnx`).

use super::{Encoder, EncoderInput};
use crate::config::EncoderSpec;
use crate::tensor_io::write_safetensors_atomic;
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// The encoder's variables with the `encoder.` prefix removed, plus `num_batches_tracked`.
pub fn encoder_state_dict(vars: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>> {
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in vars {
        let Some(n) = name.strip_prefix("encoder.") else {
            continue;
        };
        out.push((n.to_string(), t.detach().to_device(tch::Device::Cpu)));
        if let Some(bn) = n.strip_suffix(".running_mean") {
            out.push((
                format!("{bn}.num_batches_tracked"),
                Tensor::zeros([], (Kind::Int64, tch::Device::Cpu)),
            ));
        }
    }
    if out.is_empty() {
        bail!("no encoder variables found");
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Writes the encoder of `vars` to `path`; the metadata names the architecture and what
/// the network is applied to (`EncoderInput`, and the `input_shape` `[C, H, W]` of the
/// evaluation's images), which the PyTorch side must reproduce to get the features that
/// selfsup's evaluation extracts.
pub fn write_encoder(
    path: &Path,
    vars: &HashMap<String, Tensor>,
    method: &str,
    spec: &EncoderSpec,
    encoder: &Encoder,
    input_shape: [i64; 3],
) -> Result<()> {
    let tensors = encoder_state_dict(vars)?;
    let mut meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("encoder".to_string(), spec.kind.to_string()),
        ("in_channels".to_string(), encoder.in_channels.to_string()),
        (
            "cnn_widths".to_string(),
            serde_json::to_string(&spec.cnn_widths)?,
        ),
        ("cnn_pool".to_string(), spec.cnn_pool.to_string()),
        ("resnet_width".to_string(), spec.resnet_width.to_string()),
        ("vit_patch".to_string(), spec.vit_patch.to_string()),
        ("vit_depth".to_string(), spec.vit_depth.to_string()),
        ("vit_width".to_string(), spec.vit_width.to_string()),
        ("vit_heads".to_string(), spec.vit_heads.to_string()),
        (
            "vit_image_size".to_string(),
            spec.vit_image_size.to_string(),
        ),
        ("method".to_string(), method.to_string()),
        (
            "input_shape".to_string(),
            serde_json::to_string(&input_shape)?,
        ),
    ]);
    let input = match encoder.input {
        EncoderInput::Image => "image",
        EncoderInput::Lightness => "lightness",
        EncoderInput::PatchMean { patch, stride } => {
            meta.insert("patch".into(), patch.to_string());
            meta.insert("stride".into(), stride.to_string());
            "patch-mean"
        }
    };
    meta.insert("input".into(), input.into());
    write_safetensors_atomic(path, &tensors, meta)
}

/// The module builders of the Python package, run by `write_onnx` as a script (they import
/// only torch, torchvision, timm and safetensors).
const MODELS_PY: &str = include_str!("../../python/selfsup/models.py");

/// Writes the ONNX model of the encoder exported to `weights` (by `write_encoder`) to
/// `out`: `python` (a Python with torch 2.11, onnx and onnxscript) builds the PyTorch module
/// and runs torch's exporter; with onnxruntime installed it also runs the model and
/// compares. Returns the script's report (a JSON object).
pub fn write_onnx(weights: &Path, out: &Path, python: &Path) -> Result<serde_json::Value> {
    let run = std::process::Command::new(python)
        .arg("-c")
        .arg(MODELS_PY)
        .arg("onnx")
        .arg(weights)
        .arg(out)
        .output()
        .with_context(|| format!("cannot run {} (set SELFSUP_PYTHON)", python.display()))?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    if !run.status.success() {
        bail!(
            "the ONNX export of {} with {} failed: {}",
            weights.display(),
            python.display(),
            stderr.trim()
        );
    }
    let stdout = String::from_utf8_lossy(&run.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .with_context(|| format!("the ONNX export printed '{last}' instead of its report"))
}
