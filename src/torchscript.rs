//! Reading the float tensors of a TorchScript archive (`torch.jit.save`, e.g. the FID network's
//! `default_1.pt`) without Python: a ZIP container whose `data.pkl` pickles the module tree and
//! whose `data/N` entries hold the raw tensor storages.
//!
//! Only what such archives use is implemented: a small pickle interpreter (protocol 2–5 opcodes
//! for containers, objects, persistent ids and `torch._utils._rebuild_tensor_v2`) and a ZIP
//! reader for stored or deflated entries. Tensor names are the attribute paths from the root
//! module (`net.layers.conv.weight`), as in the module's `state_dict()`.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use crate::tensorfile::{bf16_to_f32, f16_to_f32};

/// A decoded pickle value (only the shapes TorchScript archives produce). Scalars are kept
/// whole (and shown by `Debug` in errors) even where only their presence matters.
#[derive(Clone, Debug)]
#[allow(dead_code)]
enum Val {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Val>),
    List(Vec<Val>),
    Dict(Vec<(Val, Val)>),
    Global(String),
    /// An object: its class and, after BUILD, its state.
    Obj(String, Box<Val>),
    Storage {
        key: String,
        dtype: String,
    },
    Tensor(TensorRef),
    Mark,
}

/// Where a tensor's values live.
#[derive(Clone, Debug)]
struct TensorRef {
    key: String,
    dtype: String,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

fn as_usizes(v: &Val) -> Result<Vec<usize>> {
    match v {
        Val::Tuple(items) | Val::List(items) => items
            .iter()
            .map(|x| match x {
                Val::Int(i) if *i >= 0 => Ok(*i as usize),
                other => bail!("expected a non-negative integer, found {other:?}"),
            })
            .collect(),
        other => bail!("expected a tuple of integers, found {other:?}"),
    }
}

/// Runs a pickle program and returns its result.
fn unpickle(data: &[u8]) -> Result<Val> {
    let mut stack: Vec<Val> = Vec::new();
    let mut memo: HashMap<u32, Val> = HashMap::new();
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8]> {
        ensure!(*pos + n <= data.len(), "pickle truncated at byte {}", *pos);
        let s = &data[*pos..*pos + n];
        *pos += n;
        Ok(s)
    };
    let pop_mark = |stack: &mut Vec<Val>| -> Result<Vec<Val>> {
        let m = stack
            .iter()
            .rposition(|v| matches!(v, Val::Mark))
            .context("pickle: MARK missing")?;
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = *take(&mut pos, 1)?.first().unwrap();
        match op {
            0x80 => {
                take(&mut pos, 1)?;
            } // PROTO
            0x95 => {
                take(&mut pos, 8)?;
            } // FRAME
            b'.' => return stack.pop().context("pickle: empty stack at STOP"),
            b'(' => stack.push(Val::Mark),
            b'N' => stack.push(Val::None),
            0x88 => stack.push(Val::Bool(true)),
            0x89 => stack.push(Val::Bool(false)),
            b'K' => stack.push(Val::Int(take(&mut pos, 1)?[0] as i64)),
            b'M' => {
                let b = take(&mut pos, 2)?;
                stack.push(Val::Int(u16::from_le_bytes([b[0], b[1]]) as i64))
            }
            b'J' => {
                let b = take(&mut pos, 4)?;
                stack.push(Val::Int(i32::from_le_bytes(b.try_into().unwrap()) as i64))
            }
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                let n = take(&mut pos, 1)?[0] as usize;
                let b = take(&mut pos, n)?;
                ensure!(n <= 8, "pickle: integer of {n} bytes");
                let mut v: i64 = 0;
                for (i, &x) in b.iter().enumerate() {
                    v |= (x as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Val::Int(v));
            }
            b'G' => {
                let b = take(&mut pos, 8)?;
                stack.push(Val::Float(f64::from_be_bytes(b.try_into().unwrap())))
            }
            b'X' | 0x8c | 0x8d | b'T' | b'U' | b'B' | b'C' => {
                let n = match op {
                    b'X' | b'T' | b'B' => {
                        u32::from_le_bytes(take(&mut pos, 4)?.try_into().unwrap()) as usize
                    }
                    0x8d => u64::from_le_bytes(take(&mut pos, 8)?.try_into().unwrap()) as usize,
                    _ => take(&mut pos, 1)?[0] as usize,
                };
                let b = take(&mut pos, n)?.to_vec();
                stack.push(if matches!(op, b'B' | b'C') {
                    Val::Bytes(b)
                } else {
                    Val::Str(String::from_utf8_lossy(&b).to_string())
                });
            }
            b'}' => stack.push(Val::Dict(Vec::new())),
            b']' => stack.push(Val::List(Vec::new())),
            b')' => stack.push(Val::Tuple(Vec::new())),
            0x8f => stack.push(Val::List(Vec::new())), // EMPTY_SET
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Val::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                ensure!(stack.len() >= n, "pickle: stack underflow");
                let items = stack.split_off(stack.len() - n);
                stack.push(Val::Tuple(items));
            }
            b's' => {
                let v = stack.pop().context("pickle: SETITEM")?;
                let k = stack.pop().context("pickle: SETITEM")?;
                if let Some(Val::Dict(d)) = stack.last_mut() {
                    d.push((k, v));
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                if let Some(Val::Dict(d)) = stack.last_mut() {
                    for kv in items.chunks(2) {
                        if let [k, v] = kv {
                            d.push((k.clone(), v.clone()));
                        }
                    }
                }
            }
            b'a' => {
                let v = stack.pop().context("pickle: APPEND")?;
                if let Some(Val::List(l)) = stack.last_mut() {
                    l.push(v);
                }
            }
            b'e' | 0x90 => {
                let items = pop_mark(&mut stack)?;
                if let Some(Val::List(l)) = stack.last_mut() {
                    l.extend(items);
                }
            }
            b'q' => {
                let k = take(&mut pos, 1)?[0] as u32;
                memo.insert(k, stack.last().cloned().context("pickle: BINPUT")?);
            }
            b'r' => {
                let k = u32::from_le_bytes(take(&mut pos, 4)?.try_into().unwrap());
                memo.insert(k, stack.last().cloned().context("pickle: LONG_BINPUT")?);
            }
            0x94 => {
                let k = memo.len() as u32;
                memo.insert(k, stack.last().cloned().context("pickle: MEMOIZE")?);
            }
            b'h' => {
                let k = take(&mut pos, 1)?[0] as u32;
                stack.push(
                    memo.get(&k)
                        .cloned()
                        .context("pickle: BINGET of unknown key")?,
                );
            }
            b'j' => {
                let k = u32::from_le_bytes(take(&mut pos, 4)?.try_into().unwrap());
                stack.push(
                    memo.get(&k)
                        .cloned()
                        .context("pickle: LONG_BINGET of unknown key")?,
                );
            }
            b'0' => {
                stack.pop();
            }
            b'1' => {
                pop_mark(&mut stack)?;
            }
            b'2' => stack.push(stack.last().cloned().context("pickle: DUP")?),
            b'c' => {
                let line = |pos: &mut usize| -> Result<String> {
                    let start = *pos;
                    while *pos < data.len() && data[*pos] != b'\n' {
                        *pos += 1;
                    }
                    let s = String::from_utf8_lossy(&data[start..*pos]).to_string();
                    *pos += 1;
                    Ok(s)
                };
                let module = line(&mut pos)?;
                let name = line(&mut pos)?;
                stack.push(Val::Global(format!("{module}.{name}")));
            }
            0x93 => {
                let name = stack.pop().context("pickle: STACK_GLOBAL")?;
                let module = stack.pop().context("pickle: STACK_GLOBAL")?;
                match (module, name) {
                    (Val::Str(m), Val::Str(n)) => stack.push(Val::Global(format!("{m}.{n}"))),
                    _ => bail!("pickle: STACK_GLOBAL needs two strings"),
                }
            }
            b'Q' => {
                // BINPERSID: ('storage', storage_type, key, location, numel)
                let pid = stack.pop().context("pickle: BINPERSID")?;
                let Val::Tuple(items) = pid else {
                    bail!("pickle: persistent id is not a tuple")
                };
                ensure!(items.len() >= 3, "pickle: short persistent id");
                let dtype = match &items[1] {
                    Val::Global(g) => g.clone(),
                    other => format!("{other:?}"),
                };
                let key = match &items[2] {
                    Val::Str(s) => s.clone(),
                    Val::Int(i) => i.to_string(),
                    other => bail!("pickle: storage key {other:?}"),
                };
                stack.push(Val::Storage { key, dtype });
            }
            b'R' | 0x81 => {
                let args = stack.pop().context("pickle: REDUCE/NEWOBJ")?;
                let callable = stack.pop().context("pickle: REDUCE/NEWOBJ")?;
                let Val::Global(name) = callable else {
                    bail!("pickle: call of a non-global")
                };
                let args = match args {
                    Val::Tuple(a) => a,
                    other => vec![other],
                };
                stack.push(match name.as_str() {
                    "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                        let Some(Val::Storage { key, dtype }) = args.first().cloned() else {
                            bail!("pickle: tensor without storage")
                        };
                        let offset = match args.get(1) {
                            Some(Val::Int(i)) => *i as usize,
                            _ => 0,
                        };
                        Val::Tensor(TensorRef {
                            key,
                            dtype,
                            offset,
                            size: as_usizes(args.get(2).context("pickle: tensor size")?)?,
                            stride: as_usizes(args.get(3).context("pickle: tensor stride")?)?,
                        })
                    }
                    "torch._utils._rebuild_parameter" => {
                        args.into_iter().next().unwrap_or(Val::None)
                    }
                    "collections.OrderedDict" => Val::Dict(Vec::new()),
                    _ => Val::Obj(name, Box::new(Val::None)),
                });
            }
            b'b' => {
                let state = stack.pop().context("pickle: BUILD")?;
                match stack.last_mut() {
                    Some(Val::Obj(_, s)) => **s = state,
                    Some(Val::Dict(d)) => {
                        if let Val::Dict(items) = state {
                            d.extend(items);
                        }
                    }
                    _ => {}
                }
            }
            other => bail!(
                "pickle: unsupported opcode 0x{other:02x} at byte {}",
                pos - 1
            ),
        }
    }
}

