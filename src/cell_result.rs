//! What one cell records: a `CellResult` with every figure the seed document
//! reports and the full config. Written by each model's cell runner; read by
//! the experiment code (sweep, statistics, report).

use crate::config::{Config, ModelKind};
use serde::{Deserialize, Serialize};

/// One Phase-1 iteration (iteration 1 is the init and has no losses).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Phase1Iteration {
    pub iteration: usize,
    pub total_loss: f64,
    pub cvfp_loss: f64,
    pub diversity_loss: f64,
    pub convergence_rate: f64,
    pub converged_tokens: usize,
    pub grad_norm_before_clip: f64,
    pub seconds: f64,
}

/// One Phase-2 epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Epoch {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_ppl: f64,
    pub val_loss: f64,
    pub val_ppl: f64,
    /// Fraction of validation positions whose argmax is the next token.
    pub val_acc: f64,
    pub seconds: f64,
}

/// Wall-clock seconds per stage of one cell, in the order the stages ran,
/// with "total" last; written as a JSON object (old files' `seconds` read
/// as they are).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timings(pub Vec<(String, f64)>);

impl Timings {
    /// Adds `seconds` to `stage` (appended if new).
    pub fn add(&mut self, stage: &str, seconds: f64) {
        match self.0.iter_mut().find(|(s, _)| s == stage) {
            Some((_, v)) => *v += seconds,
            None => self.0.push((stage.to_string(), seconds)),
        }
    }

    pub fn get(&self, stage: &str) -> Option<f64> {
        self.0.iter().find(|(s, _)| s == stage).map(|(_, v)| *v)
    }

    /// The cell's wall time ("total"; 0 if not recorded).
    pub fn total(&self) -> f64 {
        self.get("total").unwrap_or(0.0)
    }
}

impl Serialize for Timings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Timings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timings, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Timings;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of stage names to seconds")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Timings, A::Error> {
                let mut t = Timings::default();
                while let Some((k, v)) = a.next_entry::<String, f64>()? {
                    t.0.push((k, v));
                }
                Ok(t)
            }
        }
        d.deserialize_map(Visit)
    }
}

/// What only New-LLM records: the Effective Rank of its contexts and the
/// Phase-1 log (docs/algorithm.md sections 3 and 6).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NewLlmResult {
    /// Effective Rank as a fraction of context_dim (train = final Phase-1 prev).
    pub train_er: f64,
    /// Effective Rank as a fraction of context_dim (validation sequential pass).
    pub val_er: f64,
    pub train_er_abs: f64,
    pub val_er_abs: f64,
    pub phase1_iterations: usize,
    pub phase1_converged: bool,
    pub phase1_final_convergence_rate: f64,
    pub phase1: Vec<Phase1Iteration>,
}

/// Stands in for the New-LLM part of a cell that has none (NaN figures, no
/// log), so code reading ER from a mixed list needs no special case.
static NO_NEWLLM_PART: NewLlmResult = NewLlmResult {
    train_er: f64::NAN,
    val_er: f64::NAN,
    train_er_abs: f64::NAN,
    val_er_abs: f64::NAN,
    phase1_iterations: 0,
    phase1_converged: false,
    phase1_final_convergence_rate: f64::NAN,
    phase1: Vec::new(),
};

fn cpu_name() -> String {
    "cpu".into()
}

