//! Data sets (u8 images with labels, split into train and test, and optionally an
//! unlabeled split for pretraining), segmentation data (images with masks: `seg`,
//! `scenes`) and the batch loader.

pub mod bench;
pub mod cifar;
pub mod decode;
pub mod folder;
#[cfg(test)]
mod fuzz_tests;
pub mod idx;
pub mod inspect;
pub mod loader;
pub mod pack;
pub mod parquet;

pub mod seg;
pub mod stl;
pub mod stream;
pub mod wds;

pub use loader::{Batch, Loader, epoch_order};

use crate::config::{BadImages, Cifar100Labels, DataKeys};
use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use std::path::{Path, PathBuf};

/// Where Debian's `dataset-fashion-mnist` package puts the IDX files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// A split's images with one label each (-1 = no label), as `[C, H, W]` u8 images of one
/// `shape`: held in memory (the small fixed-size sets: IDX, CIFAR, STL-10), or streamed
/// from a `Source` and decoded when a batch needs them (image folders, WebDataset shards,
/// Parquet; `shape` is then the size they are decoded to, `[3, image_size, image_size]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub labels: Vec<i64>,
    /// `[C, H, W]`
    pub shape: [usize; 3],
    pixels: Pixels,
}

#[derive(Debug, Clone, PartialEq)]
enum Pixels {
    /// `[N, C, H, W]` row-major.
    Memory(Vec<u8>),
    Streamed(stream::Streamed),
}

