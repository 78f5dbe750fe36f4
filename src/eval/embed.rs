//! Embeddings as NumPy files (npyz): `embeddings_SPLIT.npy` (`[N, D]` float32) and
//! `labels_SPLIT.npy` (`[N]` int64).

use crate::run::LoadedRun;
use anyhow::{Context, Result, bail};
use npyz::WriterBuilder;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Tensor};

fn write_npy<T: npyz::AutoSerialize + npyz::Serialize>(
    path: &Path,
    data: &[T],
    shape: &[u64],
) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()?;
    w.extend(data.iter())?;
    w.finish()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `features` `[N, D]` and `labels` `[N]` into `dir`; returns the two paths.
pub fn write_embeddings(
    dir: &Path,
    split: &str,
    features: &Tensor,
    labels: &Tensor,
) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let f = features
        .to_kind(tch::Kind::Float)
        .to_device(tch::Device::Cpu)
        .contiguous();
    let (n, d) = (f.size()[0] as u64, f.size()[1] as u64);
    let values = Vec::<f32>::try_from(f.flatten(0, -1))?;
    let labels = Vec::<i64>::try_from(labels.to_device(tch::Device::Cpu))?;
    let (fp, lp) = (
        dir.join(format!("embeddings_{split}.npy")),
        dir.join(format!("labels_{split}.npy")),
    );
    write_npy(&fp, &values, &[n, d])?;
    write_npy(&lp, &labels, &[n])?;
    Ok((fp, lp))
}

/// `selfsup embed`: the features of the `split` (train or test) of the run in `dir` (at
/// its last checkpoint, or at `checkpoint`) as NumPy files in `out`; returns what to print.
pub fn for_run(
    dir: &Path,
    checkpoint: Option<&Path>,
    split: &str,
    out: &Path,
    device: Device,
) -> Result<String> {
    let r = LoadedRun::load(dir, checkpoint, &[], device)?;
    let data = match split {
        "train" => &r.ds.train,
        "test" => &r.ds.test,
        other => bail!("--split '{other}' is not one of train, test"),
    };
    if data.is_empty() {
        bail!("the {split} split of {} is empty", r.ds.name);
    }
    let (f, l) = if data.stream().is_some() && r.ds.require_labels().is_ok() {
        let all = super::run_features(&r, device)?;
        if split == "train" {
            all.train
        } else {
            all.test
        }
    } else {
        super::method_features(
            r.model.method.as_ref(),
            &Arc::new(data.clone()),
            512,
            device,
            r.cfg.train.precision,
        )?
    };
    let (fp, lp) = write_embeddings(out, split, &f, &l)?;
    Ok(format!(
        "wrote {} x {} embeddings to {} and labels to {}",
        f.size()[0],
        f.size()[1],
        fp.display(),
        lp.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_files_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let f = Tensor::from_slice(&[0.5f32, -1.0, 2.25, 3.0, 4.5, -0.125]).view([3, 2]);
        let l = Tensor::from_slice(&[2i64, 0, 7]);
        let (fp, lp) = write_embeddings(dir.path(), "test", &f, &l).unwrap();
        let bytes = std::fs::read(&fp).unwrap();
        let npy = npyz::NpyFile::new(bytes.as_slice()).unwrap();
        assert_eq!(npy.shape(), &[3, 2]);
        assert_eq!(
            npy.into_vec::<f32>().unwrap(),
            vec![0.5, -1.0, 2.25, 3.0, 4.5, -0.125]
        );
        let bytes = std::fs::read(&lp).unwrap();
        let npy = npyz::NpyFile::new(bytes.as_slice()).unwrap();
        assert_eq!(npy.shape(), &[3]);
        assert_eq!(npy.into_vec::<i64>().unwrap(), vec![2, 0, 7]);
    }
}
