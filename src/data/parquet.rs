//! Parquet files in the Hugging Face datasets layout (`parquet:PATH`): an `image` column,
//! a struct of `bytes` (the encoded image) and `path`, as the `Image` feature writes it (or
//! a plain binary column named `image`, `img`, `jpg` or `png`), and an integer `label` (or
//! `labels`, `cls`) column; files named `train-*.parquet`, `test-*`, `validation-*` (or in
//! folders so named) form those splits, as `datasets` writes them.
//!
//! `PATH` is one file, a folder (searched recursively for `.parquet` files) or a brace
//! pattern. Opening reads the footers and the label column; an image is read when a batch
//! needs it, from its row group's column chunk, skipping the pages before it without
//! decompressing them (the `parquet` crate's record skipping), so a streamed run draws the
//! same global permutation as an image folder does. Each thread keeps its place in the
//! last column chunk it read, so rows read in order (the evaluation's) decode each page
//! once.

use super::Dataset;
use super::stream::{Source, list_files, split_of_name, streamed_dataset};
use anyhow::{Context, Result, anyhow, bail};
use parquet::basic::Type as Physical;
use parquet::column::reader::{
    ColumnReader, ColumnReaderImpl, get_column_reader, get_typed_column_reader,
};
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::{SerializedFileReader, SerializedPageReader};
use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Names of a plain binary image column, and of the label column.
const IMAGE_COLUMNS: &[&str] = &["image", "img", "jpg", "png"];
const LABEL_COLUMNS: &[&str] = &["label", "labels", "cls"];

struct ParquetFile {
    path: PathBuf,
    file: Arc<File>,
    meta: Arc<ParquetMetaData>,
    /// The leaf column of the image bytes.
    image: usize,
}

/// A row: (file, row group, row in the group).
#[derive(Debug, Clone, Copy)]
struct Row {
    file: u32,
    group: u32,
    row: u32,
}

