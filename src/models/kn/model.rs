//! Interpolated modified Kneser-Ney n-gram language model over token ids.
//!
//! The estimator is Chen & Goodman's (1998, "An Empirical Study of Smoothing
//! Techniques for Language Modeling", Harvard TR-10-98), in the form KenLM's
//! `lmplz` builds it: the highest order keeps raw counts, every lower order
//! keeps continuation counts (how many distinct tokens were seen just before
//! the n-gram), each order has three discounts D1, D2, D3+ estimated from its
//! count-of-counts, and each order interpolates with the next lower one:
//!
//! p(w|h) = max(c(hw) - D(c(hw)), 0) / c(h·) + gamma(h) p(w|h'),
//! gamma(h) = (D1 N1(h·) + D2 N2(h·) + D3+ N3+(h·)) / c(h·),
//!
//! where h' is h without its oldest token. A history never seen followed by
//! any token gives all its weight to the lower order. The unigram level
//! interpolates with the uniform distribution over the whole vocabulary, so
//! every id below `vocab_size` has a non-zero probability and the
//! probabilities after any history sum to one.
//!
//! The training stream is one continuous sequence without sentence markers.
//! Its start counts as one more distinct left context of the n-grams that
//! begin there, the part KenLM's `<s>` plays, so every n-gram of the stream
//! has a non-zero count at every order.
//!
//! The n-grams are stored as a forward trie built by sorting: the nodes of
//! each order are sorted by (parent node, last token), so the tokens seen
//! after a context form one contiguous, sorted run of the next order.

use anyhow::{bail, Result};
use std::ops::Range;

/// KenLM's `--discount_fallback` values, for an order whose count-of-counts
/// cannot give valid discounts (see `estimate_discounts`).
const FALLBACK_DISCOUNTS: [f64; 3] = [0.5, 1.0, 1.5];

/// A trained model; see the module documentation.
pub struct KneserNey {
    order: usize,
    vocab_size: usize,
    /// `discounts[k - 1]` is [D1, D2, D3+] of order k.
    discounts: Vec<[f64; 3]>,
    /// `levels[k - 1]` holds the n-grams of order k.
    levels: Vec<Level>,
    /// p(w) at the unigram level for every id in the vocabulary.
    unigram: Vec<f64>,
    /// Token ids by descending unigram probability, lowest id first among
    /// equals: the order in which tokens unseen after a history rank.
    unigram_rank: Vec<u32>,
    /// Start of each run of equal unigram probability in `unigram_rank`,
    /// followed by the vocabulary size.
    rank_runs: Vec<u32>,
}

/// The nodes of one order of the trie.
struct Level {
    /// Last token of each node. Empty at order 1, where the node is the id.
    tokens: Vec<u32>,
    /// Count of each node: raw at the highest order, continuation below.
    counts: Vec<u32>,
    /// The children (next order) of node i are `child_start[i]..child_start[i + 1]`.
    /// This and the fields below are empty at the highest order.
    child_start: Vec<u32>,
    /// c(h·) of each node as a context: the sum of its children's counts.
    child_total: Vec<u32>,
    /// gamma(h) of each node as a context (1 where it has no children).
    gamma: Vec<f64>,
}

/// A suffix of a history that was seen followed by some token: node `node`
/// of `levels[depth]`. It conditions the prediction at order `depth + 2`.
#[derive(Clone, Copy)]
struct Context {
    depth: usize,
    node: usize,
}

/// Result of scoring a stream with `KneserNey::evaluate`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Eval {
    /// Predicted positions: the stream length minus one.
    pub positions: u64,
    /// Sum over positions of -ln p(target), in nats.
    pub total_log_loss: f64,
    /// Positions whose arg max over the whole vocabulary is the target.
    pub correct: u64,
    /// The log loss summed per validation sample (`evaluate`'s bins).
    pub sample_losses: Vec<f64>,
}

impl Eval {
    /// exp of the mean log loss (NaN without positions).
    pub fn ppl(&self) -> f64 {
        (self.total_log_loss / self.positions as f64).exp()
    }

    /// Fraction of positions predicted exactly (NaN without positions).
    pub fn acc(&self) -> f64 {
        self.correct as f64 / self.positions as f64
    }
}

