//! WebDataset shards (`wds:PATH`): tar files of samples, each sample the members that share
//! a key (`000123.jpg`, `000123.cls`, `000123.json`), as the webdataset library's
//! `ShardWriter` writes them.
//!
//! `PATH` is a folder of `.tar` files, one `.tar` file, or a brace pattern such as
//! `shards/train-{000000..000127}.tar`. Opening the shards reads their tar headers only
//! (seeking past the data) and the small label members: an index of where each sample's
//! image lies. An image is then read with one positioned read when a batch needs it, so a
//! streamed run draws the same global permutation as an image folder does (exact resume,
//! data-parallel ranks reading their slice of it).
//!
//! The image is the member with extension `jpg`, `jpeg` or `png` (or another image format
//! the decoder reads: `webp`, `bmp`, `ppm`, `tif`, `tiff`); the label is the integer text of
//! `cls`, else the `label` or `cls` field of `json`; samples without either are unlabeled.
//! Shards whose names start with `train`, `test`, `val` or `validation` form those splits;
//! without such names, every fifth labeled sample is held out as the test split.

use super::Dataset;
#[cfg(test)]
use super::stream::expand_braces;
use super::stream::{Source, list_files, split_of_name, streamed_dataset};
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Image extensions, in the order a sample's image is chosen.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff"];
/// The largest label member read (a `cls` or `json`).
const MAX_LABEL_BYTES: u64 = 1 << 16;

/// One sample's image in a shard.
#[derive(Debug, Clone)]
struct Member {
    shard: u32,
    offset: u64,
    size: u64,
    /// `key.ext`, for messages.
    name: Box<str>,
}

/// The images of a set of shards, by index.
pub struct WdsSource {
    shards: Vec<PathBuf>,
    members: Vec<Member>,
}

impl Source for WdsSource {
    fn len(&self) -> usize {
        self.members.len()
    }
    fn describe(&self, i: usize) -> String {
        let m = &self.members[i];
        format!(
            "{}: {} (at byte {})",
            self.shards[m.shard as usize].display(),
            m.name,
            m.offset
        )
    }
    fn read(&self, i: usize) -> Result<Vec<u8>> {
        let m = &self.members[i];
        let path = &self.shards[m.shard as usize];
        let file =
            File::open(path).with_context(|| format!("cannot open shard {}", path.display()))?;
        let mut buf = vec![0u8; m.size as usize];
        file.read_exact_at(&mut buf, m.offset)
            .with_context(|| format!("cannot read {}", self.describe(i)))?;
        Ok(buf)
    }
}

/// The shard files `path` names (see `stream::list_files`).
pub fn shard_files(path: &str) -> Result<Vec<PathBuf>> {
    list_files(path, "tar", "shard")
}

/// The sample key and extension of a member's path, as webdataset splits them: the key is
/// the path up to the first '.' of its file name.
fn key_and_extension(path: &str) -> (&str, &str) {
    let base = path.rfind('/').map_or(0, |i| i + 1);
    match path[base..].find('.') {
        Some(dot) => (&path[..base + dot], &path[base + dot + 1..]),
        None => (path, ""),
    }
}

/// A label from a `cls` member (an integer as text) or a `json` one (its "label" or "cls").
fn parse_label(ext: &str, bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    match ext {
        "cls" | "cls2" | "class" | "label" => text.parse().ok(),
        "json" => {
            let v: serde_json::Value = serde_json::from_str(text).ok()?;
            ["label", "cls"].iter().find_map(|k| v.get(*k)?.as_i64())
        }
        _ => None,
    }
}

/// A sample of a shard, as its index keeps it.
#[derive(Debug)]
struct Sample {
    image: Option<Member>,
    label: Option<i64>,
    key: String,
    members: Vec<String>,
}

