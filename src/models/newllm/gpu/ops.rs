//! The optimiser on the device: global-norm gradient clipping and Adam,
//! mirroring `ops::clip_grad_norm` and `ops::Adam`.

use super::kernels;
use super::runtime::{Arg, Buf, Dev};
use anyhow::Result;

/// Global gradient norm (f64) and the clip scaling (ops::clip_grad_norm).
pub fn clip_grad_norm(dev: &Dev, grad: &Buf<f32>, partial: &Buf<f64>, clip: f64) -> Result<f64> {
    dev.launch(
        "sumsq_partial",
        (kernels::SUMSQ_BLOCKS, 1),
        (kernels::ROW_THREADS, 1),
        &[
            Arg::L(grad.len as i64),
            Arg::P(grad.ptr),
            Arg::P(partial.ptr),
        ],
    )?;
    let parts: Vec<f64> = dev.read(partial.ptr, kernels::SUMSQ_BLOCKS as usize)?;
    let norm = parts.iter().sum::<f64>().sqrt();
    let coef = clip / (norm + 1e-6);
    if coef < 1.0 {
        dev.launch_n(
            "scale_f32",
            grad.len,
            &[
                Arg::L(grad.len as i64),
                Arg::P(grad.ptr),
                Arg::F(coef as f32),
            ],
        )?;
    }
    Ok(norm)
}

/// ops::Adam on the device.
pub struct GpuAdam {
    pub lr: f64,
    pub m: Buf<f32>,
    pub v: Buf<f32>,
    pub t: u32,
}

impl GpuAdam {
    pub fn new(dev: &Dev, len: usize, lr: f64) -> Result<GpuAdam> {
        Ok(GpuAdam {
            lr,
            m: dev.zeros(len)?,
            v: dev.zeros(len)?,
            t: 0,
        })
    }

    pub fn step(&mut self, dev: &Dev, params: &Buf<f32>, grad: &Buf<f32>) -> Result<()> {
        self.t += 1;
        let (step, bc2) = crate::ops::adam_scales(self.lr, self.t);
        dev.launch_n(
            "adam_step",
            params.len,
            &[
                Arg::L(params.len as i64),
                Arg::P(params.ptr),
                Arg::P(grad.ptr),
                Arg::P(self.m.ptr),
                Arg::P(self.v.ptr),
                Arg::F(step),
                Arg::F(bc2),
            ],
        )
    }
}