/// Collects every tensor of the object tree with its attribute path.
fn walk(v: &Val, path: &mut Vec<String>, out: &mut Vec<(String, TensorRef)>) {
    match v {
        Val::Tensor(t) => out.push((path.join("."), t.clone())),
        Val::Obj(_, state) => walk(state, path, out),
        Val::Dict(items) => {
            for (k, val) in items {
                let key = match k {
                    Val::Str(s) => s.clone(),
                    Val::Int(i) => i.to_string(),
                    _ => continue,
                };
                path.push(key);
                walk(val, path, out);
                path.pop();
            }
        }
        Val::Tuple(items) | Val::List(items) => {
            for (i, val) in items.iter().enumerate() {
                path.push(i.to_string());
                walk(val, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The entries of a ZIP archive (stored or deflated), by name.
pub(crate) fn read_zip(path: &Path, bytes: &[u8]) -> Result<HashMap<String, Vec<u8>>> {
    let u16_at = |p: usize| u16::from_le_bytes([bytes[p], bytes[p + 1]]) as usize;
    let u32_at = |p: usize| u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
    ensure!(
        bytes.len() >= 22,
        "{}: too short for a ZIP archive",
        path.display()
    );
    let eocd = (0..=bytes.len() - 22)
        .rev()
        .take(66_000)
        .find(|&p| u32_at(p) == 0x0605_4b50)
        .with_context(|| {
            format!(
                "{}: not a ZIP archive (no end-of-directory record)",
                path.display()
            )
        })?;
    let (count, cd_offset) = (u16_at(eocd + 10), u32_at(eocd + 16));
    let mut out = HashMap::new();
    let mut p = cd_offset;
    for _ in 0..count {
        ensure!(
            p + 46 <= bytes.len() && u32_at(p) == 0x0201_4b50,
            "{}: corrupt ZIP directory",
            path.display()
        );
        let method = u16_at(p + 10);
        let csize = u32_at(p + 20);
        let usize_ = u32_at(p + 24);
        let (nlen, xlen, clen) = (u16_at(p + 28), u16_at(p + 30), u16_at(p + 32));
        let local = u32_at(p + 42);
        ensure!(
            p + 46 + nlen <= bytes.len(),
            "{}: corrupt ZIP directory",
            path.display()
        );
        let name = String::from_utf8_lossy(&bytes[p + 46..p + 46 + nlen]).to_string();
        p += 46 + nlen + xlen + clen;
        ensure!(
            local + 30 <= bytes.len() && u32_at(local) == 0x0403_4b50,
            "{}: corrupt ZIP entry {name}",
            path.display()
        );
        let start = local + 30 + u16_at(local + 26) + u16_at(local + 28);
        ensure!(
            start + csize <= bytes.len(),
            "{}: ZIP entry {name} is truncated",
            path.display()
        );
        let raw = &bytes[start..start + csize];
        let data = match method {
            0 => raw.to_vec(),
            8 => {
                let mut d = Vec::with_capacity(usize_);
                flate2::read::DeflateDecoder::new(raw)
                    .read_to_end(&mut d)
                    .with_context(|| format!("{}: corrupt ZIP entry {name}", path.display()))?;
                d
            }
            m => bail!(
                "{}: ZIP entry {name} uses unsupported compression {m}",
                path.display()
            ),
        };
        out.insert(name, data);
    }
    Ok(out)
}

/// Every float tensor of a TorchScript (or `torch.save` ZIP) archive as (name, shape, values),
/// sorted by name.
pub fn read_torchscript_tensors(path: &Path) -> Result<Vec<crate::tensorfile::NamedTensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let entries = read_zip(path, &bytes)?;
    let pkl_name = entries
        .keys()
        .find(|k| k.ends_with("/data.pkl") || k.as_str() == "data.pkl")
        .cloned()
        .with_context(|| format!("{}: no data.pkl: not a PyTorch archive", path.display()))?;
    let root = pkl_name.trim_end_matches("data.pkl").to_string();
    let obj =
        unpickle(&entries[&pkl_name]).with_context(|| format!("{}: {pkl_name}", path.display()))?;
    let mut found = Vec::new();
    walk(&obj, &mut Vec::new(), &mut found);
    let mut out = Vec::with_capacity(found.len());
    for (name, t) in found {
        let kind = t.dtype.rsplit('.').next().unwrap_or("");
        let width = match kind {
            "FloatStorage" => 4,
            "DoubleStorage" => 8,
            "HalfStorage" | "BFloat16Storage" => 2,
            _ => continue, // integer buffers (e.g. num_batches_tracked) are not weights
        };
        let storage = entries
            .get(&format!("{root}data/{}", t.key))
            .with_context(|| {
                format!("{}: storage {} of {name} is missing", path.display(), t.key)
            })?;
        let n: usize = t.size.iter().product();
        // Contiguous row-major strides are all an exported network uses.
        let mut expect = 1usize;
        for (s, &d) in t.stride.iter().zip(&t.size).rev() {
            ensure!(
                *s == expect || d == 1,
                "{}: {name} is not contiguous",
                path.display()
            );
            expect *= d;
        }
        let start = t.offset * width;
        ensure!(
            start + n * width <= storage.len(),
            "{}: storage of {name} is too short",
            path.display()
        );
        let vals: Vec<f32> = storage[start..start + n * width]
            .chunks_exact(width)
            .map(|c| match (width, kind) {
                (4, _) => f32::from_le_bytes(c.try_into().unwrap()),
                (8, _) => f64::from_le_bytes(c.try_into().unwrap()) as f32,
                (_, "HalfStorage") => f16_to_f32(u16::from_le_bytes([c[0], c[1]])),
                _ => bf16_to_f32(u16::from_le_bytes([c[0], c[1]])),
            })
            .collect();
        out.push((name, t.size.clone(), vals));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Every float tensor of a `torch.save` ZIP archive (PyTorch ≥ 1.6, e.g. a state dict saved as
/// `diffusion_pytorch_model.bin`) as (name, shape, values), sorted by name: the names are the
/// dictionary keys. Half and bfloat16 tensors are widened to f32.
pub fn read_torch_save_tensors(path: &Path) -> Result<Vec<crate::tensorfile::NamedTensor>> {
    read_torchscript_tensors(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long1_and_containers() {
        // pickle.dumps({'a': (1, -2, 300, 70000), 'b': [1.5]}, protocol=2) built by hand.
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'(', b'X', 1, 0, 0, 0, b'a'];
        p.extend([
            b'(', b'K', 1, 0x8a, 1, 0xfe, b'M', 44, 1, b'J', 0x70, 0x11, 1, 0, b't',
        ]);
        p.extend([b'X', 1, 0, 0, 0, b'b', b']', b'G']);
        p.extend(1.5f64.to_be_bytes());
        p.extend([b'a', b'u', b'.']);
        let v = unpickle(&p).unwrap();
        let Val::Dict(items) = v else { panic!() };
        let Val::Tuple(t) = &items[0].1 else { panic!() };
        let ints: Vec<i64> = t
            .iter()
            .map(|x| if let Val::Int(i) = x { *i } else { 0 })
            .collect();
        assert_eq!(ints, vec![1, -2, 300, 70000]);
        assert!(matches!(&items[1].1, Val::List(l) if matches!(l[0], Val::Float(f) if f == 1.5)));
    }
}
