//! Text generation from a trained checkpoint: the context is carried token
//! by token (the recurrent pass), the TokenBlock + head give the next-token
//! distribution, sampled with temperature and top-k.

use super::model::{BlockActs, Model};
use crate::data::Tokenizer;
use crate::rng::Rng;
use anyhow::{bail, Result};

pub struct Sampling {
    pub max_tokens: usize,
    pub temperature: f64,
    /// 0 = no top-k cut.
    pub top_k: usize,
    pub seed: u64,
}

pub fn generate(model: &Model, tok: &Tokenizer, prompt: &str, s: &Sampling) -> Result<String> {
    let cfg = &model.cfg;
    let mut ids = tok.encode(prompt);
    if ids.is_empty() {
        bail!("the prompt is empty after tokenization; give some text with --prompt");
    }
    if s.temperature.is_nan() || s.temperature < 0.0 {
        bail!("--temperature must be >= 0, got {}", s.temperature);
    }
    let (c, v) = (cfg.context_dim, cfg.vocab_size);
    let mut ctx_acts = BlockActs::new(&model.context, 1);
    let mut tok_acts = BlockActs::new(&model.token, 1);
    let mut ctx = vec![0.0f32; c];
    let mut x = vec![0.0f32; cfg.token_input_dim()];
    let mut logits = vec![0.0f32; v];
    let mut rng = Rng::new(s.seed);
    let p16 = model.context_bf16();
    let prompt_len = ids.len();
    let mut j = 0;
    while ids.len() < prompt_len + s.max_tokens {
        model.token_input(&ids, j, 1, &mut x);
        model.context_forward(p16.as_deref(), &ctx, &x, 1, &mut ctx_acts);
        ctx.copy_from_slice(&ctx_acts.last()[..c]);
        j += 1;
        if j < ids.len() {
            continue; // still reading the prompt
        }
        model.token_forward(&ctx_acts, &x, 1, &mut tok_acts, &mut logits);
        ids.push(sample(&logits, s, &mut rng) as u32);
    }
    tok.decode(&ids[prompt_len..])
}

fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> usize {
    let argmax = logits
        .iter()
        .enumerate()
        .fold(0, |b, (i, &x)| if x > logits[b] { i } else { b });
    if s.temperature == 0.0 {
        return argmax;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    if s.top_k > 0 && s.top_k < logits.len() {
        order.select_nth_unstable_by(s.top_k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
        order.truncate(s.top_k);
    }
    let max = logits[argmax] as f64;
    let w: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / s.temperature).exp())
        .collect();
    let mut u = rng.uniform() * w.iter().sum::<f64>();
    for (i, wi) in order.iter().zip(&w) {
        if u < *wi {
            return *i;
        }
        u -= wi;
    }
    order[order.len() - 1]
}
