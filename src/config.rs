//! One config struct for everything a run depends on. Defaults reproduce the
//! seed document's run (docs/algorithm.md sections 1-7); presets are small TOML
//! files that override some fields; `--set key=value` overrides any field.
//! Every result file records the full config it ran with.

use crate::ops::Precision;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How Phase 1 iteration 1 builds `prev` (docs/algorithm.md section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase1Init {
    /// One true recurrent pass from a zero context (produced the seed's numbers).
    Sequential,
    /// `prev = randn(n, C) * 0.01` (committed an hour later).
    Random,
}

/// Where a cell's validation text comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValMode {
    /// The last `val_fraction` of each cell's own token stream (the seed's
    /// run): a larger cell is scored on other, later text.
    Tail,
    /// The last `val_samples` conversations of the corpus, never among any
    /// cell's training conversations: one validation set for every cell,
    /// replicate, model and compared setting.
    Heldout,
}

/// A model the experiment can train on a cell (the names results, configs
/// and the command line use: "newllm", "kn", "transformer").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    #[default]
    NewLlm,
    /// Interpolated modified Kneser-Ney n-gram (`models/kn/`).
    Kn,
    /// GPT-2-style decoder (`models/transformer/`).
    Transformer,
}

impl ModelKind {
    pub const ALL: [ModelKind; 3] = [ModelKind::NewLlm, ModelKind::Kn, ModelKind::Transformer];

    /// The name results and configs use.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::NewLlm => "newllm",
            ModelKind::Kn => "kn",
            ModelKind::Transformer => "transformer",
        }
    }

    /// The name a report shows.
    pub fn label(self) -> &'static str {
        match self {
            ModelKind::NewLlm => "New-LLM",
            ModelKind::Kn => "Kneser-Ney",
            ModelKind::Transformer => "Transformer",
        }
    }

    /// Whether a run depends on the seed (a deterministic model runs once
    /// per cell, whatever `replicates` says).
    pub fn seeded(self) -> bool {
        self != ModelKind::Kn
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ModelKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<ModelKind, String> {
        ModelKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown model {s:?}: choose newllm, kn or transformer"))
    }
}

/// Where New-LLM's training stages run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    /// An NVIDIA GPU (a build with `--features cuda`).
    Cuda,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            _ => Err(format!("unknown device {s:?}: choose cpu or cuda")),
        }
    }
}

