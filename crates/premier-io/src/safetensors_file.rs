//! A memory-mapped safetensors file read one tensor at a time, so loading never holds more than
//! the model plus one tensor in RAM.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::error::LoadError;

/// A tensor read into host memory as f32, in the file's row-major layout.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dims, outermost first.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Reads a tensor back from a device (any float dtype → f32).
    pub fn from_tensor<B: burn::prelude::Backend, const D: usize>(
        tensor: burn::prelude::Tensor<B, D>,
    ) -> Self {
        let shape = tensor.dims().to_vec();
        let data = tensor
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("converted to f32");
        Self { shape, data }
    }

    /// Puts the tensor on `device` in the backend's float type; the rank must be `D`.
    pub fn into_tensor<B: burn::prelude::Backend, const D: usize>(
        self,
        device: &B::Device,
    ) -> burn::prelude::Tensor<B, D> {
        burn::prelude::Tensor::from_data(
            burn::prelude::TensorData::new(self.data, self.shape),
            device,
        )
    }

    /// Concatenates along dim 0 (all parts must agree on the other dims; checked by the caller).
    pub fn concat_rows(parts: Vec<HostTensor>) -> HostTensor {
        let mut shape = parts[0].shape.clone();
        shape[0] = parts.iter().map(|p| p.shape[0]).sum();
        let data = parts.into_iter().flat_map(|p| p.data).collect();
        HostTensor { shape, data }
    }

    /// Swaps the two halves along dim 0 (diffusers `norm_out.linear` is [scale; shift], BFL [shift; scale]).
    pub fn swap_halves(mut self) -> HostTensor {
        let half = self.data.len() / 2;
        self.data.rotate_left(half);
        self
    }

    /// The transpose of a 2-D tensor (PyTorch Linear `[out, in]` → burn `[in, out]`), cache-blocked.
    pub fn transposed(&self) -> HostTensor {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut out = vec![0f32; rows * cols];
        const BLOCK: usize = 64;
        for r0 in (0..rows).step_by(BLOCK) {
            for c0 in (0..cols).step_by(BLOCK) {
                for r in r0..(r0 + BLOCK).min(rows) {
                    for c in c0..(c0 + BLOCK).min(cols) {
                        out[c * rows + r] = self.data[r * cols + c];
                    }
                }
            }
        }
        HostTensor {
            shape: vec![cols, rows],
            data: out,
        }
    }
}

