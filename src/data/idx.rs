//! IDX files (MNIST, Fashion-MNIST), raw or gzip-compressed.
//!
//! Layout: two zero bytes, a type byte (0x08 = unsigned byte, the only type these data
//! sets use), the number of dimensions, then each dimension as a big-endian u32, then the
//! data. The reader checks all of it against the file and never allocates from the header
//! alone: the payload buffer grows only as bytes actually arrive.

use anyhow::{Context, Result, bail};
use flate2::read::GzDecoder;
use std::io::{BufReader, Read};
use std::path::Path;

/// An n-dimensional array of bytes read from an IDX file.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Largest chunk reserved ahead of the bytes actually read.
const READ_CHUNK: usize = 1 << 20;

pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open IDX file {}", path.display()))?;
    parse_idx_maybe_gz(BufReader::new(file))
        .with_context(|| format!("invalid IDX file {}", path.display()))
}

/// Parses an IDX stream, decompressing it first when it starts with the gzip magic number.
pub fn parse_idx_maybe_gz<R: Read>(mut reader: R) -> Result<IdxArray> {
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut reader, &mut magic).context("cannot read")?;
    let gz = n == 2 && magic == [0x1f, 0x8b];
    let chained = std::io::Cursor::new(magic[..n].to_vec()).chain(reader);
    if gz {
        parse_idx(GzDecoder::new(chained))
    } else {
        parse_idx(chained)
    }
}

/// Parses an IDX stream (already decompressed).
pub fn parse_idx<R: Read>(mut r: R) -> Result<IdxArray> {
    let mut head = [0u8; 4];
    let got = read_up_to(&mut r, &mut head)?;
    if got < 4 {
        bail!("truncated: {got} bytes, shorter than the 4-byte magic number");
    }
    if head[0] != 0 || head[1] != 0 {
        bail!(
            "wrong magic number {:02x}{:02x}{:02x}{:02x}: IDX files start with two zero bytes",
            head[0],
            head[1],
            head[2],
            head[3]
        );
    }
    if head[2] != 0x08 {
        bail!(
            "unsupported IDX data type 0x{:02x}: only unsigned bytes (0x08) are supported",
            head[2]
        );
    }
    let ndims = head[3] as usize;
    if ndims == 0 || ndims > 4 {
        bail!("{ndims} dimensions in the header; expected 1 to 4");
    }
    let mut dim_bytes = vec![0u8; 4 * ndims];
    if read_up_to(&mut r, &mut dim_bytes)? < dim_bytes.len() {
        bail!("truncated inside the header ({ndims} dimensions announced)");
    }
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| anyhow::anyhow!("header dimensions {dims:?} overflow"))?;
    // Read at most expected + 1 bytes, growing the buffer only as data arrives.
    let mut data = Vec::with_capacity(expected.min(READ_CHUNK));
    let read = r
        .by_ref()
        .take(expected as u64 + 1)
        .read_to_end(&mut data)?;
    if read < expected {
        bail!(
            "truncated: the header {dims:?} announces {expected} data bytes but only {read} follow"
        );
    }
    if read > expected {
        bail!("trailing data: more than the {expected} bytes announced by the header {dims:?}");
    }
    Ok(IdxArray { dims, data })
}

/// Like `read_exact` but returns how many bytes were read before end of file.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Encodes an IDX file (u8 data); used by tests and tools that write small data sets.
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn reads_raw_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..24).collect();
        let raw = encode_idx(&[2, 3, 4], &data);
        for (name, bytes) in [("a.idx", raw.clone()), ("a.idx.gz", gzip(&raw))] {
            let a = read_idx(&write(dir.path(), name, &bytes)).unwrap();
            assert_eq!(a.dims, vec![2, 3, 4]);
            assert_eq!(a.data, data);
        }
    }

    #[test]
    fn truncated_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let raw = encode_idx(&[2, 3, 4], &[7u8; 24]);
        let p = write(dir.path(), "short.idx", &raw[..raw.len() - 5]);
        let e = format!("{:#}", read_idx(&p).unwrap_err());
        assert!(e.contains("short.idx") && e.contains("truncated"), "{e}");
        let p = write(dir.path(), "short.gz", &gzip(&raw[..10]));
        let e = format!("{:#}", read_idx(&p).unwrap_err());
        assert!(e.contains("short.gz") && e.contains("truncated"), "{e}");
        let p = write(dir.path(), "empty", &[]);
        assert!(format!("{:#}", read_idx(&p).unwrap_err()).contains("truncated"));
    }

    #[test]
    fn wrong_magic_and_type_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = encode_idx(&[4], &[1, 2, 3, 4]);
        raw[0] = 1;
        let e = format!(
            "{:#}",
            read_idx(&write(dir.path(), "m.idx", &raw)).unwrap_err()
        );
        assert!(e.contains("m.idx") && e.contains("magic"), "{e}");
        let mut raw = encode_idx(&[4], &[1, 2, 3, 4]);
        raw[2] = 0x0d; // float
        let e = format!(
            "{:#}",
            read_idx(&write(dir.path(), "f.idx", &raw)).unwrap_err()
        );
        assert!(e.contains("data type"), "{e}");
        let mut raw = encode_idx(&[4], &[1, 2, 3, 4]);
        raw.push(9);
        let e = format!(
            "{:#}",
            read_idx(&write(dir.path(), "t.idx", &raw)).unwrap_err()
        );
        assert!(e.contains("trailing"), "{e}");
    }

    #[test]
    fn hostile_header_does_not_allocate() {
        // Claims 10^12 images of 28x28 but carries 100 bytes: must fail fast, without
        // trying to allocate the announced 784 TB.
        let dir = tempfile::tempdir().unwrap();
        let mut raw = vec![0, 0, 8, 3];
        raw.extend_from_slice(&u32::MAX.to_be_bytes());
        raw.extend_from_slice(&28u32.to_be_bytes());
        raw.extend_from_slice(&28u32.to_be_bytes());
        raw.extend_from_slice(&[0u8; 100]);
        let e = format!(
            "{:#}",
            read_idx(&write(dir.path(), "hostile.idx", &raw)).unwrap_err()
        );
        assert!(e.contains("hostile.idx") && e.contains("truncated"), "{e}");
        // Dimensions whose product overflows usize.
        let mut raw = vec![0, 0, 8, 4];
        for _ in 0..4 {
            raw.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        let e = format!(
            "{:#}",
            read_idx(&write(dir.path(), "overflow.idx", &raw)).unwrap_err()
        );
        assert!(e.contains("overflow"), "{e}");
        let e = format!("{:#}", parse_idx(&[0u8, 0, 8, 9][..]).unwrap_err());
        assert!(e.contains("dimensions"), "{e}");
    }
}