impl KneserNey {
    /// Counts every n-gram of `train` up to `order` and estimates the model.
    pub fn train(train: &[u32], order: usize, vocab_size: usize) -> Result<KneserNey> {
        if order == 0 {
            bail!("the Kneser-Ney order must be at least 1, got 0");
        }
        if vocab_size == 0 || vocab_size > u32::MAX as usize {
            bail!(
                "the vocabulary size must be between 1 and {}, got {vocab_size}",
                u32::MAX
            );
        }
        let needed = order.max(2);
        if train.len() < needed {
            bail!(
                "the training stream has {} tokens; an order-{order} Kneser-Ney model needs at least {needed}",
                train.len()
            );
        }
        // Positions, node indices and counts are held as u32.
        if train.len() >= u32::MAX as usize {
            bail!(
                "the training stream has {} tokens; at most {} are supported",
                train.len(),
                u32::MAX - 1
            );
        }
        check_ids(train, vocab_size, "training")?;

        // counts[k - 1], tokens[k - 1], child_start[k - 1]: order k. At order 1
        // the node is the token id, so its counts are indexed by id.
        let mut counts: Vec<Vec<u32>> = vec![vec![0; vocab_size]];
        let mut tokens: Vec<Vec<u32>> = vec![Vec::new()];
        let mut child_start: Vec<Vec<u32>> = Vec::new();
        if order == 1 {
            for &id in train {
                counts[0][id as usize] += 1;
            }
        }
        // Node of the (k-1)-gram starting at each position; at order 1 the id.
        let mut prev_nodes: Vec<u32> = train.to_vec();
        for k in 2..=order {
            let built = build_order(train, &prev_nodes, k, counts[k - 2].len());
            counts[k - 2] = built.parent_continuation;
            child_start.push(built.parent_child_start);
            counts.push(built.raw);
            tokens.push(built.tokens);
            prev_nodes = built.nodes;
        }
        // Free the per-position nodes before the statistics are allocated.
        drop(prev_nodes);

        let discounts: Vec<[f64; 3]> = counts
            .iter()
            .map(|c| estimate_discounts(count_of_counts(c)))
            .collect();

        // Unigram level: interpolate with 1/V; its context is the empty history.
        let total: u64 = counts[0].iter().map(|&c| u64::from(c)).sum();
        let d = discounts[0];
        let uniform = gamma(d, &counts[0], total as f64) / vocab_size as f64;
        let unigram: Vec<f64> = counts[0]
            .iter()
            .map(|&c| discounted_count(d, c) / total as f64 + uniform)
            .collect();
        let (unigram_rank, rank_runs) = rank_unigrams(&unigram);

        // Each order below the highest is also the context order of the next.
        let mut stats: Vec<(Vec<u32>, Vec<f64>)> = child_start
            .iter()
            .enumerate()
            .map(|(depth, start)| context_stats(start, &counts[depth + 1], discounts[depth + 1]))
            .collect();
        // The highest order is no context: no children, no statistics.
        child_start.push(Vec::new());
        stats.push((Vec::new(), Vec::new()));
        let levels: Vec<Level> = tokens
            .into_iter()
            .zip(counts)
            .zip(child_start.into_iter().zip(stats))
            .map(
                |((tokens, counts), (child_start, (child_total, gamma)))| Level {
                    tokens,
                    counts,
                    child_start,
                    child_total,
                    gamma,
                },
            )
            .collect();

        Ok(KneserNey {
            order,
            vocab_size,
            discounts,
            levels,
            unigram,
            unigram_rank,
            rank_runs,
        })
    }

    /// [D1, D2, D3+] of order `order` (1-based); None outside 1..=order.
    pub fn discounts(&self, order: usize) -> Option<[f64; 3]> {
        order
            .checked_sub(1)
            .and_then(|i| self.discounts.get(i).copied())
    }

    /// p(token | history); `history` is oldest first and only its last
    /// order-1 tokens are used. Zero for a token outside the vocabulary.
    pub fn prob(&self, history: &[u32], token: u32) -> f64 {
        if token as usize >= self.vocab_size {
            return 0.0;
        }
        let mut contexts = Vec::with_capacity(self.order);
        self.contexts(history, &mut contexts);
        self.prob_in(&contexts, token)
    }

