//! Tests of the Kneser-Ney model: normalisation over the whole vocabulary,
//! hand-computed values, the exact argmax shortcut, scoring and errors.

use super::*;

/// SplitMix64: a small deterministic generator for test corpora.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> u32 {
        (self.next() % n as u64) as u32
    }
}

/// A Zipf(s)-distributed stream over `vocab` ids with some Markov
/// structure: 40% of tokens follow one of three fixed successors of the
/// previous token, 15% one fixed successor of the previous two.
fn zipf_stream(len: usize, vocab: usize, s: f64, seed: u64) -> Vec<u32> {
    let mut cdf: Vec<f64> = (1..=vocab).map(|r| (r as f64).powf(-s)).collect();
    let mut sum = 0.0;
    for c in cdf.iter_mut() {
        sum += *c;
        *c = sum;
    }
    let draw = |u: f64| cdf.partition_point(|&c| c < u * sum).min(vocab - 1) as u32;
    let hashed = |a: u64| Rng(a).uniform();
    let mut rng = Rng(seed);
    let mut out: Vec<u32> = Vec::with_capacity(len);
    for t in 0..len {
        let r = rng.uniform();
        let id = if t >= 2 && r < 0.15 {
            draw(hashed(
                (u64::from(out[t - 2]) << 32) | u64::from(out[t - 1]),
            ))
        } else if t >= 1 && r < 0.55 {
            draw(hashed(
                u64::from(out[t - 1]) * 3 + u64::from(rng.below(3)) + (1 << 40),
            ))
        } else {
            draw(rng.uniform())
        };
        out.push(id);
    }
    out
}

fn total_prob(model: &KneserNey, history: &[u32], vocab: usize) -> f64 {
    (0..vocab as u32).map(|w| model.prob(history, w)).sum()
}

#[test]
fn probabilities_sum_to_one_small_vocab() {
    let vocab = 50;
    for (seed, order) in [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)] {
        let train = zipf_stream(400, vocab, 1.1, seed);
        let model = KneserNey::train(&train, order, vocab).unwrap();
        let mut rng = Rng(seed + 100);
        for _ in 0..100 {
            // Histories of every length up to beyond order-1, some drawn
            // from the corpus (seen), some at random (mostly unseen).
            let len = rng.below(order + 2) as usize;
            let history: Vec<u32> = if rng.uniform() < 0.5 && len < train.len() {
                let start = rng.below(train.len() - len) as usize;
                train[start..start + len].to_vec()
            } else {
                (0..len).map(|_| rng.below(vocab)).collect()
            };
            let sum = total_prob(&model, &history, vocab);
            assert!(
                (sum - 1.0).abs() < 1e-9,
                "order {order} history {history:?}: sum {sum}"
            );
            assert!((0..vocab as u32).all(|w| model.prob(&history, w) > 0.0));
        }
    }
}

#[test]
fn probabilities_sum_to_one_gpt2_vocab() {
    let vocab = 50_257;
    let train = zipf_stream(20_000, vocab, 1.1, 7);
    let model = KneserNey::train(&train, 4, vocab).unwrap();
    let histories: Vec<Vec<u32>> = vec![
        vec![],
        train[100..103].to_vec(),
        train[5000..5002].to_vec(),
        vec![train[9000]],
        vec![50_000, 49_999, 3],
        train[..7].to_vec(),
    ];
    for history in &histories {
        let sum = total_prob(&model, history, vocab);
        assert!((sum - 1.0).abs() < 1e-9, "history {history:?}: sum {sum}");
    }
    // An id the training stream never saw still gets a share of 1/V.
    let unseen = (0..vocab as u32).find(|w| !train.contains(w)).unwrap();
    assert!(model.prob(&train[..3], unseen) > 0.0);
}

