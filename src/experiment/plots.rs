//! Plots for the sweep report, each written as SVG and PNG: the log-log
//! scaling plot with its fitted line, Effective Rank per cell, per-cell
//! Phase-2 epoch curves, and the compare overlay of several sweeps.
//!
//! PNG text needs a font file: DejaVu Sans (Bitstream Vera licence, see
//! assets/fonts/) is compiled in and registered as "sans-serif".

use crate::cell_result::CellResult;
use crate::experiment::format::{short_number, thousands};
use crate::experiment::results::{ModelResults, SweepResults};
use crate::experiment::stats::ScalingFit;
use crate::models::ModelKind;
use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const SERIES_COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// Registers the embedded font once; every later call returns the same outcome.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded DejaVu Sans font could not be loaded"))
    }
}

/// Drawing errors carry backend-specific types; keep their text only.
fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// Something that can draw itself on any plotters backend.
trait Plot {
    fn size(&self) -> (u32, u32) {
        (800, 600)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Writes `STEM.svg` and `STEM.png`; returns both paths.
fn render(plot: &impl Plot, stem: &Path) -> Result<Vec<PathBuf>> {
    ensure_font()?;
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    // Drawn into temporary files and renamed, so a full disk leaves the
    // previous plots intact.
    let tag = format!("tmp-{}", crate::io::unique_tag());
    let (svg_tmp, png_tmp) = (
        stem.with_extension(format!("{tag}.svg")),
        stem.with_extension(format!("{tag}.png")),
    );
    let drawn = (|| {
        {
            let root = SVGBackend::new(&svg_tmp, plot.size()).into_drawing_area();
            plot.draw(&root)?;
            root.present().map_err(plot_err)?;
        }
        let root = BitMapBackend::new(&png_tmp, plot.size()).into_drawing_area();
        plot.draw(&root)?;
        root.present().map_err(plot_err)
    })();
    let moved = drawn.and_then(|()| {
        std::fs::rename(&svg_tmp, &svg)?;
        std::fs::rename(&png_tmp, &png)?;
        Ok(())
    });
    if let Err(e) = moved {
        let _ = std::fs::remove_file(&svg_tmp);
        let _ = std::fs::remove_file(&png_tmp);
        return Err(e.context(format!(
            "cannot write {} / {}; earlier files are intact",
            svg.display(),
            png.display()
        )));
    }
    Ok(vec![svg, png])
}

/// The series legend every chart draws, in the corner `position`.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    font_size: u32,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FAMILY, font_size))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)
}

/// Log-axis bounds with some room around the data.
fn log_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (1.0, 10.0);
    }
    (lo / 1.3, hi * 1.3)
}

/// A log axis whose ticks are 1-2-5 (or 1..9) times powers of ten.
/// plotters' own log axis only labels powers of ten, so a PPL range of
/// 400-2000 would get a single "1K" label.
#[derive(Clone)]
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    /// Values m * 10^k inside the range, for each mantissa m.
    fn ticks(&self, mantissas: &[f64]) -> Vec<f64> {
        let mut out = Vec::new();
        let mut decade = 10f64.powf(self.lo.log10().floor());
        while decade <= self.hi {
            for m in mantissas {
                let v = m * decade;
                if v >= self.lo && v <= self.hi {
                    out.push(v);
                }
            }
            decade *= 10.0;
        }
        out
    }
}

