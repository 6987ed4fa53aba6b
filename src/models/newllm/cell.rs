//! One New-LLM cell on a given train/validation split: Phase 1 -> caches ->
//! Effective Rank -> Phase 2 -> checkpoint, with per-stage timing, an
//! on-disk log written as it goes, a memory and disk estimate checked before
//! anything large is made, and a resumable state at every safe point (after
//! each Phase-1 iteration, each cache, each epoch; resume.rs) from which a
//! rerun continues exactly.

use super::checkpoint::save_checkpoint;
use super::engine::{self, Engine};
use super::memory::{predict_peak_bytes, predict_state_bytes};
use super::metrics::effective_rank;
use super::model::Model;
use super::phase2::Stream;
use super::resume::{
    phase1_line, phase2_line, restore, Arrays, Meta, Phase1Arrays, Phase2Arrays, Saved, Stage,
    StageSeconds,
};
use crate::cell_result::NewLlmResult;
use crate::config::Config;
use crate::data::{load_pretrained_embeddings, Split};
use crate::io::{log_line, rewrite_log};
use crate::memory::{gib, refuse_if_disk_too_small, refuse_if_too_big};
use crate::models::{CellPaths, ModelRun, Scored};
use crate::state::{Fingerprint, Saver};
use crate::train_loop::EpochProgress;
use anyhow::{bail, Result};
use std::path::Path;
use std::time::Instant;

/// GEMM FLOPs of one Phase-2 training position: the frozen ContextBlock
/// recomputed forward (2 per weight), TokenBlock + head forward and backward
/// (6 per weight). Phase 1 adds 6 per ContextBlock weight per token and
/// iteration before that.
pub fn phase2_flops_per_token(ctx: usize, tok: usize, head: usize) -> f64 {
    2.0 * ctx as f64 + 6.0 * (tok + head) as f64
}

/// Trains and evaluates New-LLM on one split, continuing from the cell's
/// state if a rerun finds one. Prints progress lines; writes the log,
/// state and checkpoint to `paths` (the caller writes the result and then
/// removes the state).
pub fn run(cfg: &Config, split: &Split, paths: &CellPaths) -> Result<ModelRun> {
    let mut cell = Cell::open(cfg, split, paths)?;
    let train_src = cell.phase1_and_train_cache()?;
    let val_src = cell.val_cache(&train_src)?;
    let best_token = cell.phase2(&train_src, &val_src)?;
    cell.finish(&best_token)
}

/// One cell in progress: the model, the engine running its stages, the
/// state's writer and meta, and what a state held for the stages still to run.
struct Cell<'a> {
    cfg: &'a Config,
    split: &'a Split,
    paths: &'a CellPaths,
    engine: Box<dyn Engine>,
    model: Model,
    saver: Saver,
    meta: Meta,
    saved: Saved,
    /// The seconds of earlier runs, and when this one started.
    base: StageSeconds,
    started: Instant,
    threads: usize,
    predicted: u64,
    /// The Phase-2 curve, once run.
    progress: Option<EpochProgress>,
}