    /// Scores every position t of `stream` but the last: predicts
    /// `stream[t + 1]` from the tokens of `stream` before it (at most
    /// order-1), so the first positions have shorter histories. Position
    /// t's loss is also summed into sample `bins[t]` when `bins` (one per
    /// position) is not empty.
    pub fn evaluate(&self, stream: &[u32], bins: &[u32]) -> Result<Eval> {
        if stream.len() < 2 {
            bail!(
                "the evaluation stream has {} tokens; at least 2 are needed",
                stream.len()
            );
        }
        if stream.len() >= u32::MAX as usize {
            bail!(
                "the evaluation stream has {} tokens; at most {} are supported",
                stream.len(),
                u32::MAX - 1
            );
        }
        check_ids(stream, self.vocab_size, "evaluation")?;
        if !bins.is_empty() && bins.len() != stream.len() - 1 {
            bail!(
                "{} sample bins for {} evaluation positions",
                bins.len(),
                stream.len() - 1
            );
        }
        let mut scorer = Scorer::new(self);
        let mut eval = Eval {
            sample_losses: vec![0.0; bins.last().map_or(0, |&b| b as usize + 1)],
            ..Eval::default()
        };
        for t in 0..stream.len() - 1 {
            let history = &stream[(t + 2).saturating_sub(self.order)..=t];
            let target = stream[t + 1];
            let (p, best) = scorer.score(history, target);
            eval.positions += 1;
            eval.total_log_loss -= p.ln();
            if let Some(&b) = bins.get(t) {
                eval.sample_losses[b as usize] -= p.ln();
            }
            if best == target {
                eval.correct += 1;
            }
        }
        Ok(eval)
    }

    /// Approximate bytes held by the model.
    pub fn bytes(&self) -> u64 {
        let levels: usize = self
            .levels
            .iter()
            .map(|l| {
                held(&l.tokens)
                    + held(&l.counts)
                    + held(&l.child_start)
                    + held(&l.child_total)
                    + held(&l.gamma)
            })
            .sum();
        let rest = held(&self.discounts)
            + held(&self.unigram)
            + held(&self.unigram_rank)
            + held(&self.rank_runs);
        (levels + rest + std::mem::size_of::<KneserNey>()) as u64
    }

    /// Upper estimate of the peak bytes `train` plus `evaluate` need for a
    /// training stream of `train_tokens` tokens, before anything is built.
    pub fn predict_bytes(train_tokens: usize, order: usize, vocab_size: usize) -> u64 {
        let n = train_tokens as u64;
        let v = vocab_size as u64;
        let order = order as u64;
        // Each order >= 2 has at most n nodes: token and count, plus child
        // start, child total and gamma where it is a context order.
        let nodes = 8 * n * order.saturating_sub(1) + 16 * n * order.saturating_sub(2);
        // Per id: count, child start, child total, gamma, unigram p, rank, run.
        let unigram = 36 * v;
        // While counting an order: the sorted (key, position) pairs, node per
        // position for this order and the previous one, the new nodes'
        // token and count, the parents' child starts and continuation counts.
        let build = 16 * n + 4 * n + 4 * n + 8 * n + 8 * n.max(v);
        // Evaluation scratch: a probability and a stamp per id.
        let scorer = 12 * v;
        nodes + unigram + build + scorer
    }

    /// The suffixes of `history` that were seen followed by some token,
    /// shortest first, at most order-1 tokens long.
    fn contexts(&self, history: &[u32], out: &mut Vec<Context>) {
        out.clear();
        let longest = (self.order - 1).min(history.len());
        for len in 1..=longest {
            match self.find(&history[history.len() - len..]) {
                Some(node) if self.levels[len - 1].child_total[node] > 0 => out.push(Context {
                    depth: len - 1,
                    node,
                }),
                // If a suffix was never followed by anything, neither was a
                // longer one (its continuations end with the shorter suffix).
                _ => break,
            }
        }
    }

    /// Node of the n-gram `gram` in `levels[gram.len() - 1]`, if seen.
    fn find(&self, gram: &[u32]) -> Option<usize> {
        let (&first, rest) = gram.split_first()?;
        if first as usize >= self.vocab_size {
            return None;
        }
        let mut node = first as usize;
        for (depth, &token) in rest.iter().enumerate() {
            node = self.child(depth, node, token)?;
        }
        Some(node)
    }

    /// Range in `levels[depth + 1]` of the children of `node` of `levels[depth]`.
    fn children(&self, depth: usize, node: usize) -> Range<usize> {
        let start = &self.levels[depth].child_start;
        start[node] as usize..start[node + 1] as usize
    }