impl Ranged for LogAxis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let t = (value.ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln());
        limit.0 + (t * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<H: plotters::coord::ranged1d::KeyPointHint>(&self, hint: H) -> Vec<f64> {
        let all = self.ticks(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        if hint.weight().allow_light_points() {
            return all;
        }
        // The densest tick set that fits the hint, keeping at least two labels.
        let max = hint.max_num_points();
        for set in [&all, &self.ticks(&[1.0, 2.0, 5.0]), &self.ticks(&[1.0])] {
            if set.len() <= max {
                return set.clone();
            }
        }
        Vec::new()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// The part of the power law y = a x^alpha lying inside the plot box, as
/// its two end points (a straight line on log-log axes).
fn fitted_segment(a: f64, alpha: f64, x: &LogAxis, y: &LogAxis) -> Option<[(f64, f64); 2]> {
    let (mut lx0, mut lx1) = (x.lo.ln(), x.hi.ln());
    if alpha != 0.0 {
        // ln x where the line meets the bottom and the top of the box.
        let xa = (y.lo.ln() - a.ln()) / alpha;
        let xb = (y.hi.ln() - a.ln()) / alpha;
        lx0 = lx0.max(xa.min(xb));
        lx1 = lx1.min(xa.max(xb));
    } else if a < y.lo || a > y.hi {
        return None;
    }
    if lx0.partial_cmp(&lx1) != Some(std::cmp::Ordering::Less) {
        return None;
    }
    let point = |lx: f64| (lx.exp(), a * lx.exp().powf(alpha));
    Some([point(lx0), point(lx1)])
}

// ---------------------------------------------------------------------------
// Scaling: Val PPL vs train tokens, log-log, one series per model or side.

/// One line on the scaling plot: per-cell mean Val PPL with a +/- 1 sd bar
/// over replicates, and the fit over all its runs.
pub struct ScalingSeries {
    pub label: String,
    /// (train tokens, mean Val PPL, sd or 0, samples).
    pub points: Vec<(f64, f64, f64, usize)>,
    pub fit: Option<ScalingFit>,
}

impl ScalingSeries {
    /// A model's series from its per-cell summaries.
    pub fn of_model(label: &str, m: &ModelResults) -> ScalingSeries {
        ScalingSeries {
            label: label.to_string(),
            points: m
                .cells
                .iter()
                .filter_map(|c| {
                    let p = c.val_ppl?;
                    (c.train_tokens > 0 && p.mean.is_finite() && p.mean > 0.0).then_some((
                        c.train_tokens as f64,
                        p.mean,
                        p.sd.unwrap_or(0.0),
                        c.samples,
                    ))
                })
                .collect(),
            fit: m.scaling.clone(),
        }
    }
}

struct ScalingPlot {
    title: String,
    series: Vec<ScalingSeries>,
}

impl Plot for ScalingPlot {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(plot_err)?;
        let points = || self.series.iter().flat_map(|s| s.points.iter());
        let (x0, x1) = log_bounds(points().map(|p| p.0));
        let (y0, y1) = log_bounds(points().flat_map(|p| [p.1 - p.2, p.1 + p.2, p.1]));
        let (xaxis, yaxis) = (LogAxis { lo: x0, hi: x1 }, LogAxis { lo: y0, hi: y1 });
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FAMILY, 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(xaxis.clone(), yaxis.clone())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("train tokens (log)")
            .y_desc("best-epoch Val PPL (log), mean +/- sd")
            // Few labels, so the dense 1..9 ticks only appear on short ranges.
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&|v| short_number(*v))
            .y_label_formatter(&|v| short_number(*v))
            .label_style((FAMILY, 14))
            .draw()
            .map_err(plot_err)?;
        for (i, series) in self.series.iter().enumerate() {
            let color = SERIES_COLORS[i % SERIES_COLORS.len()];
            let label = match &series.fit {
                Some(fit) => match fit.r2 {
                    Some(r2) => {
                        format!("{}: alpha = {:.3}, R^2 = {r2:.3}", series.label, fit.alpha)
                    }
                    None => format!("{}: alpha = {:.3}", series.label, fit.alpha),
                },
                None => format!("{}: no fit", series.label),
            };
            // Error bars: +/- 1 sd over replicates (none for a single run).
            chart
                .draw_series(
                    series
                        .points
                        .iter()
                        .filter(|p| p.2 > 0.0)
                        .map(|&(x, y, sd, _)| {
                            ErrorBar::new_vertical(
                                x,
                                (y - sd).max(y0),
                                y,
                                y + sd,
                                color.stroke_width(2),
                                8,
                            )
                        }),
                )
                .map_err(plot_err)?;
            // Sample counts are written once, next to the first series.
            chart
                .draw_series(series.points.iter().map(|&(x, y, _, samples)| {
                    let text = if i == 0 {
                        format!("{samples}")
                    } else {
                        String::new()
                    };
                    EmptyElement::at((x, y))
                        + Circle::new((0, 0), 5, color.filled())
                        + Text::new(text, (7, -18), (FAMILY, 14))
                }))
                .map_err(plot_err)?
                .label(label)
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
            if let Some(segment) = series
                .fit
                .as_ref()
                .and_then(|f| fitted_segment(f.a, f.alpha, &xaxis, &yaxis))
            {
                chart
                    .draw_series(LineSeries::new(segment, color.stroke_width(2)))
                    .map_err(plot_err)?;
            }
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 15)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Effective Rank per cell (train and val), in % of context_dim.

struct ErPlot<'a> {
    cells: &'a [CellResult],
}

impl Plot for ErPlot<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(plot_err)?;
        let n = self.cells.len() as i32;
        let top = self
            .cells
            .iter()
            .flat_map(|c| [c.nl().train_er, c.nl().val_er])
            .fold(0.0f64, f64::max)
            * 100.0;
        let top = if top > 0.0 { top * 1.25 } else { 1.0 };
        let samples: Vec<usize> = self.cells.iter().map(|c| c.samples).collect();
        let mut chart = ChartBuilder::on(root)
            .caption("Effective Rank per cell (% of context_dim)", (FAMILY, 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            // An i32 range includes its end, so 0..n-1 gives exactly n segments.
            .build_cartesian_2d((0..(n - 1).max(0)).into_segmented(), 0.0..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("samples per cell")
            .y_desc("Effective Rank (%)")
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => samples
                    .get(*i as usize)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                SegmentValue::Last => String::new(),
            })
            .y_label_formatter(&|v| format!("{v:.1}"))
            .label_style((FAMILY, 14))
            .draw()
            .map_err(plot_err)?;
        let train: Vec<f64> = self.cells.iter().map(|c| c.nl().train_er).collect();
        let val: Vec<f64> = self.cells.iter().map(|c| c.nl().val_er).collect();
        for (k, (name, values)) in [("train ER", train), ("val ER", val)]
            .into_iter()
            .enumerate()
        {
            let color = SERIES_COLORS[k];
            let pts: Vec<(SegmentValue<i32>, f64)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (SegmentValue::CenterOf(i as i32), v * 100.0))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(plot_err)?;
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 5, color.filled())))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight, 15)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// One cell's Phase-2 curves, every replicate: train/val PPL (left), val
// accuracy (right); replicate 0 solid, the others lighter.