impl<'a> Cell<'a> {
    /// Checks and predictions before anything large is made, the model, and
    /// the state if an interrupted run left one (its log rewritten to match).
    fn open(cfg: &'a Config, split: &'a Split, paths: &'a CellPaths) -> Result<Cell<'a>> {
        let started = Instant::now();
        let threads = crate::ops::threads();
        let engine = engine::for_config(cfg)?;
        if cfg.num_input_tokens > split.val.len() {
            bail!(
                "num_input_tokens = {} is larger than the validation stream ({} tokens); use more samples or a smaller k",
                cfg.num_input_tokens,
                split.val.len()
            );
        }
        let (n, m) = (split.train.len(), split.val.len());
        // Predicted from the config, before the model or any buffer exists.
        let predicted = predict_peak_bytes(cfg, n, m);
        let state_bytes = predict_state_bytes(cfg, n, m);
        eprintln!(
            "cell {} samples: {n} train / {m} val tokens, {} threads, predicted peak memory {}, resume state up to {} on disk",
            split.samples,
            threads,
            gib(predicted),
            gib(state_bytes)
        );
        refuse_if_too_big(
            predicted,
            "use fewer samples, a smaller embed_dim / context_dim / phase1_batch_size / phase2_batch_size, or a machine with more memory",
        )?;
        refuse_if_disk_too_small(&paths.state, state_bytes)?;
        let t = Instant::now();
        let embedding = if cfg.pretrained_embeddings.is_empty() {
            None
        } else {
            Some(load_pretrained_embeddings(
                Path::new(&cfg.pretrained_embeddings),
                cfg.vocab_size,
                cfg.embed_dim,
            )?)
        };
        let data_seconds = t.elapsed().as_secs_f64();
        let mut model = Model::new(cfg, embedding)?;
        let saver = Saver::new(
            paths.state.clone(),
            Fingerprint::new(cfg, &split.train, &split.val)?,
            cfg,
        );
        // The state's weights go into `model`.
        let saved = match saver.load()? {
            Some(l) => {
                let s = restore(l, &mut model, n, m)?;
                eprintln!(
                    "  resuming from {} (stage {:?}, Phase-1 iteration {}{})",
                    saver.path.display(),
                    s.meta.stage,
                    s.meta.phase1_log.len(),
                    s.meta
                        .phase2
                        .as_ref()
                        .map_or(String::new(), |p| format!(", epoch {}", p.stop_epoch()))
                );
                s
            }
            None => Saved::default(),
        };
        let mut meta = saved.meta.clone();
        // The log so far is the state's; lines written after it are redone.
        rewrite_log(&paths.log, &meta.log_lines())?;
        meta.seconds.data += data_seconds;
        let base = meta.seconds.clone();
        Ok(Cell {
            cfg,
            split,
            paths,
            engine,
            model,
            saver,
            meta,
            saved,
            base,
            started,
            threads,
            predicted,
            progress: None,
        })
    }

    /// Phase 1 (fresh or resumed), the train Effective Rank and the training
    /// cache; or the cache a state already holds.
    fn phase1_and_train_cache(&mut self) -> Result<Vec<f32>> {
        if let Some(src) = self.saved.train_src.take() {
            if self.saved.phase1.is_none() {
                return Ok(src);
            }
        }
        let Cell {
            cfg,
            split,
            paths,
            engine,
            model,
            saver,
            meta,
            saved,
            base,
            started,
            ..
        } = self;
        let t = Instant::now();
        let p1 = Engine::phase1_run(
            &mut **engine,
            model,
            &split.train,
            None,
            saved.phase1.take(),
            &mut |log_so_far, snapshot| {
                let it = log_so_far.last().expect("a report follows an iteration");
                eprintln!(
                    "  phase1 iter {:>2}: loss {:+.5} cvfp {:.5} div {:+.5} conv {:.1}% ({:.1}s)",
                    it.iteration,
                    it.total_loss,
                    it.cvfp_loss,
                    it.diversity_loss,
                    100.0 * it.convergence_rate,
                    it.seconds
                );
                log_line(&paths.log, &phase1_line(it))?;
                let Some(s) = snapshot else {
                    return saver.safe_point_without_state(&format!("phase1-{}", it.iteration));
                };
                meta.phase1_log = log_so_far.to_vec();
                meta.phase1_adam_t = s.adam.t;
                meta.noise = Some(s.noise.clone());
                meta.seconds.phase1 = base.phase1 + t.elapsed().as_secs_f64();
                meta.seconds.stamp(base, *started, saver.seconds);
                let arrays = Arrays {
                    context: s.context_params,
                    phase1: Some(Phase1Arrays {
                        adam: s.adam,
                        prev: s.prev,
                    }),
                    train_src: None,
                    val_src: None,
                    phase2: None,
                };
                saver.safe_point(
                    &format!("phase1-{}", it.iteration),
                    || Ok(serde_json::to_value(&*meta)?),
                    &arrays.named(),
                )
            },
        )
        .map_err(|e| e.context(format!("log so far: {}", paths.log.display())))?;
        meta.phase1_log = p1.log;
        meta.phase1_converged = p1.converged;
        meta.noise = None;
        meta.seconds.phase1 = base.phase1 + t.elapsed().as_secs_f64();
        let t = Instant::now();
        let c = cfg.context_dim;
        meta.train_er = effective_rank(&p1.prev, c, cfg.effective_rank_max_rows, cfg.seed)?.0;
        meta.seconds.effective_rank += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let src = engine.train_cache(model, &split.train, &p1.prev)?;
        drop(p1.prev);
        meta.seconds.train_cache += t.elapsed().as_secs_f64();
        meta.stage = Stage::TrainCache;
        self.safe_point("train_cache", Some(&src), None, None)?;
        Ok(src)
    }

    /// The validation cache and its Effective Rank, or the one a state holds.
    fn val_cache(&mut self, train_src: &[f32]) -> Result<Vec<f32>> {
        let src = match self.saved.val_src.take() {
            Some(src) => src,
            None => {
                let (cfg, m) = (self.cfg, self.split.val.len());
                let t = Instant::now();
                let src = self
                    .engine
                    .sequential_pass(&self.model, &self.split.val, m - 1)?;
                self.meta.seconds.val_cache += t.elapsed().as_secs_f64();
                let t = Instant::now();
                self.meta.val_er =
                    effective_rank(&src, cfg.context_dim, cfg.effective_rank_max_rows, cfg.seed)?.0;
                self.meta.seconds.effective_rank += t.elapsed().as_secs_f64();
                self.meta.stage = Stage::Caches;
                self.safe_point("val_cache", Some(train_src), Some(&src), None)?;
                src
            }
        };
        let c = self.cfg.context_dim as f64;
        eprintln!(
            "  effective rank: train {:.1}% val {:.1}% (caches {:.1}s + {:.1}s)",
            100.0 * self.meta.train_er / c,
            100.0 * self.meta.val_er / c,
            self.meta.seconds.train_cache,
            self.meta.seconds.val_cache
        );
        Ok(src)
    }

    /// Writes the state at a safe point between stages (the stage's arrays
    /// after the ContextBlock).
    fn safe_point(
        &mut self,
        point: &str,
        train_src: Option<&[f32]>,
        val_src: Option<&[f32]>,
        phase2: Option<Phase2Arrays>,
    ) -> Result<()> {
        self.meta
            .seconds
            .stamp(&self.base, self.started, self.saver.seconds);
        let arrays = Arrays {
            context: &self.model.context.params.data,
            phase1: None,
            train_src,
            val_src,
            phase2,
        };
        let meta = &self.meta;
        self.saver
            .safe_point(point, || Ok(serde_json::to_value(meta)?), &arrays.named())
    }

    /// Phase 2 (fresh or resumed) on the two caches; returns the best
    /// epoch's TokenBlock + head.
    fn phase2(&mut self, train_src: &[f32], val_src: &[f32]) -> Result<Vec<f32>> {
        let Cell {
            split,
            paths,
            engine,
            model,
            saver,
            meta,
            saved,
            base,
            started,
            ..
        } = self;
        let t = Instant::now();
        let ts = Stream {
            ids: &split.train,
            src: train_src,
            bins: &[],
        };
        let val_bins = split.val_bins();
        let vs = Stream {
            ids: &split.val,
            src: val_src,
            bins: &val_bins,
        };
        let phase2_base = meta.seconds.phase2;
        let p2 = Engine::phase2_run(
            &mut **engine,
            model,
            &ts,
            &vs,
            saved.phase2.take(),
            &mut |progress, snapshot| {
                let e = progress.epochs.last().expect("a report follows an epoch");
                eprintln!(
                    "  phase2 epoch {:>2}: train ppl {:.1} val ppl {:.1} val acc {:.1}% ({:.1}s)",
                    e.epoch,
                    e.train_ppl,
                    e.val_ppl,
                    100.0 * e.val_acc,
                    e.seconds
                );
                log_line(&paths.log, &phase2_line(e))?;
                let Some(s) = snapshot else {
                    return saver.safe_point_without_state(&format!("phase2-{}", e.epoch));
                };
                meta.stage = Stage::Phase2;
                meta.phase2 = Some(progress.clone());
                meta.phase2_adam_t = s.adam.t;
                meta.seconds.phase2 = phase2_base + t.elapsed().as_secs_f64();
                meta.seconds.stamp(base, *started, saver.seconds);
                let arrays = Arrays {
                    context: s.context_params,
                    phase1: None,
                    train_src: Some(train_src),
                    val_src: Some(val_src),
                    phase2: Some(Phase2Arrays {
                        token: s.token_params,
                        adam: s.adam,
                        best_token: s.best_params,
                    }),
                };
                saver.safe_point(
                    &format!("phase2-{}", e.epoch),
                    || Ok(serde_json::to_value(&*meta)?),
                    &arrays.named(),
                )
            },
        )
        .map_err(|e| e.context(format!("log so far: {}", paths.log.display())))?;
        meta.seconds.phase2 = phase2_base + t.elapsed().as_secs_f64();
        self.progress = Some(p2.progress);
        Ok(p2.best_params)
    }

    /// The best weights into the checkpoint, the device and state-write
    /// summaries, and the run's record.
    fn finish(mut self, best_token: &[f32]) -> Result<ModelRun> {
        let (cfg, secs) = (self.cfg, &self.meta.seconds);
        if let Some(peak) = self.engine.peak_device_bytes() {
            eprintln!(
                "  {}: stages data {:.1}s phase1 {:.1}s train_cache {:.1}s val_cache {:.1}s phase2 {:.1}s | {:.0} train tokens/s in the train cache | peak device memory {}",
                self.engine.describe(),
                secs.data,
                secs.phase1,
                secs.train_cache,
                secs.val_cache,
                secs.phase2,
                (self.split.train.len() - 1) as f64 / secs.train_cache.max(1e-9),
                gib(peak)
            );
        }
        self.model.token.params.data.copy_from_slice(best_token);
        save_checkpoint(&self.model, &self.paths.checkpoint)?;
        self.meta
            .seconds
            .stamp(&self.base, self.started, self.saver.seconds);
        let saver = &self.saver;
        if saver.writes > 0 {
            eprintln!(
                "  resume state: {} writes in {:.2}s ({:.2}% of this run), last {}",
                saver.writes,
                saver.seconds,
                100.0 * saver.seconds / self.started.elapsed().as_secs_f64().max(1e-9),
                gib(saver.last_bytes)
            );
        }
        let meta = self.meta;
        let c = cfg.context_dim as f64;
        let last = meta.phase1_log.last().cloned().unwrap_or_default();
        let [ctx, tok, head, _] = self.model.param_counts();
        Ok(ModelRun {
            ran_on: self.engine.describe(),
            threads: self.threads,
            predicted_peak_bytes: self.predicted,
            seconds: meta.seconds.timings(),
            scored: Scored::Epochs(self.progress.expect("Phase 2 ran")),
            architecture: format!(
                "{} layers, context_dim {}, embed_dim {}",
                cfg.num_layers, cfg.context_dim, cfg.embed_dim
            ),
            trainable_params: (ctx + tok + head) as u64,
            non_embedding_params: (ctx + tok) as u64,
            train_flops_per_token: phase2_flops_per_token(ctx, tok, head),
            newllm: Some(NewLlmResult {
                train_er: meta.train_er / c,
                val_er: meta.val_er / c,
                train_er_abs: meta.train_er,
                val_er_abs: meta.val_er,
                phase1_iterations: meta.phase1_log.len(),
                phase1_converged: meta.phase1_converged,
                phase1_final_convergence_rate: last.convergence_rate,
                phase1: meta.phase1_log,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::newllm::cache::sequential_pass;
    use crate::models::newllm::checkpoint::load_checkpoint;
    use crate::models::newllm::phase2::Phase2;
    use crate::scratch::scratch;

    fn tiny() -> Config {
        Config {
            vocab_size: 97,
            embed_dim: 8,
            context_dim: 8,
            num_layers: 2,
            phase1_batch_size: 128,
            phase1_max_iterations: 3,
            phase2_batch_size: 32,
            phase2_epochs: 3,
            phase2_patience: 0,
            threads: 1,
            ..Config::default()
        }
    }

    /// A periodic training stream and a validation stream from another
    /// pattern, so validation loss rises as training fits the first.
    fn split() -> Split {
        Split {
            samples: 3,
            train: (0..300).map(|i| ((i * 7) % 23) as u32).collect(),
            val: (0..40).map(|i| (50 + (i * 13) % 47) as u32).collect(),
            sample_ends: vec![100, 200, 340],
            val_sample_ends: vec![40],
            source: "test".into(),
        }
    }

    #[test]
    fn a_cell_reports_its_best_epoch_and_writes_log_and_checkpoint() {
        let dir = scratch("run");
        let cfg = tiny();
        let paths = CellPaths::new(&dir.0, crate::models::ModelKind::NewLlm, 3, 0);
        let split = split();
        let r = crate::models::run_cell(crate::models::ModelKind::NewLlm, &cfg, 0, &split, &paths)
            .unwrap();
        assert_eq!((r.samples, r.train_tokens, r.val_tokens), (3, 300, 40));
        assert_eq!(r.config, cfg);

        // Phase 2: the reported figures are the best epoch's
        assert_eq!(r.epochs.len(), r.stop_epoch);
        assert_eq!(r.stop_epoch, cfg.phase2_epochs);
        assert!(!r.early_stopped);
        assert!(r.best_epoch >= 1 && r.best_epoch <= r.stop_epoch);
        let best = &r.epochs[r.best_epoch - 1];
        assert_eq!(r.val_loss, best.val_loss);
        assert_eq!(r.val_ppl, r.val_loss.exp());
        assert_eq!(r.val_acc, best.val_acc);
        for e in &r.epochs[..r.best_epoch - 1] {
            assert!(e.val_loss > r.val_loss, "an earlier epoch was better");
        }
        for e in &r.epochs[r.best_epoch..] {
            assert!(e.val_loss >= r.val_loss, "a later epoch was better");
        }
        assert!(
            r.best_epoch < r.stop_epoch,
            "this data should make the last epoch worse than the best: {:?}",
            r.epochs
        );

        // Phase 1 and Effective Rank
        assert_eq!(r.nl().phase1.len(), r.nl().phase1_iterations);
        assert_eq!(r.nl().phase1_iterations, 3);
        assert!(!r.nl().phase1_converged);
        assert_eq!(
            r.nl().phase1_final_convergence_rate,
            r.nl().phase1[2].convergence_rate
        );
        let c = cfg.context_dim as f64;
        for (frac, abs) in [
            (r.nl().train_er, r.nl().train_er_abs),
            (r.nl().val_er, r.nl().val_er_abs),
        ] {
            assert!(frac > 0.0 && frac <= 1.0, "{frac}");
            assert!((frac * c - abs).abs() < 1e-12);
        }

        // the log: one line per Phase-1 iteration, then one per epoch
        let log = std::fs::read_to_string(&paths.log).unwrap();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), r.nl().phase1.len() + r.epochs.len());
        assert!(lines[..3].iter().all(|l| l["stage"] == "phase1"));
        assert!(lines[3..].iter().all(|l| l["stage"] == "phase2"));
        let logged = lines[4]["epoch"]["val_loss"].as_f64().unwrap();
        assert!((logged - r.epochs[1].val_loss).abs() < 1e-12);

        // the checkpoint holds the best epoch's weights, not the last
        let model = load_checkpoint(&paths.checkpoint).unwrap();
        let val_src = sequential_pass(&model, &split.val, split.val.len() - 1);
        let vs = Stream {
            ids: &split.val,
            src: &val_src,
            bins: &[],
        };
        let loss = Phase2::new(&model).evaluate(&model, &vs).loss;
        assert!((loss - r.val_loss).abs() < 1e-9, "{loss} vs {}", r.val_loss);
    }

    #[test]
    fn a_cell_rerun_replaces_its_log() {
        let dir = scratch("rerun");
        let cfg = Config {
            phase2_epochs: 1,
            ..tiny()
        };
        let paths = CellPaths::new(&dir.0, crate::models::ModelKind::NewLlm, 3, 0);
        std::fs::write(&paths.log, "stale line\n").unwrap();
        let r =
            crate::models::run_cell(crate::models::ModelKind::NewLlm, &cfg, 0, &split(), &paths)
                .unwrap();
        let log = std::fs::read_to_string(&paths.log).unwrap();
        assert!(!log.contains("stale"));
        assert_eq!(log.lines().count(), r.nl().phase1.len() + 1);
    }

    #[test]
    fn k_longer_than_the_validation_stream_is_refused() {
        let dir = scratch("k");
        let cfg = Config {
            num_input_tokens: 41,
            ..tiny()
        };
        let err = run(
            &cfg,
            &split(),
            &CellPaths::new(&dir.0, crate::models::ModelKind::NewLlm, 3, 0),
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(
            err.contains("num_input_tokens = 41 is larger than the validation stream (40 tokens)"),
            "{err}"
        );
    }
}