/// One mapped file and its header.
pub struct SafetensorsFile {
    /// The file (named in every error).
    pub path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

impl SafetensorsFile {
    /// Maps the file and validates its header and every tensor's byte range.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.is_dir() {
            return Err(LoadError::Corrupt {
                path: path.to_path_buf(),
                reason: "is a folder, not a .safetensors file".into(),
            });
        }
        let file = File::open(path).map_err(io)?;
        // SAFETY: the file is opened read-only; like every mmap-based loader we rely on nobody
        // truncating a checkpoint while it is being read.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let corrupt = |reason: String| LoadError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| match e {
            SafeTensorError::MetadataIncompleteBuffer => corrupt(size_mismatch(&mmap)),
            SafeTensorError::InvalidOffset(name) => corrupt(bad_offsets(&mmap, &name)),
            SafeTensorError::TensorInvalidInfo => {
                corrupt(bad_shape(&mmap).unwrap_or_else(|| e.to_string()))
            }
            e => corrupt(e.to_string()),
        })?;
        let data_start = 8 + header_len;
        let available = mmap.len().saturating_sub(data_start);
        let mut tensors = HashMap::new();
        for (name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            if end > available || start > end {
                return Err(corrupt(format!(
                    "tensor `{name}` spans bytes {start}..{end} but the data section has {available} bytes (truncated file?)"
                )));
            }
            tensors.insert(name, info.clone());
        }
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            data_start,
            tensors,
        })
    }

    /// Names of all tensors in the file.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Shape of `key`, if present.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors.get(key).map(|i| i.shape.as_slice())
    }

    /// Reads `key` widened to f64 without rounding through f32 (F64 tensors keep every bit).
    pub fn read_f64(&self, key: &str) -> Result<(Vec<usize>, Vec<f64>), LoadError> {
        let info = self.tensors.get(key).ok_or_else(|| LoadError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })?;
        if info.dtype != Dtype::F64 {
            let t = self.read(key)?;
            return Ok((t.shape, t.data.into_iter().map(f64::from).collect()));
        }
        let (start, end) = info.data_offsets;
        let bytes = &self.mmap[self.data_start + start..self.data_start + end];
        let data = bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect::<Vec<f64>>();
        if data.iter().any(|v| !v.is_finite()) {
            return Err(self.non_finite(key));
        }
        Ok((info.shape.clone(), data))
    }

    /// Reads an integer tensor (I64, I32, U8…: token ids, positions) as i64.
    pub fn read_ids(&self, key: &str) -> Result<(Vec<usize>, Vec<i64>), LoadError> {
        let info = self.tensors.get(key).ok_or_else(|| LoadError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })?;
        let (start, end) = info.data_offsets;
        let bytes = &self.mmap[self.data_start + start..self.data_start + end];
        let data = match info.dtype {
            Dtype::I64 => bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
            Dtype::I32 => bytes
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
            Dtype::U8 => bytes.iter().map(|&b| b as i64).collect(),
            other => {
                return Err(LoadError::UnsupportedDtype {
                    path: self.path.clone(),
                    key: key.to_string(),
                    dtype: format!("{other:?} (expected an integer type)"),
                })
            }
        };
        Ok((info.shape.clone(), data))
    }

    fn non_finite(&self, key: &str) -> LoadError {
        LoadError::NonFinite {
            path: self.path.clone(),
            key: key.to_string(),
        }
    }

    /// Reads `key` and converts it to f32. NaN or infinite values (or an f64 too large for f32)
    /// are refused here, where every weight enters, so no model runs on a corrupt file.
    pub fn read(&self, key: &str) -> Result<HostTensor, LoadError> {
        let info = self.tensors.get(key).ok_or_else(|| LoadError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })?;
        let (start, end) = info.data_offsets;
        let bytes = &self.mmap[self.data_start + start..self.data_start + end];
        let count: usize = info.shape.iter().product();
        let width = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F64 => 8,
            other => {
                return Err(LoadError::UnsupportedDtype {
                    path: self.path.clone(),
                    key: key.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        if bytes.len() != count * width {
            return Err(LoadError::Corrupt {
                path: self.path.clone(),
                reason: format!(
                    "tensor `{key}` has {} bytes for shape {:?} of {:?}",
                    bytes.len(),
                    info.shape,
                    info.dtype
                ),
            });
        }
        let data = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(8)
                .map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })
                .collect(),
        };
        let data: Vec<f32> = data;
        if data.iter().any(|v| !v.is_finite()) {
            return Err(self.non_finite(key));
        }
        Ok(HostTensor {
            shape: info.shape.clone(),
            data,
        })
    }
}

/// Why a file's length disagrees with its header: the safetensors crate reports both a
/// truncated file and bytes appended after the data as an incomplete buffer.
fn size_mismatch(bytes: &[u8]) -> String {
    let header_end = bytes.get(..8).map(|n| {
        8usize.saturating_add(u64::from_le_bytes(n.try_into().unwrap_or_default()) as usize)
    });
    let ranges = header_ranges(bytes);
    let data_end = header_end.zip(ranges.as_ref()).map(|(end, ranges)| {
        end.saturating_add(ranges.iter().map(|&(_, _, e)| e).max().unwrap_or(0) as usize)
    });
    // The first tensor (in file order) that runs past the end of the file.
    let past_end = header_end.zip(ranges.as_ref()).and_then(|(end, ranges)| {
        let available = bytes.len().saturating_sub(end) as u64;
        ranges
            .iter()
            .find(|&&(_, _, e)| e > available)
            .map(|(name, start, e)| (name.clone(), *start, *e, available))
    });
    match (data_end, past_end) {
        (Some(expected), _) if bytes.len() > expected => format!(
            "{} bytes after the last tensor's data (the header accounts for {expected} of the \
             file's {} bytes: appended or corrupt data)",
            bytes.len() - expected,
            bytes.len()
        ),
        (_, Some((name, start, end, available))) => format!(
            "tensor `{name}` spans bytes {start}..{end} of the data, but the file holds only \
             {available} data bytes (truncated file, or a wrong offset?)"
        ),
        (Some(expected), None) => format!(
            "the header needs {expected} bytes but the file has {} (truncated file?)",
            bytes.len()
        ),
        (None, _) => format!(
            "the header promises more data than the file's {} bytes (truncated file?)",
            bytes.len()
        ),
    }
}