/// Order 2 on S = [0,1,2,0,1,1,3,0,4,2,1,0], V = 5.
///
/// Unigram continuation counts (distinct left neighbours; the stream start
/// counts as one for token 0): c(0) = |{2,3,1,start}| = 4, c(1) = |{0,1,2}|
/// = 3, c(2) = |{1,4}| = 2, c(3) = 1, c(4) = 1; total 11.
/// n1..n4 = 2,1,1,1: Y = 2/4 = 1/2, D1 = 1 - 2(1/2)(1/2) = 1/2,
/// D2 = 2 - 3(1/2)(1/1) = 1/2, D3+ = 3 - 4(1/2)(1/1) = 1.
/// gamma() = (1/2*2 + 1/2*1 + 1*2)/11 = 7/22, so 1/V gets 7/110:
/// p1(0) = 3/11 + 7/110 = 37/110, p1(1) = 2/11 + 7/110 = 27/110,
/// p1(2) = 1.5/11 + 7/110 = 22/110, p1(3) = p1(4) = 0.5/11 + 7/110 = 12/110.
///
/// Bigram raw counts: (0,1) = 2; (1,2), (2,0), (1,1), (1,3), (3,0), (0,4),
/// (4,2), (2,1), (1,0) = 1. n1..n4 = 9,1,0,0: n3 = 0, so the fallback
/// 0.5, 1.0, 1.5.
/// Context 1: children 2,1,3,0 once each, c = 4, gamma = 0.5*4/4 = 1/2:
///   p(2|1) = 0.5/4 + 1/2 * 22/110 = 0.225, p(4|1) = 1/2 * 12/110 = 6/110.
/// Context 0: children 1 (twice), 4 (once), c = 3, gamma = (0.5 + 1)/3 = 1/2:
///   p(1|0) = 1/3 + 27/220, p(0|0) = 37/220.
#[test]
fn hand_computed_order_2() {
    let s = [0, 1, 2, 0, 1, 1, 3, 0, 4, 2, 1, 0];
    let model = KneserNey::train(&s, 2, 5).unwrap();
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} != {b}");
    assert_eq!(model.discounts(1), Some([0.5, 0.5, 1.0]));
    assert_eq!(model.discounts(2), Some(FALLBACK_DISCOUNTS));
    assert_eq!(model.discounts(3), None);
    close(model.prob(&[], 0), 37.0 / 110.0);
    close(model.prob(&[], 3), 12.0 / 110.0);
    close(model.prob(&[1], 2), 0.225);
    close(model.prob(&[1], 4), 6.0 / 110.0);
    close(model.prob(&[0], 1), 1.0 / 3.0 + 27.0 / 220.0);
    close(model.prob(&[0], 0), 37.0 / 220.0);
    // Only the last token matters at order 2; an out-of-vocabulary
    // history token is an unseen context, an out-of-vocabulary target 0.
    close(model.prob(&[3, 3, 1], 2), 0.225);
    close(model.prob(&[9], 2), 22.0 / 110.0);
    assert_eq!(model.prob(&[1], 5), 0.0);
}

/// Order 3 on S = [0,1,2,0,1,2,0,1,3], V = 5.
///
/// Trigram raw counts: (0,1,2), (1,2,0), (2,0,1) twice, (0,1,3) once:
/// n1..n4 = 1,3,0,0, fallback 0.5, 1.0, 1.5.
/// Bigram continuation counts (distinct trigram left extensions, start
/// counted for (0,1)): (0,1) = |{2,start}| = 2 (raw 3), (1,2) = 1 (raw 2),
/// (2,0) = 1 (raw 2), (1,3) = 1: n1..n4 = 3,1,0,0, fallback.
/// Unigram continuation counts: c(0) = |{2,start}| = 2, c(1) = c(2) =
/// c(3) = 1, c(4) = 0; total 5; n1..n4 = 3,1,0,0, fallback.
/// gamma() = (0.5*3 + 1*1)/5 = 1/2, 1/V share 0.1:
/// p1(0) = 1/5 + 0.1 = 0.3, p1(1) = p1(2) = p1(3) = 0.5/5 + 0.1 = 0.2, p1(4) = 0.1.
/// Bigram level, context 1: children 2, 3 (count 1 each), c = 2, gamma = 1/2:
///   p2(2|1) = p2(3|1) = 0.5/2 + 0.1 = 0.35, p2(4|1) = 0.05.
/// Context 0: child 1 (count 2), gamma = 1*1/2 = 1/2: p2(1|0) = 1/2 + 0.1 = 0.6.
/// Trigram level, context (0,1): children 2 (count 2), 3 (count 1), c = 3,
/// gamma = (0.5 + 1)/3 = 1/2:
///   p(2|0,1) = 1/3 + 0.175, p(3|0,1) = 0.5/3 + 0.175, p(4|0,1) = 0.025.
/// Context (2,0): child 1 (count 2), c = 2, gamma = 1/2: p(1|2,0) = 0.5 + 0.3 = 0.8.
/// Context (1,3) ends the stream, never followed: back off to context 3,
/// also never followed: p(0|1,3) = p1(0) = 0.3.
#[test]
fn hand_computed_order_3() {
    let s = [0, 1, 2, 0, 1, 2, 0, 1, 3];
    let model = KneserNey::train(&s, 3, 5).unwrap();
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} != {b}");
    for order in 1..=3 {
        assert_eq!(model.discounts(order), Some(FALLBACK_DISCOUNTS));
    }
    close(model.prob(&[], 0), 0.3);
    close(model.prob(&[], 4), 0.1);
    close(model.prob(&[1], 2), 0.35);
    close(model.prob(&[0], 1), 0.6);
    close(model.prob(&[0, 1], 2), 1.0 / 3.0 + 0.175);
    close(model.prob(&[0, 1], 3), 0.5 / 3.0 + 0.175);
    close(model.prob(&[4, 0, 1], 4), 0.025);
    close(model.prob(&[2, 0], 1), 0.8);
    close(model.prob(&[1, 3], 0), 0.3);
}

