//! What a New-LLM cell keeps in its resumable state (state.rs) at each
//! safe point, and how it reads it back. The arrays by stage:
//!   phase1       context, phase1_adam_m, phase1_adam_v, prev
//!   train_cache  context, train_src
//!   caches       context, train_src, val_src
//!   phase2       context, train_src, val_src, token, phase2_adam_m,
//!                phase2_adam_v, best_token
//! Everything else an exact continuation needs (logs, Adam step counts, the
//! noise RNG, Effective Ranks, early-stopping counters, seconds so far) is in
//! the meta.

use super::model::Model;
use super::phase1::Phase1Resume;
use super::phase2::Phase2Resume;
use crate::cell_result::{Epoch, Phase1Iteration, Timings};
use crate::ops::Adam;
use crate::rng::Rng;
use crate::state::Loaded;
use crate::train_loop::EpochProgress;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// The last safe point a state was written at, in the order a cell runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    #[default]
    Phase1,
    TrainCache,
    Caches,
    Phase2,
}

/// Wall-clock seconds of each stage of a New-LLM cell (summed over resumes).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct StageSeconds {
    pub data: f64,
    pub phase1: f64,
    pub train_cache: f64,
    pub val_cache: f64,
    pub effective_rank: f64,
    pub phase2: f64,
    pub state_write: f64,
    pub total: f64,
}

impl StageSeconds {
    /// In the order the stages run, as the result files have always listed them.
    pub fn timings(&self) -> Timings {
        Timings(
            [
                ("data", self.data),
                ("phase1", self.phase1),
                ("train_cache", self.train_cache),
                ("val_cache", self.val_cache),
                ("effective_rank", self.effective_rank),
                ("phase2", self.phase2),
                ("state_write", self.state_write),
                ("total", self.total),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        )
    }

    /// The running totals at a safe point: `base` from earlier runs, this
    /// run `started` at that instant and has spent `written` seconds writing.
    pub fn stamp(&mut self, base: &StageSeconds, started: std::time::Instant, written: f64) {
        self.state_write = base.state_write + written;
        self.total = base.total + started.elapsed().as_secs_f64();
    }
}

/// The meta of a New-LLM state (the default: a cell before its first iteration).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    pub stage: Stage,
    pub seconds: StageSeconds,
    pub phase1_log: Vec<Phase1Iteration>,
    /// From `train_cache` on.
    pub phase1_converged: bool,
    /// Stage `phase1` only.
    pub phase1_adam_t: u32,
    pub noise: Option<Rng>,
    /// Absolute Effective Ranks, from `train_cache` (train) and `caches` (val) on.
    pub train_er: f64,
    pub val_er: f64,
    /// Stage `phase2` only.
    pub phase2: Option<EpochProgress>,
    pub phase2_adam_t: u32,
}

impl Meta {
    /// The cell's log lines so far (log.jsonl), as an uninterrupted run wrote them.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        let phase1 = self.phase1_log.iter().map(phase1_line);
        let phase2 = self.phase2.iter().flat_map(|p| &p.epochs).map(phase2_line);
        phase1.chain(phase2).collect()
    }
}

/// A Phase-1 iteration's line in the cell's log.
pub fn phase1_line(it: &Phase1Iteration) -> serde_json::Value {
    serde_json::json!({"stage": "phase1", "iteration": it})
}

/// A Phase-2 epoch's line in the cell's log.
pub fn phase2_line(e: &Epoch) -> serde_json::Value {
    serde_json::json!({"stage": "phase2", "epoch": e})
}

/// The names of the state's arrays, used by writing (`Arrays::named`) and
/// restoring (`restore`) alike.
const CONTEXT: &str = "context";
const PHASE1_ADAM_M: &str = "phase1_adam_m";
const PHASE1_ADAM_V: &str = "phase1_adam_v";
const PREV: &str = "prev";
const TRAIN_SRC: &str = "train_src";
const VAL_SRC: &str = "val_src";
const TOKEN: &str = "token";
const PHASE2_ADAM_M: &str = "phase2_adam_m";
const PHASE2_ADAM_V: &str = "phase2_adam_v";
const BEST_TOKEN: &str = "best_token";

/// Phase 1's own arrays at an iteration's safe point.
pub struct Phase1Arrays<'a> {
    pub adam: &'a Adam,
    pub prev: &'a [f32],
}

/// Phase 2's own arrays at an epoch's safe point.
pub struct Phase2Arrays<'a> {
    pub token: &'a [f32],
    pub adam: &'a Adam,
    pub best_token: &'a [f32],
}

