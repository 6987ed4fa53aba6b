//! The `newllm` command line: one subcommand per job.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use newllm::config::{Config, Device};
use newllm::experiment::cell::{run_cell, summary_line};
use newllm::experiment::grid::{self, Grid};
use newllm::experiment::report::baselines::mean_sd;
use newllm::experiment::report::wording::alpha_sentence;
use newllm::experiment::results::SweepResults;
use newllm::experiment::sweep;
use newllm::memory::gib;
use newllm::models::newllm::{checkpoint, generate, golden};
use newllm::models::{CellPaths, ModelKind};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "newllm",
    version,
    about = "New-LLM: fixed-point context learning and its scaling experiments",
    after_help = "Exit status: 0 done; 1 error; 75 stopped by SIGTERM or Ctrl-C after saving the running cell's state (rerun the same command to continue); 130 / 143 a second Ctrl-C / SIGTERM stopped it at once (the last state written is kept)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Settings shared by every command that trains.
#[derive(Args, Clone)]
struct RunArgs {
    /// Preset name (seed, seed-true, quick) or a .toml file.
    #[arg(long, default_value = "quick")]
    preset: String,
    /// Corpus: parquet/JSONL/text file or directory; default = embedded chitchat corpus.
    #[arg(long)]
    corpus: Option<String>,
    /// Override any config field: --set key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Tokenized-corpus cache directory.
    #[arg(long, default_value = "runs/.token-cache")]
    cache_dir: PathBuf,
}

impl RunArgs {
    fn config(&self) -> Result<Config> {
        let mut cfg = Config::preset(&self.preset)?;
        if let Some(c) = &self.corpus {
            cfg.corpus = c.clone();
        }
        cfg.apply_overrides(&self.sets)?;
        Ok(cfg)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Train one cell of one model (New-LLM: Phase 1 -> caches -> ER -> Phase 2) and print its summary.
    Train(TrainArgs),
    /// Run the scaling sweep: one cell per sample count, resumable; writes
    /// DIR/results.json, DIR/report.md and plots.
    Sweep(SweepArgs),
    /// Merge the finished cells of a sweep directory into results.json and
    /// report.md (a comparison's directory: every config's report and compare.md).
    Report { dir: PathBuf },
    /// The same cells under two or more configs (identical data and seeds):
    /// each config a full sweep in DIR/<config>/, baselines once per distinct
    /// configuration, one report DIR/compare.md.
    Compare(CompareArgs),
    /// Time each stage against this machine's GEMM peak and memory bandwidth
    /// (measured in the same process), and a resume-state write in the JSON's
    /// folder; prints a table and writes JSON.
    Bench(BenchArgs),
    /// The golden checks (src/models/newllm/golden.rs, also run by cargo test)
    /// on a device, one line per quantity; exits non-zero if any fails. For
    /// machines with only the binary.
    Golden(GoldenArgs),
    /// What the GPU pipeline loads, step by step: the driver, cuBLAS and
    /// NVRTC (CUDA 12 or 13, every symbol resolved), the kernels compiled to
    /// a CUBIN with ptxas's report, then the GPU opened. Needs a binary
    /// built with --features cuda.
    CudaCheck(CudaCheckArgs),
    /// Corpus tools.
    Data {
        #[command(subcommand)]
        cmd: DataCmd,
    },
    /// Sample text from a trained checkpoint.
    Generate(GenerateArgs),
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Samples (conversations) to use; default = the config's largest sample count.
    #[arg(long)]
    samples: Option<usize>,
    /// Output directory for the log, checkpoint and result JSON.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Which model: newllm, kn or transformer.
    #[arg(long, default_value = "newllm")]
    model: ModelKind,
}

#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, default_value = "runs/sweep")]
    out: PathBuf,
    /// Run only this cell (0-based index into sample_counts), e.g. one Slurm array task each.
    #[arg(long)]
    cell: Option<usize>,
}

#[derive(Args)]
struct CompareArgs {
    #[command(flatten)]
    run: RunArgs,
    /// key=v1,v2[,...]: one config per value, e.g. token_input_all_layers=true,false;
    /// repeat for a grid (the cartesian product), e.g. --vary num_layers=1,2 --vary num_input_tokens=1,2.
    #[arg(long, conflicts_with = "presets")]
    vary: Vec<String>,
    /// Two or more presets (names or .toml files), comma-separated.
    #[arg(long, value_delimiter = ',')]
    presets: Vec<String>,
    #[arg(long, default_value = "runs/compare")]
    out: PathBuf,
    /// Run only this config (0-based, in the order the grid lists them), e.g. one Slurm array task each.
    #[arg(long)]
    config: Option<usize>,
    /// Run only this cell of each config run (0-based index into sample_counts).
    #[arg(long)]
    cell: Option<usize>,
}

