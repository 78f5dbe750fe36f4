//! `selfsup export`: a run's encoder with PyTorch's names, as safetensors, or as an ONNX
//! model written by the installed torch's exporter.

use super::RunArgs;
use crate::nets;
use crate::run::{LoadedRun, data_info};
use crate::venv;
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use tch::Device;

/// `--format`, or the one `--out`'s extension names (`.onnx`; anything else safetensors).
fn onnx_wanted(format: Option<&str>, out: &Path) -> Result<bool> {
    match format {
        Some("onnx") => Ok(true),
        Some("safetensors") => Ok(false),
        Some(other) => bail!("--format '{other}' is not one of safetensors, onnx"),
        None => Ok(out.extension().is_some_and(|e| e == "onnx")),
    }
}

pub fn command(run: &RunArgs, out: &Path, format: Option<&str>, device: Device) -> Result<()> {
    let onnx = onnx_wanted(format, out)?;
    let r = LoadedRun::load(&run.run, run.checkpoint.as_deref(), &[], device)?;
    let encoder = r.model.method.encoder();
    let input_shape = data_info(&r.ds).shape;
    // The ONNX model is made from the safetensors export, beside the output and removed after.
    let weights = match onnx {
        true => {
            let mut name = out.as_os_str().to_owned();
            name.push(".weights.safetensors");
            PathBuf::from(name)
        }
        false => out.to_path_buf(),
    };
    nets::export::write_encoder(
        &weights,
        &r.model.vs.variables(),
        &r.cfg.method,
        &r.cfg.encoder,
        encoder,
        input_shape,
    )?;
    let what = format!(
        "the {} encoder of {} ({} parameters, input {:?} of {input_shape:?} images)",
        r.cfg.encoder.kind,
        run.run.display(),
        r.encoder_parameters(),
        encoder.input,
    );
    if !onnx {
        println!("wrote {what} to {}", out.display());
        return Ok(());
    }
    let report = venv::python().and_then(|py| nets::export::write_onnx(&weights, out, &py));
    let _ = std::fs::remove_file(&weights);
    let report = report?;
    let check = match report["max_diff"].as_f64() {
        Some(d) => format!("ONNX Runtime gives PyTorch's features to {d:.2e}"),
        None => "onnxruntime is not installed: not run".to_string(),
    };
    println!(
        "wrote the ONNX model of {what} to {} (opset {}; input 'images' [batch, C, H, W] in [0, 1], output 'features'); {check}",
        out.display(),
        report["opset"]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_follows_the_option_then_the_extension() {
        let p = |s: &str| PathBuf::from(s);
        assert!(onnx_wanted(None, &p("enc.onnx")).unwrap());
        assert!(!onnx_wanted(None, &p("enc.safetensors")).unwrap());
        assert!(onnx_wanted(Some("onnx"), &p("enc.bin")).unwrap());
        assert!(!onnx_wanted(Some("safetensors"), &p("enc.onnx")).unwrap());
        let e = onnx_wanted(Some("tflite"), &p("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--format 'tflite'"), "{e}");
    }
}