/// Arg max over all V by brute force with `prob`, lowest id on ties.
fn brute_argmax(model: &KneserNey, history: &[u32], vocab: usize) -> u32 {
    let mut best = (f64::NEG_INFINITY, 0);
    for w in 0..vocab as u32 {
        let p = model.prob(history, w);
        if p > best.0 {
            best = (p, w);
        }
    }
    best.1
}

fn check_argmax(train: &[u32], eval: &[u32], order: usize, vocab: usize) {
    let model = KneserNey::train(train, order, vocab).unwrap();
    let mut scorer = Scorer::new(&model);
    for t in 0..eval.len() - 1 {
        let history = &eval[(t + 2).saturating_sub(order)..=t];
        let (p, best) = scorer.score(history, eval[t + 1]);
        assert_eq!(p, model.prob(history, eval[t + 1]));
        assert_eq!(
            best,
            brute_argmax(&model, history, vocab),
            "order {order}, t {t}, {history:?}"
        );
    }
}

#[test]
fn argmax_shortcut_matches_brute_force() {
    // Small vocabularies: many ties and histories after which every
    // token was seen; held-out streams: unseen histories.
    for (seed, order) in [(11, 1), (12, 2), (13, 3), (14, 4), (15, 5)] {
        let train = zipf_stream(600, 30, 1.1, seed);
        let held_out = zipf_stream(300, 30, 1.1, seed + 50);
        check_argmax(&train, &held_out, order, 30);
        check_argmax(&train, &train[..300], order, 30);
    }
    let train = zipf_stream(3000, 5, 1.1, 21);
    check_argmax(&train, &train[..200], 3, 5);
    let vocab = 50_257;
    let train = zipf_stream(30_000, vocab, 1.1, 22);
    let held_out = zipf_stream(60, vocab, 1.1, 23);
    check_argmax(&train, &held_out, 4, vocab);
    check_argmax(&train, &train[..60], 4, vocab);
}

#[test]
fn evaluate_matches_sum_of_log_probs() {
    let vocab = 200;
    for order in 1..=5 {
        let train = zipf_stream(5000, vocab, 1.1, 31);
        let val = zipf_stream(700, vocab, 1.1, 32);
        let model = KneserNey::train(&train, order, vocab).unwrap();
        let eval = model.evaluate(&val, &[]).unwrap();
        let mut loss = 0.0;
        let mut correct = 0;
        for t in 0..val.len() - 1 {
            let history = &val[(t + 2).saturating_sub(order)..=t];
            loss -= model.prob(history, val[t + 1]).ln();
            if brute_argmax(&model, history, vocab) == val[t + 1] {
                correct += 1;
            }
        }
        assert_eq!(eval.positions, 699);
        assert!(
            (eval.total_log_loss - loss).abs() < 1e-9 * loss,
            "{} != {loss}",
            eval.total_log_loss
        );
        assert_eq!(eval.correct, correct);
        assert!(eval.correct > 0);
        assert!((eval.ppl() - (loss / 699.0).exp()).abs() < 1e-9 * eval.ppl());
        assert_eq!(eval.acc(), correct as f64 / 699.0);
        assert!(eval.sample_losses.is_empty());
        // per sample: positions 0..99 in sample 0, the rest in sample 1
        let bins: Vec<u32> = (0..699).map(|t| u32::from(t >= 100)).collect();
        let binned = model.evaluate(&val, &bins).unwrap();
        assert_eq!(
            binned.total_log_loss.to_bits(),
            eval.total_log_loss.to_bits()
        );
        let first: f64 = (0..100)
            .map(|t: usize| {
                -model
                    .prob(&val[(t + 2).saturating_sub(order)..=t], val[t + 1])
                    .ln()
            })
            .sum();
        assert_eq!(binned.sample_losses.len(), 2);
        assert!((binned.sample_losses[0] - first).abs() < 1e-9 * first);
        let both = binned.sample_losses[0] + binned.sample_losses[1];
        assert!((both - loss).abs() < 1e-9 * loss);
        assert!(
            model.evaluate(&val, &bins[1..]).is_err(),
            "a bin per position"
        );
    }
}