/// One trained and evaluated cell of one model: the common figures every
/// model reports, plus the model's own part (flattened into the same JSON
/// object, so cell files written before models had parts read unchanged).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    /// Which model: "newllm", "kn" or "transformer".
    #[serde(default)]
    pub model: ModelKind,
    /// Replicate index: the run used seed = base seed + replicate (recorded
    /// in `config.seed`).
    #[serde(default)]
    pub replicate: usize,
    /// Where the model ran: "cpu" or the GPU's name.
    #[serde(default = "cpu_name")]
    pub ran_on: String,
    /// The arithmetic that ran (`config.precision` as this CPU runs it, e.g.
    /// "bf16 (AVX512_BF16 GEMM)"); "n/a" for the n-gram, which counts.
    /// Empty in files written before precision was configurable (f32).
    #[serde(default)]
    pub precision_ran: String,
    /// Samples (conversations) in this cell.
    pub samples: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
    /// Best epoch's validation figures (what the seed reports).
    pub val_ppl: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    /// The validation set's identity (a hash of its token ids,
    /// `Split::val_set_id`): runs are fitted or compared together only
    /// when theirs agree (tail mode: per cell).
    #[serde(default)]
    pub val_set: String,
    /// Per validation sample (conversation), the best epoch's loss summed
    /// over the positions whose target lies in it, and how many those are:
    /// what the report resamples for the validation set's own error.
    #[serde(default)]
    pub val_sample_losses: Vec<f64>,
    #[serde(default)]
    pub val_sample_positions: Vec<usize>,
    /// 1-based; 0 for a model without epochs (the n-gram).
    pub best_epoch: usize,
    /// Last epoch run, 1-based.
    pub stop_epoch: usize,
    pub early_stopped: bool,
    pub epochs: Vec<Epoch>,
    pub seconds: Timings,
    /// Threads the run used (results are reproducible for equal threads).
    pub threads: usize,
    /// Peak resident memory predicted before the run, bytes.
    pub predicted_peak_bytes: u64,
    /// Peak resident memory of the process measured after the cell (VmHWM), bytes.
    #[serde(default)]
    pub measured_peak_bytes: u64,
    pub config: Config,
    /// The model's shape as run (e.g. "3 layers x d_model 48, 4 heads, block 128").
    #[serde(default)]
    pub architecture: String,
    /// Parameters trained, those outside the embeddings and output head,
    /// and GEMM FLOPs per training token (forward + backward), so models of
    /// different kinds can be set side by side.
    #[serde(default)]
    pub trainable_params: u64,
    #[serde(default)]
    pub non_embedding_params: u64,
    #[serde(default)]
    pub train_flops_per_token: f64,
    /// New-LLM's own figures; None for the baselines.
    #[serde(flatten)]
    pub newllm: Option<NewLlmResult>,
}

/// An empty New-LLM result on the CPU, as a file without those fields reads.
impl Default for CellResult {
    fn default() -> Self {
        CellResult {
            model: ModelKind::NewLlm,
            replicate: 0,
            ran_on: cpu_name(),
            precision_ran: String::new(),
            samples: 0,
            train_tokens: 0,
            val_tokens: 0,
            val_ppl: 0.0,
            val_loss: 0.0,
            val_acc: 0.0,
            val_set: String::new(),
            val_sample_losses: Vec::new(),
            val_sample_positions: Vec::new(),
            best_epoch: 0,
            stop_epoch: 0,
            early_stopped: false,
            epochs: Vec::new(),
            seconds: Timings::default(),
            threads: 0,
            predicted_peak_bytes: 0,
            measured_peak_bytes: 0,
            config: Config::default(),
            architecture: String::new(),
            trainable_params: 0,
            non_embedding_params: 0,
            train_flops_per_token: 0.0,
            newllm: None,
        }
    }
}

impl CellResult {
    /// New-LLM's part of the result (NaN figures for a baseline).
    pub fn nl(&self) -> &NewLlmResult {
        self.newllm.as_ref().unwrap_or(&NO_NEWLLM_PART)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cell file written before results had model parts reads unchanged:
    /// New-LLM's figures land in its part, the stages keep their order.
    #[test]
    fn old_cell_files_stay_readable() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benchmarks/seed-500/cell-500.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let r: CellResult = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (r.model.name(), r.replicate, r.ran_on.as_str()),
            ("newllm", 0, "cpu")
        );
        assert_eq!((r.samples, r.train_tokens, r.best_epoch), (500, 203_878, 2));
        let n = r.newllm.as_ref().expect("the New-LLM part");
        assert_eq!(n.train_er, 0.2962978889057686);
        assert_eq!((n.phase1_iterations, n.phase1.len()), (34, 34));
        let stages: Vec<&str> = r.seconds.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(stages[0], "data");
        assert_eq!(stages.last(), Some(&"total"));
        assert!(
            (r.seconds.total() - 6182.4).abs() < 1.0,
            "{}",
            r.seconds.total()
        );
        // Written back, the same figures sit at the top level again.
        let back: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(back["train_er"], 0.2962978889057686);
        assert_eq!(back["model"], "newllm");
    }

    /// A baseline's result has no New-LLM part and reads back as None.
    #[test]
    fn results_without_a_model_part_round_trip() {
        let r = CellResult {
            model: ModelKind::Kn,
            samples: 3,
            val_ppl: 12.5,
            ..CellResult::default()
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("train_er"), "{text}");
        let back: CellResult = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert!(back.nl().val_er.is_nan());
    }
}