#[derive(Args)]
struct BenchArgs {
    /// Model preset to time (default: the seed's 6 x 768 model).
    #[arg(long, default_value = "seed")]
    preset: String,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Phase-2 batch rows.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Tokens for the sequential-pass timing.
    #[arg(long, default_value_t = 200)]
    seq_tokens: usize,
    #[arg(long, default_value = "runs/bench.json")]
    out: PathBuf,
}

#[derive(Args)]
struct GoldenArgs {
    /// Directory holding the golden cases (NAME.safetensors.gz + NAME.json; tests/golden in the repository).
    #[arg(long, default_value = "tests/golden")]
    dir: PathBuf,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Cases to run (default: all four).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
}

#[derive(Args)]
struct CudaCheckArgs {
    /// Compute capability to compile the kernels for, as a number (90 =
    /// sm_90, H100; 80 = A100); default: the GPU's, or 90 with --no-device.
    #[arg(long)]
    arch: Option<u32>,
    /// Stop before the first call that needs a GPU (for machines without one).
    #[arg(long)]
    no_device: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 50)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Subcommand)]
enum DataCmd {
    /// Sample count, tokens per sample, and train/val tokens per sample count.
    Inspect {
        /// Corpus path; default = the embedded corpus.
        corpus: Option<String>,
        /// Sample counts to show train/val splits for.
        #[arg(long, value_delimiter = ',', default_value = "50,100,200,500")]
        samples: Vec<usize>,
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        #[arg(long, default_value = "runs/.token-cache")]
        cache_dir: PathBuf,
    },
}