#[test]
fn bad_input_is_an_error() {
    let message = |r: Result<KneserNey>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(
        message(KneserNey::train(&[1, 2, 3], 0, 5)),
        "the Kneser-Ney order must be at least 1, got 0"
    );
    assert_eq!(
        message(KneserNey::train(&[1, 2, 7, 3], 2, 5)),
        "the training stream has token id 7 at position 2, outside the vocabulary of 5 ids"
    );
    assert_eq!(
        message(KneserNey::train(&[1], 1, 5)),
        "the training stream has 1 tokens; an order-1 Kneser-Ney model needs at least 2"
    );
    assert_eq!(
        message(KneserNey::train(&[1, 2, 3], 4, 5)),
        "the training stream has 3 tokens; an order-4 Kneser-Ney model needs at least 4"
    );
    assert_eq!(
        message(KneserNey::train(&[], 2, 5)),
        "the training stream has 0 tokens; an order-2 Kneser-Ney model needs at least 2"
    );
    assert_eq!(
        message(KneserNey::train(&[1, 2], 2, 0)),
        format!(
            "the vocabulary size must be between 1 and {}, got 0",
            u32::MAX
        )
    );
    let model = KneserNey::train(&[1, 2, 3, 1, 2], 2, 5).unwrap();
    let eval_message = |r: Result<Eval>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(
        eval_message(model.evaluate(&[1, 5], &[])),
        "the evaluation stream has token id 5 at position 1, outside the vocabulary of 5 ids"
    );
    assert_eq!(
        eval_message(model.evaluate(&[1], &[])),
        "the evaluation stream has 1 tokens; at least 2 are needed"
    );
}

#[test]
fn memory_is_accounted() {
    let vocab = 50_257;
    let train = zipf_stream(50_000, vocab, 1.1, 41);
    for order in 1..=5 {
        let model = KneserNey::train(&train, order, vocab).unwrap();
        let predicted = KneserNey::predict_bytes(train.len(), order, vocab);
        // The model holds at least its unigram table, and the prediction
        // (which also covers building) is above what it holds.
        assert!(model.bytes() > 8 * vocab as u64);
        assert!(
            predicted > model.bytes(),
            "order {order}: {predicted} <= {}",
            model.bytes()
        );
    }
}

/// Timing on a 529k-token train / 59k-token validation cell:
/// `cargo test --release -- --ignored --nocapture timing`.
#[test]
#[ignore]
fn timing() {
    let vocab = 50_257;
    let train = zipf_stream(529_000, vocab, 1.1, 51);
    let val = zipf_stream(59_000, vocab, 1.1, 52);
    for order in [3, 4, 5] {
        let start = std::time::Instant::now();
        let model = KneserNey::train(&train, order, vocab).unwrap();
        let built = start.elapsed().as_secs_f64();
        let eval = model.evaluate(&val, &[]).unwrap();
        let total = start.elapsed().as_secs_f64();
        println!(
            "order {order}: build {built:.2} s, evaluate {:.2} s, total {total:.2} s, model {:.1} MiB, \
             predicted peak {:.1} MiB, ppl {:.1}, acc {:.4}",
            total - built,
            model.bytes() as f64 / (1 << 20) as f64,
            KneserNey::predict_bytes(train.len(), order, vocab) as f64 / (1 << 20) as f64,
            eval.ppl(),
            eval.acc()
        );
    }
}