impl Split {
    pub fn new(images: Vec<u8>, labels: Vec<i64>, shape: [usize; 3]) -> Result<Split> {
        let per = shape.iter().product::<usize>();
        if per == 0 || images.len() != per * labels.len() {
            bail!(
                "{} image bytes do not hold {} images of shape {shape:?}",
                images.len(),
                labels.len()
            );
        }
        Ok(Split {
            labels,
            shape,
            pixels: Pixels::Memory(images),
        })
    }
    /// The images of `stream` with their `labels`, decoded to `[3, size, size]`.
    pub fn streamed(stream: stream::Streamed, labels: Vec<i64>, size: usize) -> Split {
        assert_eq!(stream.len(), labels.len(), "one label per streamed image");
        Split {
            labels,
            shape: [3, size, size],
            pixels: Pixels::Streamed(stream),
        }
    }
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }
    /// The `[N, C, H, W]` bytes of an in-memory split; None for a streamed one.
    pub fn memory(&self) -> Option<&[u8]> {
        match &self.pixels {
            Pixels::Memory(m) => Some(m),
            Pixels::Streamed(_) => None,
        }
    }
    /// The images' source, for a streamed split.
    pub fn stream(&self) -> Option<&stream::Streamed> {
        match &self.pixels {
            Pixels::Memory(_) => None,
            Pixels::Streamed(s) => Some(s),
        }
    }
    /// Image `i` of an in-memory split (the data sets held in memory, and the code made
    /// only for them: segmentation, the parsers); see `fixed` for any split.
    pub fn image(&self, i: usize) -> &[u8] {
        let Some(m) = self.memory() else {
            panic!("Split::image on a streamed split: use Split::fixed");
        };
        let n = self.image_len();
        &m[i * n..(i + 1) * n]
    }
    /// Image `i` as `[C, H, W]` bytes of `shape`: as stored, or for a streamed split decoded
    /// as the evaluation sees it (`stream::fixed_image`).
    pub fn fixed(&self, i: usize) -> Result<std::borrow::Cow<'_, [u8]>> {
        match &self.pixels {
            Pixels::Memory(_) => Ok(std::borrow::Cow::Borrowed(self.image(i))),
            Pixels::Streamed(s) => Ok(std::borrow::Cow::Owned(s.fixed(i, self.shape[1])?.data)),
        }
    }
    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Split {
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        let pixels = match &self.pixels {
            Pixels::Memory(_) => {
                let mut images = Vec::with_capacity(indices.len() * self.image_len());
                for &i in indices {
                    images.extend_from_slice(self.image(i));
                }
                Pixels::Memory(images)
            }
            Pixels::Streamed(s) => Pixels::Streamed(s.select(indices)),
        };
        Split {
            labels,
            shape: self.shape,
            pixels,
        }
    }
    /// The number of images `subset(n, _)` holds.
    pub fn subset_len(&self, n: usize) -> usize {
        if n == 0 {
            self.len()
        } else {
            n.min(self.len())
        }
    }
    /// A class-balanced seeded subset: `fraction` of each class's images (rounded, in their
    /// order), the same whatever else the run sets, so that every method is fine-tuned on
    /// the same images. All of them for a fraction of 1; an error naming the class when the
    /// fraction leaves one empty.
    pub fn balanced_subset(
        &self,
        fraction: f64,
        seed: u64,
        class_names: &[String],
    ) -> Result<Split> {
        if fraction >= 1.0 {
            return Ok(self.clone());
        }
        let classes = self.labels.iter().copied().max().map_or(0, |m| m + 1) as usize;
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
        for (i, &l) in self.labels.iter().enumerate() {
            if l >= 0 {
                by_class[l as usize].push(i);
            }
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xba1a_4ced);
        let mut chosen = Vec::new();
        for (c, mut members) in by_class.into_iter().enumerate() {
            let k = (fraction * members.len() as f64).round() as usize;
            if k == 0 && !members.is_empty() {
                let name = class_names.get(c).cloned().unwrap_or_else(|| c.to_string());
                bail!(
                    "{:.3}% of the labels leaves class '{name}' ({} training images) without any; use a larger fraction",
                    100.0 * fraction,
                    members.len()
                );
            }
            members.shuffle(&mut rng);
            members.truncate(k);
            chosen.extend(members);
        }
        chosen.sort_unstable();
        Ok(self.select(&chosen))
    }
    /// A seeded random subset of `n` images (all of them, in order, when `n` is 0 or too big).
    pub fn subset(&self, n: usize, seed: u64) -> Split {
        if n == 0 || n >= self.len() {
            return self.clone();
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            seed ^ 0x5eed_5b5e,
        ));
        idx.truncate(n);
        idx.sort_unstable();
        self.select(&idx)
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    /// Labeled splits (for the evaluation; also for pretraining when `unlabeled` is None).
    pub train: Split,
    pub test: Split,
    /// Images without labels (label -1) to pretrain on instead of `train`: STL-10's
    /// unlabeled split, or a flat image folder.
    pub unlabeled: Option<Split>,
    pub num_classes: usize,
    pub class_names: Vec<String>,
}

impl Dataset {
    /// The split that pretraining uses: `unlabeled` when there is one, else `train`.
    pub fn pretrain_split(&self) -> &Split {
        self.unlabeled.as_ref().unwrap_or(&self.train)
    }

    /// Fails unless there are labeled train and test images, as the evaluation needs.
    pub fn require_labels(&self) -> Result<()> {
        if self.num_classes == 0 || self.train.is_empty() || self.test.is_empty() {
            bail!(
                "{} has no labeled train and test images ({} / {}), so it cannot be evaluated; \
                 use class folders for an image folder",
                self.name,
                self.train.len(),
                self.test.len()
            );
        }
        Ok(())
    }
}

/// `"0"`, `"1"`, ... as class names.
pub fn numbered_names(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

/// `dir` itself when it holds `marker`, else its subfolder `sub` when that does (the folder
/// a data set's archive unpacks to); `dir` when neither does (the caller names the missing file).
pub fn find_dir_with(dir: &Path, sub: &str, marker: &str) -> Result<PathBuf> {
    if !dir.is_dir() {
        bail!("data folder {} does not exist", dir.display());
    }
    if !dir.join(marker).exists() && dir.join(sub).join(marker).exists() {
        return Ok(dir.join(sub));
    }
    Ok(dir.to_path_buf())
}

pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// A parsed `--data KIND[:PATH]`.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSpec {
    FashionMnist(PathBuf),
    Mnist(PathBuf),
    Cifar10(PathBuf),
    Cifar100(PathBuf),
    Stl10(PathBuf),
    Folder(PathBuf),
    /// WebDataset shards: a folder, a `.tar` file or a brace pattern.
    Wds(String),
    /// Hugging Face Parquet files: a file, a folder or a brace pattern.
    Parquet(String),
}