/// How the Phase-2 training context cache is built (docs/algorithm.md section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainCache {
    /// A true recurrent pass over the training tokens (produced the seed's numbers).
    Sequential,
    /// One batched pass over `[0, prev[0], ..., prev[n-3]]`.
    Shifted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    // ---- model (section 2)
    /// V: GPT-2 BPE vocabulary.
    pub vocab_size: usize,
    /// E: token embedding width.
    pub embed_dim: usize,
    /// C: context vector width.
    pub context_dim: usize,
    /// L: layers in the ContextBlock and in the TokenBlock.
    pub num_layers: usize,
    /// k: how many of the latest token vectors form the input (concatenated).
    pub num_input_tokens: usize,
    /// true = "old structure" (token into every context layer);
    /// false = "arithmetic decrease" (the seed's run).
    pub token_input_all_layers: bool,
    /// Tie the output head's weight to the embedding table.
    pub use_weight_tying: bool,
    /// safetensors file with GPT-2's `wte.weight` [V, E]; empty = random N(0, 0.02).
    pub pretrained_embeddings: String,
    /// Seed for initialisation, noise and subsampling; each cell re-seeds with it.
    pub seed: u64,

    // ---- data (section 1)
    /// Corpus path (parquet/JSONL/text); empty = the embedded chitchat corpus.
    pub corpus: String,
    /// "tail" (the seed's: each cell validates on its own stream's tail)
    /// or "heldout" (one fixed set of conversations for every cell).
    pub val_mode: ValMode,
    /// tail: fraction of the stream's tail used for validation,
    /// int(len * val_fraction).
    pub val_fraction: f64,
    /// heldout: conversations in the validation set, the corpus's last ones.
    /// 100 measured on the embedded corpus (BENCHMARKS.md, "Validation set
    /// size"): 43k tokens, and the n-gram's PPL change between consecutive
    /// default cells (-17% to -37%) then carries a validation-sampling
    /// interval of +/-2% to +/-9%; 200 halves that but adds ~3 minutes to
    /// the default sweep.
    pub val_samples: usize,
    /// Sweep cells: how many samples (conversations) each cell uses.
    pub sample_counts: Vec<usize>,

    // ---- Phase 1 (section 3)
    pub phase1_init: Phase1Init,
    pub phase1_learning_rate: f64,
    pub phase1_batch_size: usize,
    pub phase1_min_iterations: usize,
    pub phase1_max_iterations: usize,
    pub phase1_convergence_threshold: f64,
    pub phase1_min_converged_ratio: f64,
    pub phase1_context_noise: f64,
    pub phase1_gradient_clip: f64,
    /// w in loss = (1 - w) * cvfp + w * div.
    pub dist_reg_weight: f64,

    // ---- context caches (section 4)
    pub train_cache: TrainCache,

    // ---- Phase 2 (section 5)
    pub phase2_learning_rate: f64,
    /// Rows per Phase-2 step; explicit (the original derived it from free memory).
    pub phase2_batch_size: usize,
    pub phase2_epochs: usize,
    /// Epochs without improvement before stopping; 0 = off (fixed epochs).
    pub phase2_patience: usize,
    pub phase2_gradient_clip: f64,

    // ---- metrics (section 6)
    /// Rows sampled (seeded) for Effective Rank; 0 = all rows.
    pub effective_rank_max_rows: usize,

    // ---- runtime
    /// Worker threads; 0 = all cores.
    pub threads: usize,
    /// "cpu" or "cuda".
    pub device: Device,
    /// device = "cuda" only: let cuBLAS use TF32 tensor cores for the GEMMs
    /// (faster, ~1e-3 relative error; off keeps f32 parity with the CPU).
    pub cuda_allow_tf32: bool,
    /// GEMM arithmetic of New-LLM and the transformer baseline: "f32" (the
    /// original's) or "bf16" (inputs rounded to bf16, f32 accumulation and
    /// everything else f32; docs/algorithm.md section 8). bf16 runs our
    /// AVX512_BF16 GEMM where `vdpbf16ps` outruns the f32 FMA (Zen 4: ~2x);
    /// elsewhere the same numbers come at f32 speed (f32 GEMMs on rounded
    /// inputs), and only the recurrent pass gains (half the weight bytes).
    /// Each result records what ran (`precision_ran`).
    pub precision: Precision,
    /// How often a cell's resumable state is written at its safe points
    /// (after each Phase-1 iteration, each cache, each epoch): 0 = at every
    /// safe point while writing stays within 5% of the run's time (at the
    /// seed's size that is every one: BENCHMARKS.md, "resume state"; at
    /// `quick` sizes, where a step takes milliseconds, some are skipped);
    /// T > 0 = once T seconds have passed since the last write (1e-9: at
    /// every safe point). A stop signal always writes.
    pub state_interval_seconds: f64,

    // ---- baselines and replicates (the report's "compared with what?" and
    // "is it more than noise?")
    /// Standard models trained and evaluated on each cell's exact split next
    /// to New-LLM: any of "kn" (interpolated modified Kneser-Ney n-gram) and
    /// "transformer" (GPT-2-style decoder); [] = New-LLM alone.
    pub baselines: Vec<ModelKind>,
    /// Runs per cell with seeds seed, seed + 1, ... (New-LLM and the
    /// transformer: init, Phase-1 noise; the data and split are unchanged).
    /// The n-gram is deterministic and runs once.
    pub replicates: usize,
    /// n-gram order of the Kneser-Ney baseline. 4 measured best overall:
    /// Val PPL on the default sweep's cells (20/40/80/200 samples) was
    /// 598/627/418/256 at order 2, 584/614/403/241 at 3, 586/612/404/241 at
    /// 4, 585/611/404/241 at 5; at 500 and 2,000 samples 4 beats 3 by 0.3%
    /// and 0.9%, and 5 gains under 0.2% more for the largest tables.
    pub kn_order: usize,
    /// Transformer layers; 0 = num_layers.
    pub transformer_layers: usize,
    /// Transformer attention heads (transformer_dim must be a multiple).
    pub transformer_heads: usize,
    /// Transformer width d_model; 0 = the size rule: the multiple of
    /// transformer_heads whose non-embedding parameters come closest to
    /// New-LLM's ContextBlock + TokenBlock (without its head).
    pub transformer_dim: usize,
    /// Positions per transformer sequence (training and validation windows).
    pub transformer_block_size: usize,

    // ---- analysis (the report's scaling sections)
    /// Consecutive sample counts per sliding-window alpha (needs at least
    /// scaling_window + 1 counts).
    pub scaling_window: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            vocab_size: 50257,
            embed_dim: 768,
            context_dim: 768,
            num_layers: 6,
            num_input_tokens: 1,
            token_input_all_layers: false,
            use_weight_tying: false,
            pretrained_embeddings: String::new(),
            seed: 42,
            corpus: String::new(),
            val_mode: ValMode::Tail,
            val_fraction: 0.1,
            val_samples: 100,
            sample_counts: vec![50, 100, 200, 500],
            phase1_init: Phase1Init::Sequential,
            phase1_learning_rate: 0.002,
            phase1_batch_size: 8000,
            phase1_min_iterations: 5,
            phase1_max_iterations: 40,
            phase1_convergence_threshold: 0.03,
            phase1_min_converged_ratio: 0.95,
            phase1_context_noise: 0.1,
            phase1_gradient_clip: 1.0,
            dist_reg_weight: 0.8,
            train_cache: TrainCache::Sequential,
            phase2_learning_rate: 0.001,
            phase2_batch_size: 512,
            phase2_epochs: 10,
            phase2_patience: 1,
            phase2_gradient_clip: 1.0,
            effective_rank_max_rows: 10000,
            threads: 0,
            device: Device::Cpu,
            cuda_allow_tf32: false,
            precision: Precision::F32,
            state_interval_seconds: 0.0,
            baselines: vec![ModelKind::Kn, ModelKind::Transformer],
            replicates: 2,
            kn_order: 4,
            transformer_layers: 0,
            transformer_heads: 4,
            transformer_dim: 0,
            transformer_block_size: 128,
            scaling_window: 3,
        }
    }
}