    /// The child of `node` of `levels[depth]` whose last token is `token`.
    fn child(&self, depth: usize, node: usize, token: u32) -> Option<usize> {
        let range = self.children(depth, node);
        let offset = range.start;
        self.levels[depth + 1].tokens[range]
            .binary_search(&token)
            .ok()
            .map(|i| offset + i)
    }

    /// max(c(hw) - D, 0) / c(h·) for the child `child` of context `ctx`.
    fn discounted(&self, ctx: Context, child: usize) -> f64 {
        let level = ctx.depth + 1;
        let count = self.levels[level].counts[child];
        discounted_count(self.discounts[level], count)
            / f64::from(self.levels[ctx.depth].child_total[ctx.node])
    }

    /// p(token | contexts), interpolating from the unigram level upwards.
    fn prob_in(&self, contexts: &[Context], token: u32) -> f64 {
        let mut p = self.unigram[token as usize];
        for &ctx in contexts {
            let gamma = self.levels[ctx.depth].gamma[ctx.node];
            p = match self.child(ctx.depth, ctx.node, token) {
                Some(child) => self.discounted(ctx, child) + gamma * p,
                None => gamma * p,
            };
        }
        p
    }

    /// The probability of a token seen after none of `contexts`, whose
    /// unigram probability is `unigram`: the same steps as `prob_in`, so the
    /// result is bit-identical.
    fn backed_off(&self, contexts: &[Context], unigram: f64) -> f64 {
        contexts
            .iter()
            .fold(unigram, |p, ctx| self.levels[ctx.depth].gamma[ctx.node] * p)
    }
}

/// The n-grams of one order k >= 2, counted from the nodes of order k-1.
struct Built {
    /// Last token of each order-k node, in trie order.
    tokens: Vec<u32>,
    /// Raw count of each order-k node.
    raw: Vec<u32>,
    /// Order-k node of the k-gram starting at each position.
    nodes: Vec<u32>,
    /// Child ranges of the order-(k-1) nodes (length parents + 1).
    parent_child_start: Vec<u32>,
    /// Continuation counts of the order-(k-1) nodes.
    parent_continuation: Vec<u32>,
}

/// Counts the k-grams of `train`, given the node of the (k-1)-gram starting
/// at each position, and `parents` order-(k-1) nodes.
fn build_order(train: &[u32], prev_nodes: &[u32], k: usize, parents: usize) -> Built {
    let windows = train.len() + 1 - k;
    // (parent node, last token) packed in one key, with the position: one
    // sort groups equal k-grams and puts them in trie order.
    let mut keyed: Vec<(u64, u32)> = (0..windows)
        .map(|i| {
            (
                (u64::from(prev_nodes[i]) << 32) | u64::from(train[i + k - 1]),
                i as u32,
            )
        })
        .collect();
    keyed.sort_unstable();

    let mut tokens = Vec::with_capacity(windows);
    let mut raw: Vec<u32> = Vec::with_capacity(windows);
    let mut nodes = vec![0u32; windows];
    let mut child_start = vec![0u32; parents + 1];
    let mut continuation = vec![0u32; parents];
    let mut last_key = None;
    for &(key, pos) in &keyed {
        if last_key != Some(key) {
            last_key = Some(key);
            tokens.push(key as u32);
            raw.push(0);
            child_start[(key >> 32) as usize + 1] += 1;
            // This distinct k-gram is one distinct left extension of its
            // suffix, the (k-1)-gram starting one position later.
            continuation[prev_nodes[pos as usize + 1] as usize] += 1;
        }
        let node = tokens.len() - 1;
        raw[node] += 1;
        nodes[pos as usize] = node as u32;
    }
    drop(keyed);
    // The (k-1)-gram at the stream start has the start as a left context.
    continuation[prev_nodes[0] as usize] += 1;
    let mut sum = 0;
    for start in child_start.iter_mut() {
        sum += *start;
        *start = sum;
    }
    tokens.shrink_to_fit();
    raw.shrink_to_fit();
    Built {
        tokens,
        raw,
        nodes,
        parent_child_start: child_start,
        parent_continuation: continuation,
    }
}