pub const DATA_KINDS: &str = "fashion-mnist, fashion-mnist:DIR, mnist:DIR, cifar10:DIR, cifar100:DIR, stl10:DIR, folder:DIR, wds:PATH, parquet:PATH";

/// The config keys that shape how a data set is read (see `Config` for their meaning).
#[derive(Debug, Clone, PartialEq)]
pub struct DataOptions {
    /// CIFAR-100: the 100 fine labels (true) or the 20 coarse ones.
    pub cifar100_fine: bool,
    /// STL-10: unlabeled images to read for pretraining (0 = pretrain on the train split).
    pub stl10_unlabeled: usize,
    pub folder: folder::FolderOptions,
    /// Seeds the choice of the STL-10 unlabeled subset.
    pub seed: u64,
}

impl Default for DataOptions {
    fn default() -> Self {
        let cfg = crate::config::Config::default();
        DataOptions::new(&cfg.data, cfg.train.seed)
    }
}

impl DataOptions {
    pub fn new(keys: &DataKeys, seed: u64) -> DataOptions {
        DataOptions {
            cifar100_fine: keys.cifar100_labels == Cifar100Labels::Fine,
            stl10_unlabeled: keys.stl10_unlabeled,
            folder: folder::FolderOptions {
                size: keys.image_size,
                skip_bad: keys.bad_images == BadImages::Skip,
            },
            seed,
        }
    }
}

/// The data set a config names (`data`), read as its data keys say.
pub fn load(keys: &DataKeys, seed: u64) -> Result<Dataset> {
    let spec = DataSpec::parse(&keys.source).context("option data")?;
    spec.load(&DataOptions::new(keys, seed))
}

impl DataSpec {
    pub fn parse(s: &str) -> Result<DataSpec> {
        let (kind, path) = match s.split_once(':') {
            Some((k, p)) => (k, Some(p)),
            None => (s, None),
        };
        let make: fn(PathBuf) -> DataSpec = match kind {
            "fashion-mnist" if path.is_none() => {
                return Ok(DataSpec::FashionMnist(DEBIAN_FASHION_MNIST.into()));
            }
            "fashion-mnist" => DataSpec::FashionMnist,
            "mnist" => DataSpec::Mnist,
            "cifar10" => DataSpec::Cifar10,
            "cifar100" => DataSpec::Cifar100,
            "stl10" => DataSpec::Stl10,
            "folder" => DataSpec::Folder,
            "wds" | "parquet" => {
                return match path {
                    Some(p) if !p.is_empty() && kind == "wds" => Ok(DataSpec::Wds(p.into())),
                    Some(p) if !p.is_empty() => Ok(DataSpec::Parquet(p.into())),
                    _ => bail!("data '{s}': {kind} needs a path, as {kind}:PATH"),
                };
            }
            _ => bail!("data '{s}' is not understood; expected one of: {DATA_KINDS}"),
        };
        match path {
            Some(p) if !p.is_empty() => Ok(make(p.into())),
            _ => bail!("data '{s}': {kind} needs a folder, as {kind}:DIR"),
        }
    }