struct EpochPlot<'a> {
    /// The replicates of one cell, replicate 0 first.
    runs: Vec<&'a CellResult>,
}

impl Plot for EpochPlot<'_> {
    fn size(&self) -> (u32, u32) {
        (1100, 480)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(plot_err)?;
        let c = self.runs[0];
        let stops: Vec<String> = self
            .runs
            .iter()
            .map(|r| format!("{}/{}", r.best_epoch, r.stop_epoch))
            .collect();
        let title = format!(
            "{} samples ({} train tokens): best/stop epoch {} ({} replicate{})",
            c.samples,
            thousands(c.train_tokens),
            stops.join(", "),
            self.runs.len(),
            if self.runs.len() == 1 { "" } else { "s" }
        );
        let root = root.titled(&title, (FAMILY, 20)).map_err(plot_err)?;
        let (left, right) = root.split_horizontally(550);
        let epochs = || self.runs.iter().flat_map(|r| r.epochs.iter());
        let last = epochs().map(|e| e.epoch).max().unwrap_or(1) as f64;
        let x_range = 0.5..last + 0.5;

        let (y0, y1) = log_bounds(epochs().flat_map(|e| [e.train_ppl, e.val_ppl]));
        let mut chart = ChartBuilder::on(&left)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x_range.clone(), LogAxis { lo: y0, hi: y1 })
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("PPL (log)")
            .x_labels(last as usize + 1)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_labels(8)
            .y_label_formatter(&|v| short_number(*v))
            .label_style((FAMILY, 14))
            .draw()
            .map_err(plot_err)?;
        for (ri, run) in self.runs.iter().enumerate() {
            let curves: [(&str, Vec<(f64, f64)>); 2] = [
                (
                    "train PPL",
                    run.epochs
                        .iter()
                        .map(|e| (e.epoch as f64, e.train_ppl))
                        .collect(),
                ),
                (
                    "val PPL",
                    run.epochs
                        .iter()
                        .map(|e| (e.epoch as f64, e.val_ppl))
                        .collect(),
                ),
            ];
            for (k, (name, pts)) in curves.into_iter().enumerate() {
                let color = SERIES_COLORS[k].mix(if ri == 0 { 1.0 } else { 0.4 });
                let pts: Vec<(f64, f64)> = pts
                    .into_iter()
                    .filter(|&(_, y)| y.is_finite() && y > 0.0)
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(plot_err)?;
                let series = chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
                    .map_err(plot_err)?;
                if ri == 0 {
                    series
                        .label(name)
                        .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
                }
            }
            // Ring the best epoch's val point: the one the summary table reports.
            if let Some(best) = run.epochs.iter().find(|e| e.epoch == run.best_epoch) {
                let ring = chart
                    .draw_series(std::iter::once(Circle::new(
                        (best.epoch as f64, best.val_ppl),
                        9,
                        BLACK.stroke_width(2),
                    )))
                    .map_err(plot_err)?;
                if ri == 0 {
                    ring.label("best epoch")
                        .legend(|(x, y)| Circle::new((x + 10, y), 6, BLACK.stroke_width(2)));
                }
            }
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 14)?;

        let top = epochs().map(|e| e.val_acc).fold(0.0f64, f64::max) * 100.0;
        let top = if top > 0.0 { top * 1.25 } else { 1.0 };
        let mut chart = ChartBuilder::on(&right)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(x_range, 0.0..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("Val Acc (%)")
            .x_labels(last as usize + 1)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .label_style((FAMILY, 14))
            .draw()
            .map_err(plot_err)?;
        for (ri, run) in self.runs.iter().enumerate() {
            let color = SERIES_COLORS[2].mix(if ri == 0 { 1.0 } else { 0.4 });
            let pts: Vec<(f64, f64)> = run
                .epochs
                .iter()
                .map(|e| (e.epoch as f64, e.val_acc * 100.0))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(plot_err)?;
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
                .map_err(plot_err)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Entry points

/// File stem (no extension) of a cell's epoch plot, relative to the plots dir.
pub fn epoch_plot_stem(cell: &CellResult) -> String {
    format!("epochs_{}", cell.samples)
}

/// Writes the sweep's plots into `plots_dir` (created if missing):
/// `scaling`, `effective_rank` and `epochs_<samples>` for each cell with
/// epochs, each as .svg and .png. Returns the files written.
pub fn write_sweep_plots(plots_dir: &Path, results: &SweepResults) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(plots_dir)
        .map_err(|e| anyhow!("cannot create {}: {e}", plots_dir.display()))?;
    let mut files = Vec::new();
    if results.cells.is_empty() {
        return Ok(files);
    }
    let series = results
        .models
        .iter()
        .map(|m| {
            let label = m.model.label();
            ScalingSeries::of_model(label, m)
        })
        .collect();
    let scaling = ScalingPlot {
        title: "Val PPL vs train tokens (log-log)".into(),
        series,
    };
    files.extend(render(&scaling, &plots_dir.join("scaling"))?);
    files.extend(render(
        &ErPlot {
            cells: &results.cells,
        },
        &plots_dir.join("effective_rank"),
    )?);
    for cell in results.cells.iter().filter(|c| !c.epochs.is_empty()) {
        let runs: Vec<&CellResult> = results
            .runs
            .iter()
            .filter(|r| r.model == cell.model && r.samples == cell.samples && !r.epochs.is_empty())
            .collect();
        let runs = if runs.is_empty() { vec![cell] } else { runs };
        files.extend(render(
            &EpochPlot { runs },
            &plots_dir.join(epoch_plot_stem(cell)),
        )?);
    }
    Ok(files)
}

/// Writes `compare_scaling.svg/.png` into `plots_dir`: every side's cells
/// and fitted line on one log-log plot.
pub fn write_compare_plot(
    plots_dir: &Path,
    sides: &[(String, SweepResults)],
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(plots_dir)
        .map_err(|e| anyhow!("cannot create {}: {e}", plots_dir.display()))?;
    let plot = ScalingPlot {
        title: "Val PPL vs train tokens: compared settings".into(),
        series: sides
            .iter()
            .filter_map(|(name, r)| {
                let m = r.models.iter().find(|m| m.model == ModelKind::NewLlm)?;
                Some(ScalingSeries::of_model(name, m))
            })
            .collect(),
    };
    render(&plot, &plots_dir.join("compare_scaling"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::coord::ranged1d::BoldPoints;

    #[test]
    fn short_numbers() {
        assert_eq!(short_number(56602.0), "57K");
        assert_eq!(short_number(1_240_000.0), "1.2M");
        assert_eq!(short_number(536.0), "536");
        assert_eq!(short_number(0.5), "0.50");
    }

    #[test]
    fn log_axis_ticks_and_fitted_segment() {
        let y = LogAxis {
            lo: 410.0,
            hi: 1950.0,
        };
        assert_eq!(
            y.key_points(BoldPoints(10)),
            vec![500.0, 600.0, 700.0, 800.0, 900.0, 1000.0]
        );
        let x = LogAxis {
            lo: 43_000.0,
            hi: 690_000.0,
        };
        assert_eq!(
            x.key_points(BoldPoints(10)),
            vec![50_000.0, 100_000.0, 200_000.0, 500_000.0]
        );
        assert_eq!(x.map(&43_000.0, (0, 100)), 0);
        assert_eq!(x.map(&690_000.0, (0, 100)), 100);
        // PPL = 1e4 * t^-0.5 leaves the box at the top: the segment starts
        // where it enters (y = 1950) and ends at the right edge.
        let [(xa, ya), (xb, yb)] = fitted_segment(
            1e4 * 1e2,
            -0.5,
            &x,
            &LogAxis {
                lo: 100.0,
                hi: 1950.0,
            },
        )
        .unwrap();
        assert!(
            (ya - 1950.0).abs() < 1e-6 && (xb - 690_000.0).abs() < 1e-6,
            "{xa} {ya} {xb} {yb}"
        );
        assert!(fitted_segment(1.0, 0.0, &x, &y).is_none());
    }

    #[test]
    fn embedded_font_registers() {
        ensure_font().unwrap();
    }
}

// ---------------------------------------------------------------------------
// Heatmap: one value per (row, column) config of a two-axis grid.

/// A value per config of a two-axis grid, drawn as coloured cells with the
/// value written in each; lower values are darker (better for PPL and alpha).
#[derive(Clone, Debug, PartialEq)]
pub struct Heatmap {
    pub title: String,
    pub x_key: String,
    pub x_values: Vec<String>,
    pub y_key: String,
    pub y_values: Vec<String>,
    /// values[row][column], rows = y values; None = no result.
    pub values: Vec<Vec<Option<f64>>>,
    /// Decimals of the written values.
    pub digits: usize,
}

impl Plot for Heatmap {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        use plotters::style::text_anchor::{HPos, Pos, VPos};
        root.fill(&WHITE).map_err(plot_err)?;
        let (w, h) = self.size();
        let (left, top, right, bottom) = (170i32, 70i32, 30i32, 90i32);
        let cols = self.x_values.len().max(1) as i32;
        let rows = self.y_values.len().max(1) as i32;
        let cw = (w as i32 - left - right) / cols;
        let ch = (h as i32 - top - bottom) / rows;
        let centred = |size: u32, color: RGBColor| {
            (FAMILY, size)
                .into_font()
                .color(&color)
                .pos(Pos::new(HPos::Center, VPos::Center))
        };
        let finite: Vec<f64> = self
            .values
            .iter()
            .flatten()
            .flatten()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // Low values dark blue, high values pale yellow.
        let shade = |v: f64| {
            let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
            let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
            RGBColor(mix(37, 253), mix(52, 231), mix(148, 37))
        };
        root.draw(&Text::new(
            self.title.clone(),
            (w as i32 / 2, top / 2),
            centred(22, BLACK),
        ))
        .map_err(plot_err)?;
        for (r, row) in self.values.iter().enumerate() {
            for (c, value) in row.iter().enumerate() {
                let (x0, y0) = (left + c as i32 * cw, top + r as i32 * ch);
                let (fill, label, ink) = match value {
                    Some(v) if v.is_finite() => {
                        let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
                        let ink = if t < 0.5 { WHITE } else { BLACK };
                        (shade(*v), format!("{v:.*}", self.digits), ink)
                    }
                    _ => (RGBColor(220, 220, 220), "-".to_string(), BLACK),
                };
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cw, y0 + ch)],
                    fill.filled(),
                ))
                .map_err(plot_err)?;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cw, y0 + ch)],
                    WHITE.stroke_width(2),
                ))
                .map_err(plot_err)?;
                root.draw(&Text::new(
                    label,
                    (x0 + cw / 2, y0 + ch / 2),
                    centred(20, ink),
                ))
                .map_err(plot_err)?;
            }
        }
        for (c, v) in self.x_values.iter().enumerate() {
            let x = left + c as i32 * cw + cw / 2;
            root.draw(&Text::new(
                v.clone(),
                (x, top + rows * ch + 20),
                centred(16, BLACK),
            ))
            .map_err(plot_err)?;
        }
        root.draw(&Text::new(
            self.x_key.clone(),
            (left + cols * cw / 2, top + rows * ch + 55),
            centred(18, BLACK),
        ))
        .map_err(plot_err)?;
        for (r, v) in self.y_values.iter().enumerate() {
            let y = top + r as i32 * ch + ch / 2;
            root.draw(&Text::new(v.clone(), (left - 25, y), centred(16, BLACK)))
                .map_err(plot_err)?;
        }
        root.draw(&Text::new(
            self.y_key.clone(),
            (left / 2 - 10, top + rows * ch / 2),
            centred(18, BLACK),
        ))
        .map_err(plot_err)?;
        Ok(())
    }
}

/// Writes `STEM.svg` and `STEM.png` of a heatmap.
pub fn write_heatmap(stem: &Path, map: &Heatmap) -> Result<Vec<PathBuf>> {
    if let Some(dir) = stem.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    render(map, stem)
}
