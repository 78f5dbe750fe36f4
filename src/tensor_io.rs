//! safetensors files of tch tensors: written atomically (temporary file, fsync, rename), so
//! a crash never leaves a half-written file, and read back with their metadata. A leaf:
//! checkpoints and the PyTorch export both write through here.

use anyhow::{Context, Result, bail};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use tch::{Kind, Tensor};

fn dtype(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Uint8 => Dtype::U8,
        k => bail!("cannot store tensors of kind {k:?}"),
    })
}

fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let n = t.numel() * t.kind().elt_size_in_bytes();
    let mut buf = vec![0u8; n];
    t.copy_data_u8(&mut buf, t.numel());
    buf
}

/// Writes `tensors` with `metadata` to `path` atomically (temp file, fsync, rename).
pub fn write_safetensors_atomic(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.clone(), dtype(t.kind())?, shape, tensor_bytes(t)));
    }
    let mut views = Vec::with_capacity(owned.len());
    for (name, dt, shape, bytes) in &owned {
        views.push((
            name.clone(),
            TensorView::new(*dt, shape.clone(), bytes).context("bad tensor view")?,
        ));
    }
    let bytes = safetensors::tensor::serialize(views, &Some(metadata))
        .context("cannot serialize tensors")?;
    let tmp = path.with_extension("safetensors.tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(&bytes)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Reads all tensors and the metadata of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<(Vec<(String, Tensor)>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F64 => Kind::Double,
            Dtype::I64 => Kind::Int64,
            Dtype::U8 => Kind::Uint8,
            d => bail!(
                "{}: tensor {name} has unsupported dtype {d:?}",
                path.display()
            ),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name, Tensor::from_data_size(view.data(), &shape, kind)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, metadata))
}