/// c(h·) and gamma(h) of each context from its children's counts.
fn context_stats(child_start: &[u32], child_counts: &[u32], d: [f64; 3]) -> (Vec<u32>, Vec<f64>) {
    child_start
        .windows(2)
        .map(|range| {
            let children = &child_counts[range[0] as usize..range[1] as usize];
            let total: u32 = children.iter().sum();
            if total == 0 {
                return (0, 1.0);
            }
            (total, gamma(d, children, f64::from(total)))
        })
        .unzip()
}

/// gamma = (D1 N1 + D2 N2 + D3+ N3+) / total, where N1, N2 and N3+ count
/// the children whose count is 1, 2, and 3 or more.
fn gamma(d: [f64; 3], children: &[u32], total: f64) -> f64 {
    let mut n = [0u64; 3];
    for &c in children {
        match c {
            0 => {}
            1 => n[0] += 1,
            2 => n[1] += 1,
            _ => n[2] += 1,
        }
    }
    (d[0] * n[0] as f64 + d[1] * n[1] as f64 + d[2] * n[2] as f64) / total
}

/// n1..n4: how many of `counts` are exactly 1, 2, 3 and 4.
fn count_of_counts(counts: &[u32]) -> [u64; 4] {
    let mut n = [0u64; 4];
    for &c in counts {
        if (1..=4).contains(&c) {
            n[c as usize - 1] += 1;
        }
    }
    n
}

/// Chen & Goodman's discounts from the count-of-counts n1..n4 of one order:
/// Y = n1/(n1+2 n2), D1 = 1-2Y n2/n1, D2 = 2-3Y n3/n2, D3+ = 3-4Y n4/n3.
///
/// Fallback: when n1, n2 or n3 is zero (tiny or artificial data) the formula
/// divides by zero, and it can also give D <= 0 (e.g. D2 when n3 > n2). A
/// discount must lie in (0, k] for count k: above k a count would go
/// negative and the probabilities would no longer sum to one; at zero a
/// context whose children all have that count would keep no mass for the
/// lower orders, and unseen tokens would get probability zero. Then all
/// three discounts of the order become KenLM's `--discount_fallback`
/// defaults 0.5, 1.0, 1.5, which lie in that range and keep the set
/// consistent (mixing fixed and estimated values would not be).
fn estimate_discounts(n: [u64; 4]) -> [f64; 3] {
    let [n1, n2, n3, n4] = n.map(|x| x as f64);
    if n1 == 0.0 || n2 == 0.0 || n3 == 0.0 {
        return FALLBACK_DISCOUNTS;
    }
    let y = n1 / (n1 + 2.0 * n2);
    let d = [
        1.0 - 2.0 * y * n2 / n1,
        2.0 - 3.0 * y * n3 / n2,
        3.0 - 4.0 * y * n4 / n3,
    ];
    let valid = d
        .iter()
        .zip([1.0, 2.0, 3.0])
        .all(|(&dk, k)| dk > 0.0 && dk <= k);
    if valid {
        d
    } else {
        FALLBACK_DISCOUNTS
    }
}

/// max(c - D(c), 0) with D = D1, D2 or D3+ by the count.
fn discounted_count(d: [f64; 3], count: u32) -> f64 {
    let discount = match count {
        0 => 0.0,
        1 => d[0],
        2 => d[1],
        _ => d[2],
    };
    (f64::from(count) - discount).max(0.0)
}

/// Ids by descending unigram probability (lowest id first among equals) and
/// the starts of the runs of equal probability, closed by the length.
fn rank_unigrams(unigram: &[f64]) -> (Vec<u32>, Vec<u32>) {
    let mut rank: Vec<u32> = (0..unigram.len() as u32).collect();
    rank.sort_by(|&a, &b| {
        unigram[b as usize]
            .total_cmp(&unigram[a as usize])
            .then(a.cmp(&b))
    });
    let mut runs: Vec<u32> = (0..rank.len())
        .filter(|&i| i == 0 || unigram[rank[i] as usize] != unigram[rank[i - 1] as usize])
        .map(|i| i as u32)
        .collect();
    runs.push(rank.len() as u32);
    (rank, runs)
}

fn check_ids(stream: &[u32], vocab_size: usize, name: &str) -> Result<()> {
    if let Some((pos, &id)) = stream
        .iter()
        .enumerate()
        .find(|&(_, &id)| id as usize >= vocab_size)
    {
        bail!("the {name} stream has token id {id} at position {pos}, outside the vocabulary of {vocab_size} ids");
    }
    Ok(())
}