/// Reads the tar headers (and label members) of `path`: its samples in order.
fn index_shard(shard: u32, path: &Path) -> Result<Vec<Sample>> {
    let file = File::open(path).with_context(|| format!("cannot open shard {}", path.display()))?;
    let len = file.metadata()?.len();
    let mut archive = tar::Archive::new(file);
    let mut samples: Vec<Sample> = Vec::new();
    let entries = archive
        .entries_with_seek()
        .with_context(|| format!("{}: not a tar file", path.display()))?;
    for entry in entries {
        let mut entry = entry
            .with_context(|| format!("{}: a damaged or truncated tar header", path.display()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let (offset, size) = (entry.raw_file_position(), entry.size());
        if offset + size > len {
            bail!(
                "{}: member {name} ({size} bytes at byte {offset}) runs past the end of the file ({len} bytes): the shard is truncated",
                path.display()
            );
        }
        let (key, ext) = key_and_extension(&name);
        if samples.last().is_none_or(|s| s.key != key) {
            samples.push(Sample {
                image: None,
                label: None,
                key: key.to_string(),
                members: Vec::new(),
            });
        }
        let sample = samples.last_mut().expect("pushed above");
        sample.members.push(ext.to_string());
        let ext_lower = ext.to_ascii_lowercase();
        let rank = |e: &str| IMAGE_EXTENSIONS.iter().position(|x| *x == e);
        if let Some(r) = rank(&ext_lower) {
            let better = match &sample.image {
                None => true,
                Some(m) => rank(key_and_extension(&m.name).1).is_none_or(|old| r < old),
            };
            if better {
                sample.image = Some(Member {
                    shard,
                    offset,
                    size,
                    name: name.clone().into(),
                });
            }
        } else if matches!(
            ext_lower.as_str(),
            "cls" | "cls2" | "class" | "label" | "json"
        ) && size <= MAX_LABEL_BYTES
        {
            let mut bytes = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut bytes)
                .with_context(|| format!("{}: cannot read {name}", path.display()))?;
            if let Some(l) = parse_label(&ext_lower, &bytes)
                && (sample.label.is_none() || ext_lower != "json")
            {
                sample.label = Some(l);
            }
        }
    }
    Ok(samples)
}

/// Opens the shards of `path` as a data set of streamed images decoded to `size`.
pub fn load(path: &str, size: usize, skip_bad: bool) -> Result<Dataset> {
    let shards = shard_files(path)?;
    let indexed: Vec<Vec<Sample>> = shards
        .par_iter()
        .enumerate()
        .map(|(i, p)| index_shard(i as u32, p))
        .collect::<Result<_>>()?;
    // Samples without an image: an error, or reported and left out.
    let mut kept: Vec<(usize, Member, Option<i64>)> = Vec::new(); // (shard, image, label)
    for (s, samples) in indexed.into_iter().enumerate() {
        for sample in samples {
            match sample.image {
                Some(m) => kept.push((s, m, sample.label)),
                None => {
                    let msg = format!(
                        "{}: sample {} has no image member (it holds: {})",
                        shards[s].display(),
                        sample.key,
                        sample.members.join(", ")
                    );
                    if !skip_bad {
                        bail!("{msg} (set bad_images = \"skip\" to leave such samples out)");
                    }
                    eprintln!("warning: skipped {msg}");
                }
            }
        }
    }
    if kept.is_empty() {
        bail!("{path}: the shards hold no samples with an image");
    }
    let labels: Vec<Option<i64>> = kept.iter().map(|k| k.2).collect();
    let shard_of: Vec<usize> = kept.iter().map(|k| k.0).collect();
    let source: Arc<dyn Source> = Arc::new(WdsSource {
        shards: shards.clone(),
        members: kept.into_iter().map(|k| k.1).collect(),
    });
    streamed_dataset(
        format!("wds:{path}"),
        source,
        labels,
        |i| split_of_name(&shards[shard_of[i]]),
        size,
        skip_bad,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_ranges_with_their_padding_and_lists() {
        assert_eq!(
            expand_braces("s/train-{000..002}.tar").unwrap(),
            ["s/train-000.tar", "s/train-001.tar", "s/train-002.tar"]
        );
        assert_eq!(
            expand_braces("{a,b}-{1..2}").unwrap(),
            ["a-1", "a-2", "b-1", "b-2"]
        );
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        assert!(expand_braces("x-{3..1}.tar").is_err());
        assert!(expand_braces("x-{1..2.tar").is_err());
    }

    #[test]
    fn keys_and_extensions_split_at_the_first_dot_of_the_file_name() {
        assert_eq!(
            key_and_extension("a/b.c/000123.seg.png"),
            ("a/b.c/000123", "seg.png")
        );
        assert_eq!(key_and_extension("000001.jpg"), ("000001", "jpg"));
        assert_eq!(key_and_extension("README"), ("README", ""));
        assert_eq!(parse_label("cls", b" 7\n"), Some(7));
        assert_eq!(parse_label("json", br#"{"label": 3, "x": 1}"#), Some(3));
        assert_eq!(parse_label("json", b"{}"), None);
        assert_eq!(split_of_name(Path::new("d/train-00001.tar")), Some(true));
        assert_eq!(split_of_name(Path::new("validation_3.tar")), Some(false));
        assert_eq!(split_of_name(Path::new("shard-1.tar")), None);
    }
}