/// What a state holds at one safe point, by stage (the module docs' table).
pub struct Arrays<'a> {
    pub context: &'a [f32],
    pub phase1: Option<Phase1Arrays<'a>>,
    pub train_src: Option<&'a [f32]>,
    pub val_src: Option<&'a [f32]>,
    pub phase2: Option<Phase2Arrays<'a>>,
}

impl<'a> Arrays<'a> {
    /// The arrays with their names, in file order.
    pub fn named(&self) -> Vec<(&'static str, &'a [f32])> {
        let mut out = vec![(CONTEXT, self.context)];
        if let Some(p) = &self.phase1 {
            out.extend([
                (PHASE1_ADAM_M, &p.adam.m[..]),
                (PHASE1_ADAM_V, &p.adam.v[..]),
                (PREV, p.prev),
            ]);
        }
        out.extend(self.train_src.map(|a| (TRAIN_SRC, a)));
        out.extend(self.val_src.map(|a| (VAL_SRC, a)));
        if let Some(p) = &self.phase2 {
            out.extend([
                (TOKEN, p.token),
                (PHASE2_ADAM_M, &p.adam.m[..]),
                (PHASE2_ADAM_V, &p.adam.v[..]),
                (BEST_TOKEN, p.best_token),
            ]);
        }
        out
    }
}

/// A state read back for this cell, its arrays taken out by stage (the
/// default: no state, a fresh cell).
#[derive(Default)]
pub struct Saved {
    pub meta: Meta,
    pub phase1: Option<Phase1Resume>,
    pub train_src: Option<Vec<f32>>,
    pub val_src: Option<Vec<f32>>,
    pub phase2: Option<Phase2Resume>,
}

fn adam(m: Vec<f32>, v: Vec<f32>, t: u32, lr: f64) -> Adam {
    Adam { lr, m, v, t }
}

/// Takes a loaded state apart, putting its trained weights into `model`.
pub fn restore(mut l: Loaded, model: &mut Model, n: usize, m: usize) -> Result<Saved> {
    let meta: Meta = l.meta()?;
    let cfg = model.cfg.clone();
    let c = cfg.context_dim;
    let (pc, pt) = (
        model.context.params.data.len(),
        model.token.params.data.len(),
    );
    model.context.params.data = l.take(CONTEXT, pc)?;
    let mut saved = Saved {
        meta: meta.clone(),
        phase1: None,
        train_src: None,
        val_src: None,
        phase2: None,
    };
    if meta.stage == Stage::Phase1 {
        saved.phase1 = Some(Phase1Resume {
            log: meta.phase1_log.clone(),
            adam: adam(
                l.take(PHASE1_ADAM_M, pc)?,
                l.take(PHASE1_ADAM_V, pc)?,
                meta.phase1_adam_t,
                cfg.phase1_learning_rate,
            ),
            prev: l.take(PREV, n * c)?,
            noise: meta
                .noise
                .clone()
                .ok_or_else(|| anyhow::anyhow!("a Phase-1 state without its noise RNG"))?,
        });
        return Ok(saved);
    }
    saved.train_src = Some(l.take(TRAIN_SRC, (n - 1) * c)?);
    if meta.stage >= Stage::Caches {
        saved.val_src = Some(l.take(VAL_SRC, (m - 1) * c)?);
    }
    if meta.stage == Stage::Phase2 {
        model.token.params.data = l.take(TOKEN, pt)?;
        saved.phase2 = Some(Phase2Resume {
            progress: meta
                .phase2
                .clone()
                .ok_or_else(|| anyhow::anyhow!("a Phase-2 state without its epochs"))?,
            adam: adam(
                l.take(PHASE2_ADAM_M, pt)?,
                l.take(PHASE2_ADAM_V, pt)?,
                meta.phase2_adam_t,
                cfg.phase2_learning_rate,
            ),
            best_params: l.take(BEST_TOKEN, pt)?,
        });
    }
    Ok(saved)
}

/// f32 values of a Phase-1 state (contexts + the ContextBlock and its two
/// Adam moments) and of a Phase-2 state (both caches, the ContextBlock, and
/// the TokenBlock + head with its moments and best copy).
pub fn state_values(
    ctx_params: usize,
    tok_params: usize,
    n: usize,
    m: usize,
    c: usize,
) -> (u64, u64) {
    let phase1 = n * c + 3 * ctx_params;
    let phase2 = (n + m - 2) * c + ctx_params + 4 * tok_params;
    (phase1 as u64, phase2 as u64)
}
