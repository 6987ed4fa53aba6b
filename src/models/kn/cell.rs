//! One Kneser-Ney cell: count the training stream, score the validation
//! stream position by position (history from the validation stream only, as
//! New-LLM's validation pass starts from a zero context).

use super::model::KneserNey;
use crate::cell_result::Timings;
use crate::config::Config;
use crate::data::Split;
use crate::memory::{gib, refuse_if_too_big};
use crate::models::{ModelRun, Scored};
use crate::train_loop::Evaluation;
use anyhow::Result;
use std::time::Instant;

/// What a Kneser-Ney cell depends on: the data and the order (it has no
/// seed and no training settings).
pub fn identity(cfg: &Config) -> serde_json::Value {
    let mut id = crate::models::data_identity(cfg);
    id["kn_order"] = cfg.kn_order.into();
    id
}

/// The model of a cell: counts of the training stream only.
pub fn build(cfg: &Config, split: &Split) -> Result<KneserNey> {
    KneserNey::train(&split.train, cfg.kn_order, cfg.vocab_size)
}

/// Builds the model on `split.train` and evaluates it on every position of
/// `split.val` (the positions New-LLM is scored on).
pub fn run(cfg: &Config, split: &Split) -> Result<ModelRun> {
    let t_all = Instant::now();
    let (n, m) = (split.train.len(), split.val.len());
    // Plus the process baseline (binary, tokenizer tables, corpus text).
    let predicted = (128 << 20) + KneserNey::predict_bytes(n, cfg.kn_order, cfg.vocab_size);
    eprintln!(
        "kn cell {} samples: order {}, {n} train / {m} val tokens, predicted peak memory {}",
        split.samples,
        cfg.kn_order,
        gib(predicted)
    );
    refuse_if_too_big(predicted, "use fewer samples or a lower kn_order")?;
    let t = Instant::now();
    let lm = build(cfg, split)?;
    let build = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let eval = lm.evaluate(&split.val, &split.val_bins())?;
    let evaluate = t.elapsed().as_secs_f64();
    let mut seconds = Timings::default();
    seconds.add("build", build);
    seconds.add("evaluate", evaluate);
    seconds.add("total", t_all.elapsed().as_secs_f64());
    Ok(ModelRun {
        ran_on: "cpu".into(),
        threads: 1,
        predicted_peak_bytes: predicted,
        seconds,
        scored: Scored::Once(Evaluation {
            loss: eval.total_log_loss / eval.positions as f64,
            correct: eval.correct as usize,
            sample_losses: eval.sample_losses,
        }),
        // Counts, not trained weights: nothing comparable to report.
        architecture: format!("order {}", cfg.kn_order),
        trainable_params: 0,
        non_embedding_params: 0,
        train_flops_per_token: 0.0,
        newllm: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelKind;
    use crate::rng::Rng;

    fn split(train: Vec<u32>, val: Vec<u32>) -> Split {
        let val_sample_ends = vec![val.len()];
        Split {
            samples: 1,
            train,
            val,
            sample_ends: vec![],
            val_sample_ends,
            source: "test".into(),
        }
    }

    /// The leak test: two splits with the same training stream and different
    /// validation streams build the same model, while letting the validation
    /// tokens into training would change it.
    #[test]
    fn no_validation_token_reaches_the_counts() {
        let cfg = Config {
            vocab_size: 40,
            kn_order: 3,
            ..Config::default()
        };
        let mut rng = Rng::new(5);
        let mut ids =
            |n: usize, v: usize| (0..n).map(|_| rng.below(v) as u32).collect::<Vec<u32>>();
        let train = ids(500, 20);
        let (val_a, val_b) = (ids(60, 40), ids(60, 40));
        let a = build(&cfg, &split(train.clone(), val_a.clone())).unwrap();
        let b = build(&cfg, &split(train.clone(), val_b.clone())).unwrap();
        let leaked = build(
            &cfg,
            &split([train.clone(), val_a.clone()].concat(), vec![]),
        )
        .unwrap();
        let (mut same, mut differs) = (true, false);
        for h in val_a.windows(2).chain(val_b.windows(2)) {
            for w in 0..cfg.vocab_size as u32 {
                same &= a.prob(h, w) == b.prob(h, w);
                differs |= a.prob(h, w) != leaked.prob(h, w);
            }
        }
        assert!(same, "the validation stream changed the model");
        assert!(
            differs,
            "the check cannot see validation tokens in training"
        );
        // And the cell scores exactly the validation positions.
        let cell = split(train, val_a);
        let r = crate::models::record(ModelKind::Kn, &cfg, 0, &cell, run(&cfg, &cell).unwrap());
        assert_eq!(
            (r.model.name(), r.train_tokens, r.val_tokens),
            ("kn", 500, 60)
        );
        assert!((r.val_ppl - r.val_loss.exp()).abs() < 1e-9 * r.val_ppl);
        assert!(r.newllm.is_none() && r.epochs.is_empty());
    }
}