/// The summary table (every model, mean +/- sd over seeds) and each
/// model's scaling line on stdout.
fn print_sweep(r: &SweepResults, dir: &Path) {
    let mut head = "| Samples | Tokens |".to_string();
    for m in &r.models {
        head += &format!(
            " {} Val PPL | {} Val Acc |",
            m.model.label(),
            m.model.label()
        );
    }
    head += " New-LLM Val ER |";
    println!("{head}");
    println!("|{}", "---|".repeat(head.matches('|').count() - 1));
    for c in &r.cells {
        let mut row = format!("| {} | {} |", c.samples, c.train_tokens);
        for m in &r.models {
            let cell = m.cells.iter().find(|x| x.samples == c.samples);
            row += &format!(
                " {} | {}% |",
                mean_sd(cell.and_then(|x| x.val_ppl), 1.0, 1),
                mean_sd(cell.and_then(|x| x.val_acc), 100.0, 1)
            );
        }
        row += &format!(" {:.1}% |", 100.0 * c.nl().val_er);
        println!("{row}");
    }
    for m in &r.models {
        if let Some(f) = &m.scaling {
            println!("{}: {}", m.model.label(), alpha_sentence(f));
        }
    }
    println!("report: {}", dir.join("report.md").display());
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        // A clean stop on a signal: one line, and the status a requeue
        // script looks for.
        if let Some(stopped) = e.downcast_ref::<newllm::stop::Stopped>() {
            eprintln!("{stopped}");
            std::process::exit(newllm::stop::EXIT_STOPPED);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if matches!(cli.cmd, Cmd::Train(_) | Cmd::Sweep(_) | Cmd::Compare(_)) {
        newllm::stop::install()?;
        // Before anything long: a resume must know the build that started.
        newllm::state::code_id()?;
    }
    match cli.cmd {
        Cmd::Train(a) => train(a),
        Cmd::Sweep(a) => run_sweep(a),
        Cmd::Report { dir } => report(&dir),
        Cmd::Compare(a) => compare(a),
        Cmd::Bench(a) => bench(a),
        Cmd::Golden(a) => golden_checks(a),
        Cmd::Data {
            cmd:
                DataCmd::Inspect {
                    corpus,
                    samples,
                    val_fraction,
                    cache_dir,
                },
        } => {
            let text = newllm::data::inspect_with(
                corpus.as_deref().unwrap_or(""),
                &samples,
                val_fraction,
                &cache_dir,
            )?;
            print!("{text}");
            Ok(())
        }
        Cmd::Generate(a) => generate_text(a),
        Cmd::CudaCheck(a) => cuda_check(a),
    }
}

#[cfg(feature = "cuda")]
fn cuda_check(a: CudaCheckArgs) -> Result<()> {
    use newllm::models::newllm::gpu::check;
    check::run(a.arch, !a.no_device, &mut |line| println!("{line}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda_check(_: CudaCheckArgs) -> Result<()> {
    anyhow::bail!(
        "cuda-check: this binary was built without the GPU pipeline; build it with \
         `cargo build --release --features cuda`"
    )
}

fn train(a: TrainArgs) -> Result<()> {
    let cfg = a.run.config()?;
    let samples = a
        .samples
        .unwrap_or_else(|| cfg.sample_counts.iter().copied().max().unwrap_or(1));
    let r = run_cell(a.model, &cfg, samples, &a.out, &a.run.cache_dir)?;
    println!("{}", summary_line(&r));
    let stages: Vec<String> = r
        .seconds
        .0
        .iter()
        .filter(|(k, _)| k != "total")
        .map(|(k, v)| format!("{k} {v:.1}s"))
        .collect();
    let iterations = r.newllm.as_ref().map_or(String::new(), |n| {
        format!(" | {} Phase-1 iterations", n.phase1_iterations)
    });
    println!(
        "stages: {}{iterations} | peak RSS {} (predicted {})",
        stages.join(" | "),
        gib(r.measured_peak_bytes),
        gib(r.predicted_peak_bytes)
    );
    println!(
        "result: {}",
        CellPaths::new(&a.out, a.model, samples, 0).result.display()
    );
    Ok(())
}

fn run_sweep(a: SweepArgs) -> Result<()> {
    let cfg = a.run.config()?;
    let t0 = std::time::Instant::now();
    if let Some(r) = sweep::run_sweep(&cfg, &a.out, &a.run.cache_dir, a.cell)? {
        print_sweep(&r, &a.out);
        println!("wall time {:.1}s", t0.elapsed().as_secs_f64());
    }
    Ok(())
}

fn report(dir: &Path) -> Result<()> {
    let done = grid::report_dir(dir)?;
    match &done[..] {
        [(_, r)] if !dir.join("grid.json").exists() => print_sweep(r, dir),
        _ => println!("comparison: {}", dir.join("compare.md").display()),
    }
    Ok(())
}

fn compare(a: CompareArgs) -> Result<()> {
    let g = if a.presets.is_empty() {
        Grid::vary(&a.run.config()?, &a.vary)?
    } else {
        if a.presets.len() < 2 {
            anyhow::bail!("compare needs --vary key=v1,v2 or --presets a,b (two or more)");
        }
        let configs = a
            .presets
            .iter()
            .map(|p| {
                RunArgs {
                    preset: p.clone(),
                    ..a.run.clone()
                }
                .config()
                .map(|c| (p.clone(), c))
            })
            .collect::<Result<Vec<_>>>()?;
        Grid::presets(configs)
    };
    let t0 = std::time::Instant::now();
    let done = grid::run_grid(&g, &a.out, &a.run.cache_dir, a.config, a.cell)?;
    if done.is_none() {
        println!(
            "some runs are still to do; `newllm report {}` merges what is there",
            a.out.display()
        );
    }
    println!("comparison: {}", a.out.join("compare.md").display());
    println!("wall time {:.1}s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let cfg = RunArgs {
        preset: a.preset,
        corpus: None,
        sets: a.sets,
        cache_dir: PathBuf::new(),
    }
    .config()?;
    let dir = a
        .out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let r = newllm::bench::run(&cfg, a.batch, a.seq_tokens, dir)?;
    print!("{}", newllm::bench::table(&r));
    if let Some(parent) = a.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    newllm::io::write_atomic(&a.out, serde_json::to_string_pretty(&r)?.as_bytes())?;
    println!("json: {}", a.out.display());
    Ok(())
}

fn golden_checks(a: GoldenArgs) -> Result<()> {
    let names: Vec<&str> = if a.cases.is_empty() {
        golden::CASES.to_vec()
    } else {
        a.cases.iter().map(String::as_str).collect()
    };
    let checks = golden::run_all(&a.dir, a.device, &names)?;
    print!("{}", golden::table(&checks));
    let failed = checks.iter().filter(|c| !c.pass).count();
    if failed > 0 {
        anyhow::bail!("{failed} golden checks failed on device {}", a.device);
    }
    Ok(())
}

fn generate_text(a: GenerateArgs) -> Result<()> {
    let model = checkpoint::load_checkpoint(&a.checkpoint)?;
    let tok = newllm::data::Tokenizer::gpt2().context("loading the GPT-2 tokenizer")?;
    let s = generate::Sampling {
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        seed: a.seed,
    };
    println!(
        "{}{}",
        a.prompt,
        generate::generate(&model, &tok, &a.prompt, &s)?
    );
    Ok(())
}
