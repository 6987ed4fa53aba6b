//! Checkpoints: every model parameter as safetensors under the original's
//! state_dict names, with the full config in the metadata, so
//! `newllm generate` (and PyTorch) can load it back.

use super::model::Model;
use crate::config::Config;
use crate::io::save_safetensors;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Saves every model parameter (state_dict names) as safetensors, atomically.
pub fn save_checkpoint(model: &Model, path: &Path) -> Result<()> {
    let mut meta = std::collections::HashMap::new();
    meta.insert("config".to_string(), serde_json::to_string(&model.cfg)?);
    save_safetensors(path, &model.named_params(), meta)
}

/// Loads a checkpoint written by `save_checkpoint`: its config and weights.
pub fn load_checkpoint(path: &Path) -> Result<Model> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let cfg_text = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("config"))
        .with_context(|| format!("{} has no newllm config in its metadata", path.display()))?;
    let cfg: Config = serde_json::from_str(cfg_text)
        .with_context(|| format!("{}: config metadata is invalid", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut model = Model::new(
        &Config {
            pretrained_embeddings: String::new(),
            ..cfg.clone()
        },
        None,
    )?;
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            bail!(
                "{}: tensor {name} is {:?}, expected F32",
                path.display(),
                view.dtype()
            );
        }
        let vals: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        model
            .set_param(&name, &vals)
            .with_context(|| format!("checkpoint {}", path.display()))?;
    }
    model.cfg = cfg;
    Ok(model)
}