    pub fn load(&self, opts: &DataOptions) -> Result<Dataset> {
        match self {
            DataSpec::FashionMnist(dir) => {
                let names = FASHION_MNIST_CLASSES
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                load_mnist_dir("fashion-mnist", dir, names)
            }
            DataSpec::Mnist(dir) => load_mnist_dir("mnist", dir, numbered_names(10)),
            DataSpec::Cifar10(dir) => cifar::load_cifar10(dir),
            DataSpec::Cifar100(dir) => cifar::load_cifar100(dir, opts.cifar100_fine),
            DataSpec::Stl10(dir) => stl::load(dir, opts.stl10_unlabeled, opts.seed),
            DataSpec::Folder(dir) => folder::load(dir, opts.folder),
            DataSpec::Wds(path) => wds::load(path, opts.folder.size, opts.folder.skip_bad),
            DataSpec::Parquet(path) => parquet::load(path, opts.folder.size, opts.folder.skip_bad),
        }
    }
}

/// Loads the four standard IDX files from `dir` (each raw or with `.gz`).
pub fn load_mnist_dir(name: &str, dir: &Path, class_names: Vec<String>) -> Result<Dataset> {
    if !dir.is_dir() {
        let hint = if dir == Path::new(DEBIAN_FASHION_MNIST) {
            " (install Debian's package dataset-fashion-mnist, or run scripts/setup.sh)"
        } else {
            ""
        };
        bail!("data folder {} does not exist{hint}", dir.display());
    }
    let find = |stem: &str| -> Result<PathBuf> {
        for cand in [format!("{stem}.gz"), stem.to_string()] {
            let p = dir.join(&cand);
            if p.is_file() {
                return Ok(p);
            }
        }
        bail!("{}: missing {stem} (or {stem}.gz)", dir.display())
    };
    let num_classes = class_names.len();
    let split = |img: &str, lab: &str| -> Result<Split> {
        let (ip, lp) = (find(img)?, find(lab)?);
        let images = idx::read_idx(&ip)?;
        let labels = idx::read_idx(&lp)?;
        if images.dims.len() != 3 {
            bail!(
                "{}: expected 3 dimensions [N, H, W], found {:?}",
                ip.display(),
                images.dims
            );
        }
        if labels.dims.len() != 1 {
            bail!(
                "{}: expected 1 dimension [N], found {:?}",
                lp.display(),
                labels.dims
            );
        }
        if images.dims[0] != labels.dims[0] {
            bail!(
                "{} holds {} images but {} holds {} labels",
                ip.display(),
                images.dims[0],
                lp.display(),
                labels.dims[0]
            );
        }
        if let Some(pos) = labels.data.iter().position(|&l| l as usize >= num_classes) {
            bail!(
                "{}: label {} at index {pos} is out of range 0..{num_classes}",
                lp.display(),
                labels.data[pos]
            );
        }
        let labels = labels.data.iter().map(|&l| l as i64).collect();
        Split::new(images.data, labels, [1, images.dims[1], images.dims[2]])
            .with_context(|| format!("{}", ip.display()))
    };
    let train = split("train-images-idx3-ubyte", "train-labels-idx1-ubyte")?;
    let test = split("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?;
    if train.shape != test.shape {
        bail!(
            "{}: train images are {:?} but test images are {:?}",
            dir.display(),
            train.shape,
            test.shape
        );
    }
    Ok(Dataset {
        name: name.to_string(),
        train,
        test,
        unlabeled: None,
        num_classes,
        class_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn write_mnist_dir(dir: &Path, n_train: usize, n_test: usize, bad_label: bool) {
        let mk = |n: usize, off: u8| {
            let imgs: Vec<u8> = (0..n * 4 * 4)
                .map(|i| (i as u8).wrapping_add(off))
                .collect();
            let labs: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
            (imgs, labs)
        };
        let (ti, mut tl) = mk(n_train, 0);
        let (vi, vl) = mk(n_test, 100);
        if bad_label {
            tl[1] = 10;
        }
        let w = |name: &str, b: Vec<u8>| std::fs::write(dir.join(name), b).unwrap();
        w(
            "train-images-idx3-ubyte",
            idx::encode_idx(&[n_train, 4, 4], &ti),
        );
        w("train-labels-idx1-ubyte", idx::encode_idx(&[n_train], &tl));
        w(
            "t10k-images-idx3-ubyte",
            idx::encode_idx(&[n_test, 4, 4], &vi),
        );
        w("t10k-labels-idx1-ubyte", idx::encode_idx(&[n_test], &vl));
    }

    #[test]
    fn loads_an_mnist_folder() {
        let dir = tempfile::tempdir().unwrap();
        write_mnist_dir(dir.path(), 12, 5, false);
        let spec = DataSpec::parse(&format!("mnist:{}", dir.path().display())).unwrap();
        let d = spec.load(&DataOptions::default()).unwrap();
        assert_eq!(
            (d.train.len(), d.test.len(), d.train.shape),
            (12, 5, [1, 4, 4])
        );
        assert_eq!(d.train.image(1), &(16u8..32).collect::<Vec<_>>()[..]);
        assert_eq!(d.train.labels[11], 1);
        assert_eq!(d.test.image(0)[0], 100);
    }

    #[test]
    fn bad_folders_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_mnist_dir(dir.path(), 12, 5, true);
        let e = format!(
            "{:#}",
            load_mnist_dir("mnist", dir.path(), vec!["x".into(); 10]).unwrap_err()
        );
        assert!(
            e.contains("train-labels-idx1-ubyte") && e.contains("out of range"),
            "{e}"
        );
        std::fs::remove_file(dir.path().join("t10k-images-idx3-ubyte")).unwrap();
        write_mnist_dir(dir.path(), 12, 5, false);
        std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte")).unwrap();
        let e = format!(
            "{:#}",
            load_mnist_dir("mnist", dir.path(), vec!["x".into(); 10]).unwrap_err()
        );
        assert!(e.contains("missing t10k-labels-idx1-ubyte"), "{e}");
        let e = format!(
            "{:#}",
            DataSpec::parse("mnist:/no/such/dir")
                .unwrap()
                .load(&DataOptions::default())
                .unwrap_err()
        );
        assert!(e.contains("/no/such/dir"), "{e}");
        assert!(DataSpec::parse("cifar11:x").is_err());
        assert!(DataSpec::parse("mnist").is_err());
    }

    #[test]
    fn balanced_subsets_keep_each_classs_share_and_refuse_to_empty_one() {
        // 3 classes of 10, 20 and 30 images.
        let labels: Vec<i64> = (0..60)
            .map(|i| {
                if i < 10 {
                    0
                } else if i < 30 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let s = Split::new((0..60u8).collect(), labels, [1, 1, 1]).unwrap();
        let names = numbered_names(3);
        let a = s.balanced_subset(0.1, 7, &names).unwrap();
        let count = |sp: &Split, c: i64| sp.labels.iter().filter(|&&l| l == c).count();
        assert_eq!((count(&a, 0), count(&a, 1), count(&a, 2)), (1, 2, 3));
        assert_eq!(a, s.balanced_subset(0.1, 7, &names).unwrap(), "seeded");
        assert_ne!(a, s.balanced_subset(0.1, 8, &names).unwrap());
        // Each kept image is itself, with its own label.
        for i in 0..a.len() {
            let orig = a.image(i)[0] as usize;
            assert_eq!(a.labels[i], s.labels[orig]);
        }
        assert_eq!(s.balanced_subset(1.0, 7, &names).unwrap(), s);
        let e = s.balanced_subset(0.04, 7, &names).unwrap_err().to_string();
        assert!(
            e.contains("class '0'") && e.contains("10 training images"),
            "{e}"
        );
    }

    #[test]
    fn subset_is_seeded_and_sized() {
        let s = Split::new((0..20u8).collect(), (0..20).collect(), [1, 1, 1]).unwrap();
        let a = s.subset(5, 3);
        assert_eq!(a.len(), 5);
        assert_eq!(a, s.subset(5, 3));
        assert_ne!(a, s.subset(5, 4));
        for i in 0..5 {
            assert_eq!(a.image(i)[0] as i64, a.labels[i]);
        }
    }
}
