//! safetensors files of tch tensors: written atomically (a temporary file of a name unique
//! to the writer, fsync, rename, fsync of the folder), so a crash never leaves a
//! half-written file under the final name and a power loss cannot lose the rename, and read
//! back with their metadata. A leaf: checkpoints and the PyTorch export write through here.

use crate::faults;
use anyhow::{Context, Result, bail};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Kind, Tensor};

/// The suffix of the temporary files written next to their final name.
pub const TEMP_SUFFIX: &str = ".tmp";

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
    write_atomic(path, &bytes)
}

/// `NAME.PID-N.tmp` next to `path`: unique to this process and this call, so that two
/// writers (two processes, or two threads of one) never write into one temporary file.
fn temp_path(path: &Path) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!("{name}.{}-{n}{TEMP_SUFFIX}", std::process::id()))
}

/// The folder holding `path` ("." for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the entries of `dir` (a rename into it) durable: fsync of the folder itself.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync folder {}", dir.display()))
}

/// Moves the finished temporary file `tmp` to `path` and syncs the folder; on failure the
/// temporary file is removed.
fn commit(tmp: &Path, path: &Path, written: Result<()>) -> Result<()> {
    let done = written.and_then(|()| {
        std::fs::rename(tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    });
    if done.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    done?;
    sync_dir(folder_of(path))
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let written = faults::write_all(&mut f, bytes, "atomic-write")
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()));
    drop(f);
    commit(&tmp, path, written)
}

/// Gives the file `src` a second name `dst`, atomically (replacing `dst`): a hard link when
/// the file system has them (no copy: `src` is never written in place, only replaced by a
/// rename, so the two names keep the same bytes), else a synced copy.
pub fn link_atomic(src: &Path, dst: &Path) -> Result<()> {
    let tmp = temp_path(dst);
    let linked = std::fs::hard_link(src, &tmp)
        .or_else(|_| {
            std::fs::copy(src, &tmp)?;
            std::fs::File::open(&tmp)?.sync_all()
        })
        .with_context(|| format!("cannot copy {} to {}", src.display(), tmp.display()));
    commit(&tmp, dst, linked)
}

/// Named tensors, in file order.
pub type NamedTensors = Vec<(String, Tensor)>;

/// Reads all tensors and the metadata of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<(NamedTensors, HashMap<String, String>)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn temporary_names_are_unique_per_process_and_call() {
        let p = Path::new("run/checkpoint.safetensors");
        let (a, b) = (temp_path(p), temp_path(p));
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        let pid = std::process::id();
        assert!(
            a.parent() == p.parent()
                && name.starts_with(&format!("checkpoint.safetensors.{pid}-"))
                && name.ends_with(TEMP_SUFFIX),
            "{name}"
        );
    }

    #[test]
    fn atomic_writes_leave_only_the_file_and_a_link_keeps_the_old_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            dir.path().join("a.safetensors"),
            dir.path().join("b.safetensors"),
        );
        let t = Tensor::from_slice(&[1.5f32, -2.0, 3.25]).view([3, 1]);
        write_safetensors_atomic(&a, &[("x".into(), t.shallow_clone())], HashMap::new()).unwrap();
        assert_eq!(names_in(dir.path()), ["a.safetensors"]);
        link_atomic(&a, &b).unwrap();
        // Replacing `a` (as the rolling checkpoint is) leaves `b` as it was.
        write_safetensors_atomic(&a, &[("x".into(), &t * 2.0)], HashMap::new()).unwrap();
        assert_eq!(names_in(dir.path()), ["a.safetensors", "b.safetensors"]);
        let (kept, _) = read_safetensors(&b).unwrap();
        assert!(kept[0].1.equal(&t));
        let (now, _) = read_safetensors(&a).unwrap();
        assert!(now[0].1.equal(&(&t * 2.0)));
        // A write into a missing folder fails, naming the temporary file, and leaves nothing.
        let e = write_atomic(&dir.path().join("no/such.safetensors"), b"x").unwrap_err();
        assert!(format!("{e:#}").contains("cannot create"), "{e:#}");
        let e = link_atomic(&dir.path().join("missing"), &b).unwrap_err();
        assert!(format!("{e:#}").contains("missing"), "{e:#}");
        assert_eq!(names_in(dir.path()), ["a.safetensors", "b.safetensors"]);
    }
}
