//! GPT-2's pretrained token embedding table (`wte`) from a safetensors file.

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Tensor names tried, in order: GPT-2 as `GPT2Model` and as `GPT2LMHeadModel` saves it.
pub const WTE_NAMES: [&str; 2] = ["wte.weight", "transformer.wte.weight"];

/// Reads the [vocab, embed_dim] embedding table as row-major f32
/// (f16 and bf16 are widened exactly).
pub fn load_pretrained_embeddings(path: &Path, vocab: usize, embed_dim: usize) -> Result<Vec<f32>> {
    let label = path.display();
    let bytes = std::fs::read(path).with_context(|| {
        format!("cannot read pretrained embeddings {label}; fix pretrained_embeddings or set it to \"\" for random init")
    })?;
    let tensors = SafeTensors::deserialize(&bytes).with_context(|| {
        format!("{label}: not a valid safetensors file (truncated or corrupt?)")
    })?;
    let Some((name, view)) = WTE_NAMES
        .iter()
        .find_map(|n| tensors.tensor(n).ok().map(|v| (*n, v)))
    else {
        let mut names: Vec<&String> = tensors.names();
        names.sort();
        let shown: Vec<&str> = names.iter().take(8).map(|s| s.as_str()).collect();
        bail!(
            "{label}: no tensor named {} (found {} tensors: {}{}); give GPT-2's model.safetensors",
            WTE_NAMES.join(" or "),
            names.len(),
            shown.join(", "),
            if names.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        );
    };
    if view.shape() != [vocab, embed_dim] {
        bail!(
            "{label}: {name} has shape {:?} but the model needs [{vocab}, {embed_dim}] \
             (vocab_size, embed_dim); use matching settings or another file",
            view.shape()
        );
    }
    let data = view.data();
    let table: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect(),
        other => bail!("{label}: {name} has dtype {other:?}; only F32, F16 and BF16 are supported"),
    };
    if let Some(i) = table.iter().position(|x| !x.is_finite()) {
        bail!(
            "{label}: {name} holds a non-finite value at row {}, column {}; the file is damaged",
            i / embed_dim,
            i % embed_dim
        );
    }
    Ok(table)
}

/// IEEE half -> single, including subnormals, infinities and NaN.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        // Subnormal half: value = frac * 2^-24, normal as f32.
        (0, _) => {
            let magnitude = frac as f32 * 2f32.powi(-24);
            return if sign != 0 { -magnitude } else { magnitude };
        }
        (31, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    /// A file alone in its own temp directory; both are removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl std::ops::Deref for TempFile {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn temp_file(name: &str, bytes: &[u8]) -> TempFile {
        let dir = std::env::temp_dir().join(format!("newllm-emb-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        std::fs::write(&path, bytes).unwrap();
        TempFile(path)
    }

    fn safetensors_file(
        name: &str,
        tensor: &str,
        dtype: Dtype,
        shape: Vec<usize>,
        data: &[u8],
    ) -> TempFile {
        let view = TensorView::new(dtype, shape, data).unwrap();
        let bytes = safetensors::serialize([(tensor, view)], &None).unwrap();
        temp_file(name, &bytes)
    }

    #[test]
    fn f16_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn loads_f32_f16_bf16_tables() {
        let values = [1.0f32, -2.0, 0.5, 3.0, 0.25, -0.125];
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let path = safetensors_file("f32", "wte.weight", Dtype::F32, vec![3, 2], &f32_bytes);
        assert_eq!(load_pretrained_embeddings(&path, 3, 2).unwrap(), values);

        // These values are exact in both half formats.
        let f16_bits: [u16; 6] = [0x3c00, 0xc000, 0x3800, 0x4200, 0x3400, 0xb000];
        let f16_bytes: Vec<u8> = f16_bits.iter().flat_map(|v| v.to_le_bytes()).collect();
        let path = safetensors_file(
            "f16",
            "transformer.wte.weight",
            Dtype::F16,
            vec![3, 2],
            &f16_bytes,
        );
        assert_eq!(load_pretrained_embeddings(&path, 3, 2).unwrap(), values);

        let bf16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let path = safetensors_file("bf16", "wte.weight", Dtype::BF16, vec![3, 2], &bf16_bytes);
        assert_eq!(load_pretrained_embeddings(&path, 3, 2).unwrap(), values);
    }

    #[test]
    fn bad_embedding_files_give_clear_errors() {
        let bytes = vec![0u8; 6 * 4];
        let path = safetensors_file("shape", "wte.weight", Dtype::F32, vec![3, 2], &bytes);
        let err = format!(
            "{:#}",
            load_pretrained_embeddings(&path, 50257, 768).unwrap_err()
        );
        assert!(
            err.contains("has shape [3, 2] but the model needs [50257, 768]"),
            "{err}"
        );

        let path = safetensors_file("dtype", "wte.weight", Dtype::I32, vec![3, 2], &bytes);
        let err = format!("{:#}", load_pretrained_embeddings(&path, 3, 2).unwrap_err());
        assert!(err.contains("dtype I32; only F32, F16 and BF16"), "{err}");

        let path = safetensors_file("name", "h.0.attn.bias", Dtype::F32, vec![3, 2], &bytes);
        let err = format!("{:#}", load_pretrained_embeddings(&path, 3, 2).unwrap_err());
        assert!(
            err.contains("no tensor named wte.weight or transformer.wte.weight"),
            "{err}"
        );
        assert!(err.contains("h.0.attn.bias"), "{err}");

        let nan: Vec<u8> = [0.0f32, 0.0, f32::NAN, 0.0, 0.0, 0.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let path = safetensors_file("nan", "wte.weight", Dtype::F32, vec![3, 2], &nan);
        let err = format!("{:#}", load_pretrained_embeddings(&path, 3, 2).unwrap_err());
        assert!(err.contains("non-finite value at row 1, column 0"), "{err}");

        let path = temp_file("corrupt", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"wte");
        let err = format!("{:#}", load_pretrained_embeddings(&path, 3, 2).unwrap_err());
        assert!(err.contains("not a valid safetensors file"), "{err}");

        let missing = std::env::temp_dir().join("newllm-no-such-dir/model.safetensors");
        let err = format!(
            "{:#}",
            load_pretrained_embeddings(&missing, 3, 2).unwrap_err()
        );
        assert!(err.contains("cannot read pretrained embeddings"), "{err}");
        assert!(err.contains("newllm-no-such-dir"), "{err}");
    }
}