/// The tensors of a header that the safetensors crate refused, `(name, info)` in file order (by
/// offsets), if its JSON parses; entries that are not tensor infos are left out.
fn header_tensors(bytes: &[u8]) -> Option<Vec<(String, TensorInfo)>> {
    let end = 8usize.checked_add(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize)?;
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(bytes.get(8..end)?).ok()?;
    let mut tensors: Vec<(String, TensorInfo)> = header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .filter_map(|(k, v)| Some((k, serde_json::from_value(v).ok()?)))
        .collect();
    tensors.sort_by(|(a, x), (b, y)| (x.data_offsets, a).cmp(&(y.data_offsets, b)));
    Some(tensors)
}

/// Tensors `(name, start, end)` of a header, in file order (by offsets), if it parses.
fn header_ranges(bytes: &[u8]) -> Option<Vec<(String, u64, u64)>> {
    Some(
        header_tensors(bytes)?
            .into_iter()
            .map(|(name, info)| {
                let (start, end) = info.data_offsets;
                (name, start as u64, end as u64)
            })
            .collect(),
    )
}

/// Names the first tensor (in file order) whose shape and type need another number of bytes
/// than its offsets span; the safetensors crate names none.
fn bad_shape(bytes: &[u8]) -> Option<String> {
    header_tensors(bytes)?.into_iter().find_map(|(name, info)| {
        let (start, stop) = info.data_offsets;
        let needed = info
            .shape
            .iter()
            .try_fold(info.dtype.bitsize(), |n, &d| n.checked_mul(d))
            .map(|bits| bits.div_ceil(8));
        (needed != stop.checked_sub(start)).then(|| {
            let needed = needed.map_or("more than 2⁶⁴".to_string(), |n| n.to_string());
            format!(
                "tensor `{name}` is {:?} of shape {:?}, {needed} bytes, but its offsets \
                 {start}..{stop} span {} bytes",
                info.dtype,
                info.shape,
                stop.saturating_sub(start)
            )
        })
    })
}

/// Names both tensors of an overlap or gap: the safetensors crate names only the second, whose
/// offsets may be the right ones.
fn bad_offsets(bytes: &[u8], name: &str) -> String {
    let ranges = header_ranges(bytes).unwrap_or_default();
    let Some(i) = ranges.iter().position(|(n, _, _)| n == name) else {
        return format!("invalid data offsets for tensor `{name}`");
    };
    let (_, start, end) = ranges[i];
    match i.checked_sub(1).map(|p| &ranges[p]) {
        Some((prev, prev_start, prev_end)) => format!(
            "tensor `{name}` spans bytes {start}..{end} but `{prev}` before it spans \
             {prev_start}..{prev_end}: the two {} (one of their offsets is wrong)",
            if *prev_end > start {
                "overlap"
            } else {
                "leave a gap"
            }
        ),
        None if end < start => {
            format!("tensor `{name}` spans bytes {start}..{end}: its end is before its start")
        }
        None => format!("tensor `{name}`, the first in the file, starts at byte {start}, not 0"),
    }
}

/// Element type for [`write_safetensors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaveDtype {
    #[default]
    /// 32-bit floats, exact.
    F32,
    /// bfloat16, as the released Premier files.
    Bf16,
}

/// Writes named tensors to `path` atomically: a temporary file in the same folder, then a rename,
/// so an interrupted write never leaves a half-written file where a good one was.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, HostTensor)],
    dtype: SaveDtype,
) -> Result<(), LoadError> {
    use safetensors::tensor::TensorView;
    let fail = |reason: String| LoadError::Write {
        path: path.to_path_buf(),
        reason,
    };
    // Nothing non-finite is ever written: a NaN saved is a run lost when it is loaded.
    if let Some((name, _)) = tensors
        .iter()
        .find(|(_, t)| t.data.iter().any(|v| !v.is_finite()))
    {
        return Err(fail(format!(
            "tensor `{name}` holds NaN or infinite values; nothing was written"
        )));
    }
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| match dtype {
            SaveDtype::F32 => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            SaveDtype::Bf16 => t
                .data
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        })
        .collect();
    let st_dtype = match dtype {
        SaveDtype::F32 => Dtype::F32,
        SaveDtype::Bf16 => Dtype::BF16,
    };
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            TensorView::new(st_dtype, t.shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| fail(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    super::write_via_temp(path, |tmp| {
        safetensors::serialize_to_file(views, metadata, tmp).map_err(|e| e.to_string())
    })
    .map_err(fail)
}