fn held<T>(v: &Vec<T>) -> usize {
    v.capacity() * std::mem::size_of::<T>()
}

/// Scratch space to score positions one after another: the probability of
/// each candidate token, and a stamp marking the current position's
/// candidates, so nothing is cleared between positions.
struct Scorer<'a> {
    model: &'a KneserNey,
    contexts: Vec<Context>,
    prob: Vec<f64>,
    stamp: Vec<u32>,
    current: u32,
}

impl<'a> Scorer<'a> {
    fn new(model: &'a KneserNey) -> Scorer<'a> {
        Scorer {
            model,
            contexts: Vec::with_capacity(model.order),
            prob: vec![0.0; model.vocab_size],
            stamp: vec![0; model.vocab_size],
            current: 0,
        }
    }

    /// p(target | history) and the arg max over the whole vocabulary (lowest
    /// id on ties), with the same arithmetic as `KneserNey::prob`.
    ///
    /// Candidates are the tokens seen after the last history token; every
    /// token seen after a longer suffix is among them, since such an n-gram
    /// ends with that bigram. Each candidate's probability is computed
    /// exactly; every other token has (product of gammas) * p_unigram, so the
    /// best of them comes from the unigram ranking.
    fn score(&mut self, history: &[u32], target: u32) -> (f64, u32) {
        let model = self.model;
        model.contexts(history, &mut self.contexts);
        self.current += 1;
        let mut best: Option<(f64, u32)> = None;
        if let Some((&first, higher)) = self.contexts.split_first() {
            let range = model.children(first.depth, first.node);
            let candidates = &model.levels[first.depth + 1].tokens[range.clone()];
            let gamma = model.levels[first.depth].gamma[first.node];
            for (child, &w) in range.zip(candidates) {
                self.prob[w as usize] =
                    model.discounted(first, child) + gamma * model.unigram[w as usize];
                self.stamp[w as usize] = self.current;
            }
            // p = discounted + gamma * p in two passes: every candidate is
            // multiplied, then the context's children add their term. IEEE
            // addition commutes, so this rounds exactly as `prob_in` does.
            for &ctx in higher {
                let gamma = model.levels[ctx.depth].gamma[ctx.node];
                for &w in candidates {
                    self.prob[w as usize] *= gamma;
                }
                let range = model.children(ctx.depth, ctx.node);
                let tokens = &model.levels[ctx.depth + 1].tokens[range.clone()];
                for (child, &w) in range.zip(tokens) {
                    self.prob[w as usize] += model.discounted(ctx, child);
                }
            }
            // Candidates are sorted by id, so a strict > keeps the lowest id.
            for &w in candidates {
                let p = self.prob[w as usize];
                if best.is_none_or(|(bp, _)| p > bp) {
                    best = Some((p, w));
                }
            }
        }
        if let Some((p, w)) = self.best_unseen() {
            if best.is_none_or(|(bp, bw)| p > bp || (p == bp && w < bw)) {
                best = Some((p, w));
            }
        }
        let p_target = if self.stamp[target as usize] == self.current {
            self.prob[target as usize]
        } else {
            model.backed_off(&self.contexts, model.unigram[target as usize])
        };
        // The vocabulary is never empty, so some token always scored.
        (p_target, best.map_or(0, |(_, w)| w))
    }

    /// The best token that is not a candidate, if any. Its probability
    /// `backed_off(p_unigram)` never decreases as p_unigram grows, so the
    /// first run of equal unigram probability holding a non-candidate wins,
    /// unless rounding makes a later run equal: those are checked too.
    fn best_unseen(&self) -> Option<(f64, u32)> {
        let model = self.model;
        let mut best: Option<(f64, u32)> = None;
        for run in model.rank_runs.windows(2) {
            let tokens = &model.unigram_rank[run[0] as usize..run[1] as usize];
            let p = model.backed_off(&self.contexts, model.unigram[tokens[0] as usize]);
            if best.is_some_and(|(bp, _)| p < bp) {
                break;
            }
            if let Some(&w) = tokens
                .iter()
                .find(|&&w| self.stamp[w as usize] != self.current)
            {
                // A later run cannot beat an earlier one, only tie with it.
                if best.is_none_or(|(_, bw)| w < bw) {
                    best = Some((p, w));
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests;