impl Config {
    /// Reads a preset TOML file (fields not named keep their defaults).
    pub fn from_toml_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let cfg: Config = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        cfg.validate()
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok(cfg)
    }

    /// Applies `key=value` overrides; the value is parsed as TOML
    /// (`phase2_patience=3`, `phase1_init=random`, `sample_counts=[10,20]`).
    pub fn apply_overrides(&mut self, sets: &[String]) -> Result<()> {
        let mut table = toml::Table::try_from(&*self).context("serialising config")?;
        let mut cfg = self.clone();
        for set in sets {
            let (key, value) = set
                .split_once('=')
                .with_context(|| format!("--set {set:?}: expected key=value"))?;
            let key = key.trim();
            if !table.contains_key(key) {
                bail!(
                    "--set {set:?}: unknown config field {key:?} (see src/config.rs for the list)"
                );
            }
            let value = value.trim();
            let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
                Ok(mut t) => t.remove("v").context("parsing value")?,
                // Bare words (random, shifted, cpu) are strings.
                Err(_) => toml::Value::String(value.to_string()),
            };
            table.insert(key.to_string(), parsed);
            // Converted per setting, so a type error names the field it came from.
            cfg = table.clone().try_into().map_err(|e: toml::de::Error| {
                anyhow::anyhow!("--set {set:?}: field {key:?}: {}", e.message())
            })?;
        }
        cfg.validate()?;
        *self = cfg;
        Ok(())
    }

    /// Rejects settings the algorithm cannot run with, naming the field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("embed_dim", self.embed_dim),
            ("context_dim", self.context_dim),
            ("num_layers", self.num_layers),
            ("num_input_tokens", self.num_input_tokens),
            ("phase1_batch_size", self.phase1_batch_size),
            ("phase1_max_iterations", self.phase1_max_iterations),
            ("phase2_batch_size", self.phase2_batch_size),
            ("phase2_epochs", self.phase2_epochs),
            ("replicates", self.replicates),
            ("kn_order", self.kn_order),
            ("transformer_heads", self.transformer_heads),
            ("transformer_block_size", self.transformer_block_size),
            ("val_samples", self.val_samples),
        ];
        for (name, v) in positive {
            if v == 0 {
                bail!("config field {name} must be at least 1");
            }
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            bail!(
                "config field val_fraction must be in (0, 1), got {}",
                self.val_fraction
            );
        }
        if !(0.0..=1.0).contains(&self.dist_reg_weight) {
            bail!(
                "config field dist_reg_weight must be in [0, 1], got {}",
                self.dist_reg_weight
            );
        }
        if self.use_weight_tying && self.embed_dim != self.token_dims().last().copied().unwrap_or(0)
        {
            bail!("use_weight_tying needs the last token width to equal embed_dim");
        }
        for (i, b) in self.baselines.iter().enumerate() {
            if *b == ModelKind::NewLlm {
                bail!("config field baselines: newllm is the model itself, not a baseline; choose from [\"kn\", \"transformer\"] (or [] for none)");
            }
            if self.baselines[..i].contains(b) {
                bail!("config field baselines names {:?} twice", b.name());
            }
        }
        if !self.transformer_dim.is_multiple_of(self.transformer_heads) {
            bail!(
                "config field transformer_dim ({}) must be a multiple of transformer_heads ({})",
                self.transformer_dim,
                self.transformer_heads
            );
        }
        if !(self.state_interval_seconds >= 0.0 && self.state_interval_seconds.is_finite()) {
            bail!(
                "config field state_interval_seconds must be 0 (write at safe points within 5% of the time) or a positive number of seconds, got {}",
                self.state_interval_seconds
            );
        }
        if self.precision == Precision::Bf16 && self.device == Device::Cuda {
            bail!("config field precision = \"bf16\" runs on the CPU only; use device = \"cpu\" or precision = \"f32\"");
        }
        if self.sample_counts.is_empty() || self.sample_counts.contains(&0) {
            bail!("config field sample_counts must be a non-empty list of positive counts");
        }
        if self.scaling_window < 2 {
            bail!(
                "config field scaling_window must be at least 2 (a slope needs two sample counts), got {}",
                self.scaling_window
            );
        }
        Ok(())
    }

    /// The config with every field blanked that cannot change one run's
    /// numbers: what "the same run" means wherever it is asked (a sweep
    /// directory, a finished result, a resume state). Blanked:
    /// - `threads`, `state_interval_seconds`: how a run is computed and
    ///   saved, not what (a thread-count change is warned about on resume);
    /// - `device`: a sweep may mix CPU and GPU processes, each result
    ///   records where it ran (`ran_on`); a resume state keeps its device
    ///   (state.rs), since its contents are the device's;
    /// - `sample_counts`, `replicates`: which cells and seeds a sweep holds,
    ///   not what one of them computes, so a finished sweep can grow;
    /// - `scaling_window`: an analysis setting;
    /// - the validation setting the mode does not use (`val_fraction` in
    ///   heldout mode, `val_samples` in tail mode).
    pub fn identity(&self) -> Config {
        let unused = Config::default();
        Config {
            threads: 0,
            state_interval_seconds: 0.0,
            device: Device::Cpu,
            sample_counts: Vec::new(),
            replicates: 0,
            // The report's, read when it is written.
            scaling_window: 0,
            val_fraction: match self.val_mode {
                ValMode::Tail => self.val_fraction,
                ValMode::Heldout => unused.val_fraction,
            },
            val_samples: match self.val_mode {
                ValMode::Tail => unused.val_samples,
                ValMode::Heldout => self.val_samples,
            },
            ..self.clone()
        }
    }

    /// Token input width kE.
    pub fn token_input_dim(&self) -> usize {
        self.num_input_tokens * self.embed_dim
    }

    /// Context widths d_0..d_L (docs/algorithm.md section 2). In false mode
    /// d_i = (C + kE) - (kE * i) / L; d_0 is the width of layer 0's
    /// concatenated input. In true mode every layer keeps C (d_0 = C).
    pub fn context_dims(&self) -> Vec<usize> {
        let (c, ke, l) = (self.context_dim, self.token_input_dim(), self.num_layers);
        if self.token_input_all_layers {
            vec![c; l + 1]
        } else {
            (0..=l).map(|i| (c + ke) - (ke * i) / l).collect()
        }
    }

    /// Output width of each ContextBlock layer (c_1..c_L).
    pub fn context_layer_output_dims(&self) -> Vec<usize> {
        let d = self.context_dims();
        if self.token_input_all_layers {
            vec![self.context_dim; self.num_layers]
        } else {
            d[1..].to_vec()
        }
    }

    /// Token widths t_0..t_L: kE down to E arithmetically.
    pub fn token_dims(&self) -> Vec<usize> {
        let (e, ke, l) = (self.embed_dim, self.token_input_dim(), self.num_layers);
        (0..=l).map(|i| ke - ((ke - e) * i) / l).collect()
    }

    /// Loads `presets/NAME.toml` from the repo (or a path to a TOML file).
    pub fn preset(name: &str) -> Result<Config> {
        let as_path = Path::new(name);
        if as_path.extension().is_some_and(|e| e == "toml") {
            return Config::from_toml_file(as_path);
        }
        match PRESETS.iter().find(|(n, _)| *n == name) {
            Some((_, text)) => {
                let cfg: Config = toml::from_str(text)
                    .with_context(|| format!("built-in preset {name} is invalid"))?;
                cfg.validate()?;
                Ok(cfg)
            }
            None => {
                let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                bail!("unknown preset {name:?}: choose one of {names:?} or give a .toml file path")
            }
        }
    }
}