pub struct ParquetSource {
    /// Tells sources apart in the threads' cursors.
    id: usize,
    files: Vec<ParquetFile>,
    rows: Vec<Row>,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A thread's place in a column chunk: the reader is at `next` of (source, file, group).
struct Cursor {
    key: (usize, u32, u32),
    next: usize,
    reader: ColumnReaderImpl<ByteArrayType>,
}

thread_local! {
    static CURSOR: RefCell<Option<Cursor>> = const { RefCell::new(None) };
}

impl ParquetSource {
    fn column_reader(
        &self,
        f: &ParquetFile,
        group: usize,
    ) -> Result<ColumnReaderImpl<ByteArrayType>> {
        let rg = f.meta.row_group(group);
        let chunk = rg.column(f.image);
        let pages = SerializedPageReader::new(f.file.clone(), chunk, rg.num_rows() as usize, None)?;
        let reader = get_column_reader(chunk.column_descr_ptr(), Box::new(pages));
        match reader {
            ColumnReader::ByteArrayColumnReader(_) => Ok(get_typed_column_reader(reader)),
            _ => bail!("{}: the image column does not hold bytes", f.path.display()),
        }
    }
}

impl Source for ParquetSource {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn describe(&self, i: usize) -> String {
        let r = self.rows[i];
        format!(
            "{}: row {} (row group {}, row {})",
            self.files[r.file as usize].path.display(),
            self.files[r.file as usize].meta.row_groups()[..r.group as usize]
                .iter()
                .map(|g| g.num_rows() as usize)
                .sum::<usize>()
                + r.row as usize,
            r.group,
            r.row
        )
    }
    fn read(&self, i: usize) -> Result<Vec<u8>> {
        let r = self.rows[i];
        let f = &self.files[r.file as usize];
        let key = (self.id, r.file, r.group);
        let row = r.row as usize;
        CURSOR.with(|cell| -> Result<Vec<u8>> {
            let mut slot = cell.borrow_mut();
            let reuse = matches!(&*slot, Some(c) if c.key == key && c.next <= row);
            if !reuse {
                *slot = Some(Cursor {
                    key,
                    next: 0,
                    reader: self.column_reader(f, r.group as usize)?,
                });
            }
            let cursor = slot.as_mut().expect("set above");
            let what = || self.describe(i);
            let result = (|| -> Result<Vec<u8>> {
                let gap = row - cursor.next;
                if gap > 0 && cursor.reader.skip_records(gap)? != gap {
                    bail!("the row group ends before this row");
                }
                let (mut defs, mut values) =
                    (Vec::with_capacity(1), Vec::<ByteArray>::with_capacity(1));
                let (records, _, _) =
                    cursor
                        .reader
                        .read_records(1, Some(&mut defs), None, &mut values)?;
                if records != 1 {
                    bail!("the row group ends before this row");
                }
                cursor.next = row + 1;
                let max_def = f
                    .meta
                    .row_group(r.group as usize)
                    .column(f.image)
                    .column_descr()
                    .max_def_level();
                match (defs.first(), values.pop()) {
                    (Some(&d), Some(v)) if d == max_def => Ok(v.data().to_vec()),
                    (None, Some(v)) => Ok(v.data().to_vec()),
                    _ => bail!("the row has no image bytes (null)"),
                }
            })();
            if result.is_err() {
                *slot = None;
            }
            result.with_context(what)
        })
    }
}

/// The `.parquet` files `path` names (see `stream::list_files`).
pub fn parquet_files(path: &str) -> Result<Vec<PathBuf>> {
    list_files(path, "parquet", "Parquet file")
}

/// The leaf column of the image bytes: `image.bytes` (or another struct's `bytes` beside a
/// `path`), else a binary column named as in `IMAGE_COLUMNS`.
fn image_column(meta: &ParquetMetaData) -> Option<usize> {
    let cols = meta.file_metadata().schema_descr().columns();
    let path = |i: usize| cols[i].path().parts().to_vec();
    (0..cols.len())
        .find(|&i| path(i) == ["image", "bytes"])
        .or_else(|| (0..cols.len()).find(|&i| path(i).len() == 2 && path(i)[1] == "bytes"))
        .or_else(|| {
            (0..cols.len()).find(|&i| {
                path(i).len() == 1
                    && IMAGE_COLUMNS.contains(&path(i)[0].as_str())
                    && cols[i].physical_type() == Physical::BYTE_ARRAY
            })
        })
}

fn label_column(meta: &ParquetMetaData) -> Option<usize> {
    let cols = meta.file_metadata().schema_descr().columns();
    LABEL_COLUMNS.iter().find_map(|name| {
        cols.iter().position(|c| {
            c.path().parts() == [name.to_string()]
                && matches!(c.physical_type(), Physical::INT32 | Physical::INT64)
        })
    })
}

/// Every row's label (None where null) of one row group's integer column.
fn read_labels(f: &ParquetFile, group: usize, col: usize) -> Result<Vec<Option<i64>>> {
    let rg = f.meta.row_group(group);
    let n = rg.num_rows() as usize;
    let chunk = rg.column(col);
    let pages = SerializedPageReader::new(f.file.clone(), chunk, n, None)?;
    let max_def = chunk.column_descr().max_def_level();
    let mut defs = Vec::with_capacity(n);
    let values: Vec<i64> = match get_column_reader(chunk.column_descr_ptr(), Box::new(pages)) {
        r @ ColumnReader::Int64ColumnReader(_) => {
            let mut r: ColumnReaderImpl<Int64Type> = get_typed_column_reader(r);
            let mut v = Vec::with_capacity(n);
            while defs.len() < n
                && r.read_records(n - defs.len(), Some(&mut defs), None, &mut v)?
                    .0
                    > 0
            {}
            v
        }
        r @ ColumnReader::Int32ColumnReader(_) => {
            let mut r: ColumnReaderImpl<Int32Type> = get_typed_column_reader(r);
            let mut v = Vec::with_capacity(n);
            while defs.len() < n
                && r.read_records(n - defs.len(), Some(&mut defs), None, &mut v)?
                    .0
                    > 0
            {}
            v.into_iter().map(i64::from).collect()
        }
        _ => bail!("the label column is not an integer"),
    };
    if max_def == 0 {
        return Ok(values.into_iter().map(Some).collect());
    }
    let mut it = values.into_iter();
    Ok(defs
        .iter()
        .map(|&d| if d == max_def { it.next() } else { None })
        .collect())
}

/// Opens the Parquet files of `path` as a data set of streamed images decoded to `size`.
pub fn load(path: &str, size: usize, skip_bad: bool) -> Result<Dataset> {
    let paths = parquet_files(path)?;
    let mut files = Vec::new();
    let mut labels: Vec<Option<i64>> = Vec::new();
    let mut rows = Vec::new();
    let mut file_of_row = Vec::new();
    let mut has_labels = None;
    for (k, p) in paths.iter().enumerate() {
        let file = File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
        let reader = SerializedFileReader::new(file.try_clone()?)
            .map_err(|e| anyhow!("{}: not a readable Parquet file: {e}", p.display()))?;
        let meta = Arc::new(reader.metadata().clone());
        let image = image_column(&meta).with_context(|| {
            let names: Vec<String> = meta
                .file_metadata()
                .schema_descr()
                .columns()
                .iter()
                .map(|c| c.path().string())
                .collect();
            format!(
                "{}: no image column (an `image` struct with `bytes`, or a binary column named one of {IMAGE_COLUMNS:?}); its columns: {names:?}",
                p.display()
            )
        })?;
        let label = label_column(&meta);
        match has_labels {
            None => has_labels = Some(label.is_some()),
            Some(h) if h != label.is_some() => {
                bail!(
                    "{}: some files have a label column and others not",
                    p.display()
                )
            }
            _ => {}
        }
        let f = ParquetFile {
            path: p.clone(),
            file: Arc::new(file),
            meta,
            image,
        };
        for (g, rg) in f.meta.row_groups().iter().enumerate() {
            let n = rg.num_rows() as usize;
            match label {
                Some(col) => labels.extend(
                    read_labels(&f, g, col)
                        .with_context(|| format!("{}: row group {g}", p.display()))?,
                ),
                None => labels.extend(std::iter::repeat_n(None, n)),
            }
            rows.extend((0..n).map(|r| Row {
                file: k as u32,
                group: g as u32,
                row: r as u32,
            }));
            file_of_row.extend(std::iter::repeat_n(k, n));
        }
        files.push(f);
    }
    if rows.is_empty() {
        bail!("{path}: the Parquet files hold no rows");
    }
    if labels.iter().any(Option::is_none) && has_labels == Some(true) {
        let i = labels.iter().position(Option::is_none).expect("checked");
        bail!("{}: a null label", describe_row(&files, &rows, i));
    }
    let source: Arc<dyn Source> = Arc::new(ParquetSource {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        files,
        rows,
    });
    let split_of = |p: &Path| split_of_name(p).or_else(|| p.parent().and_then(split_of_name));
    streamed_dataset(
        format!("parquet:{path}"),
        source,
        labels,
        |i| split_of(&paths[file_of_row[i]]),
        size,
        skip_bad,
    )
}

fn describe_row(files: &[ParquetFile], rows: &[Row], i: usize) -> String {
    let r = rows[i];
    format!(
        "{}: row group {}, row {}",
        files[r.file as usize].path.display(),
        r.group,
        r.row
    )
}