/// Presets compiled in from `presets/*.toml`, so the binary works from anywhere.
pub const PRESETS: &[(&str, &str)] = &[
    ("seed", include_str!("../presets/seed.toml")),
    ("seed-true", include_str!("../presets/seed-true.toml")),
    ("quick", include_str!("../presets/quick.toml")),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_dims_match_spec() {
        let c = Config::default();
        assert_eq!(
            c.context_dims(),
            vec![1536, 1408, 1280, 1152, 1024, 896, 768]
        );
        assert_eq!(c.token_dims(), vec![768; 7]);
    }

    #[test]
    fn overrides_parse_and_reject() {
        let mut c = Config::default();
        c.apply_overrides(&[
            "phase2_patience=3".into(),
            "phase1_init=random".into(),
            "sample_counts=[10, 20]".into(),
        ])
        .unwrap();
        assert_eq!(c.phase2_patience, 3);
        assert_eq!(c.phase1_init, Phase1Init::Random);
        assert_eq!(c.sample_counts, vec![10, 20]);
        let err = c.apply_overrides(&["no_such_field=1".into()]).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown config field \"no_such_field\""),
            "{err}"
        );
        let err = c
            .apply_overrides(&["phase2_batch_size=0".into()])
            .unwrap_err();
        assert!(err.to_string().contains("phase2_batch_size"), "{err}");
        let err = c.apply_overrides(&["num_layers=abc".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--set \"num_layers=abc\": field \"num_layers\": invalid type: string \"abc\", expected usize"
        );
        for bad in ["-1", "nan", "inf"] {
            let err = c
                .apply_overrides(&[format!("state_interval_seconds={bad}")])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("config field state_interval_seconds must be 0 ("),
                "{err}"
            );
        }
        c.apply_overrides(&["state_interval_seconds=600".into()])
            .unwrap();
        assert_eq!(c.state_interval_seconds, 600.0);
        c.apply_overrides(&["precision=bf16".into()]).unwrap();
        assert_eq!(c.precision, Precision::Bf16);
        let err = c.apply_overrides(&["precision=fp8".into()]).unwrap_err();
        assert!(err.to_string().contains("unknown variant `fp8`"), "{err}");
        let err = c
            .apply_overrides(&["device=cuda".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "config field precision = \"bf16\" runs on the CPU only; use device = \"cpu\" or precision = \"f32\"");
    }

    #[test]
    fn presets_load() {
        for (name, _) in PRESETS {
            Config::preset(name).unwrap();
        }
        assert_eq!(
            Config::preset("seed").unwrap(),
            Config {
                phase2_batch_size: Config::preset("seed").unwrap().phase2_batch_size,
                ..Config::default()
            }
        );
    }
}
