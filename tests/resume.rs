//! Long runs survive: the `newllm` binary killed (SIGKILL) inside Phase 1,
//! between the caches and inside Phase 2, stopped by SIGTERM / Ctrl-C, fed
//! a damaged or foreign state, or racing a second process, then rerun:
//! the finished cell must equal an uninterrupted run's, byte for byte
//! (timings aside). Signals land at known safe points through the
//! `NEWLLM_TEST_SIGNAL` hook (src/stop.rs).

mod common;

use common::{strip_timings, temp_dir};
use newllm::config::Config;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A corpus, a preset and a token cache shared by the runs of one test.
struct Setup {
    dir: PathBuf,
    preset: PathBuf,
}

impl Setup {
    fn new(name: &str, cfg: impl FnOnce(Config) -> Config) -> Setup {
        let dir = temp_dir(name);
        let words = [
            "the", "cat", "sat", "on", "a", "mat", "and", "ran", "to", "dog",
        ];
        let mut text = String::new();
        for s in 0..10 {
            for w in 0..(40 + 9 * (s % 4)) {
                text.push_str(words[(s * 5 + w * 3 + w / 5) % words.len()]);
                text.push(if w % 8 == 7 { '.' } else { ' ' });
            }
            text.push_str("\n<|endofsample|>\n");
        }
        std::fs::write(dir.join("corpus.txt"), text).unwrap();
        let base = Config {
            embed_dim: 8,
            context_dim: 8,
            num_layers: 2,
            phase1_max_iterations: 4,
            phase1_min_iterations: 4,
            phase1_batch_size: 64,
            phase2_batch_size: 32,
            phase2_epochs: 3,
            phase2_patience: 0,
            transformer_block_size: 16,
            transformer_dim: 16,
            sample_counts: vec![8],
            corpus: dir.join("corpus.txt").to_string_lossy().into_owned(),
            threads: 1,
            baselines: vec![],
            replicates: 1,
            // every safe point, whatever a write costs against these tiny steps
            state_interval_seconds: 1e-9,
            ..Config::default()
        };
        let preset = dir.join("preset.toml");
        std::fs::write(&preset, toml::to_string(&cfg(base)).unwrap()).unwrap();
        Setup { dir, preset }
    }

    /// `newllm ARGS --preset P --cache-dir C`, with the test hook if given.
    fn run(&self, args: &[&str], signal: Option<&str>) -> Output {
        self.command(args, signal).output().unwrap()
    }

    fn command(&self, args: &[&str], signal: Option<&str>) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_newllm"));
        c.args(args)
            .arg("--preset")
            .arg(&self.preset)
            .arg("--cache-dir")
            .arg(self.dir.join("cache"));
        match signal {
            Some(s) => c.env("NEWLLM_TEST_SIGNAL", s),
            None => c.env_remove("NEWLLM_TEST_SIGNAL"),
        };
        c
    }

    /// `train` of `model` on 8 samples into `out`.
    fn train(&self, model: &str, out: &str, signal: Option<&str>) -> Output {
        let out = self.dir.join(out);
        self.run(
            &[
                "train",
                "--model",
                model,
                "--samples",
                "8",
                "--out",
                out.to_str().unwrap(),
            ],
            signal,
        )
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "{:?}\n{}", o.status, stderr(o));
}

fn assert_killed(o: &Output) {
    assert_eq!(o.status.signal(), Some(9), "{:?}\n{}", o.status, stderr(o));
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v = serde_json::from_str(l).unwrap();
            strip_timings(&mut v);
            v
        })
        .collect()
}

/// The run in `out` finished exactly like the one in `reference`: the same
/// result (timings aside), log and checkpoint bytes; no state or claim left.
fn assert_same_cell(dir: &Path, stem: &str, out: &str, reference: &str) {
    let (a, b) = (dir.join(out), dir.join(reference));
    let read = |d: &Path| -> serde_json::Value {
        let mut v =
            serde_json::from_str(&std::fs::read_to_string(d.join(format!("{stem}.json"))).unwrap())
                .unwrap();
        strip_timings(&mut v);
        v
    };
    assert_eq!(
        read(&a),
        read(&b),
        "{out}/{stem}.json differs from {reference}"
    );
    let log = |d: &Path| json_lines(&d.join(format!("{stem}.log.jsonl")));
    assert_eq!(log(&a), log(&b), "{out}/{stem}.log.jsonl differs");
    let same = std::fs::read(a.join(format!("{stem}.safetensors"))).unwrap()
        == std::fs::read(b.join(format!("{stem}.safetensors"))).unwrap();
    assert!(same, "{out}/{stem}.safetensors differs from {reference}");
    for ext in ["state", "claim"] {
        assert!(
            !a.join(format!("{stem}.{ext}")).exists(),
            "{out}/{stem}.{ext} is left behind"
        );
    }
}

#[test]
fn killed_inside_phase1_between_the_caches_and_inside_phase2_it_resumes_exactly() {
    let s = Setup::new("kills", |c| c);
    assert_ok(&s.train("newllm", "reference", None));
    let state = s.dir.join("killed/cell-8.state");
    // killed three times, at a different stage each time, then finished
    for point in ["phase1-3", "val_cache", "phase2-2"] {
        let o = s.train("newllm", "killed", Some(&format!("{point}:KILL")));
        assert_killed(&o);
        assert!(state.exists(), "no state after a kill at {point}");
    }
    let o = s.train("newllm", "killed", None);
    assert_ok(&o);
    assert!(stderr(&o).contains("resuming from"), "{}", stderr(&o));
    assert_same_cell(&s.dir, "cell-8", "killed", "reference");
    // between the caches: after the train cache, before the validation one
    let o = s.train("newllm", "between", Some("val_cache:KILL"));
    assert_killed(&o);
    let o = s.train("newllm", "between", None);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("(stage TrainCache, Phase-1 iteration 4)"),
        "{}",
        stderr(&o)
    );
    assert_same_cell(&s.dir, "cell-8", "between", "reference");
}

#[test]
fn the_transformer_resumes_exactly_after_a_kill() {
    let s = Setup::new("transformer", |c| c);
    assert_ok(&s.train("transformer", "reference", None));
    assert_killed(&s.train("transformer", "killed", Some("transformer-2:KILL")));
    let o = s.train("transformer", "killed", None);
    assert_ok(&o);
    assert!(stderr(&o).contains("after epoch 1"), "{}", stderr(&o));
    assert_same_cell(&s.dir, "transformer-cell-8", "killed", "reference");
}

#[test]
fn sigterm_stops_at_the_next_safe_point_with_its_state_written() {
    // with a write interval no safe point reaches, only the stop writes
    let s = Setup::new("sigterm", |c| Config {
        state_interval_seconds: 3600.0,
        ..c
    });
    assert_ok(&s.train("newllm", "reference", None));
    let o = s.train("newllm", "stopped", Some("phase1-2:TERM"));
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    let err = stderr(&o);
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("stopped by SIGTERM; the cell's state is saved in ")
            && last.ends_with("rerun the same command to continue (exit status 75)"),
        "{err}"
    );
    let o = s.train("newllm", "stopped", None);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("(stage Phase1, Phase-1 iteration 2)"),
        "{}",
        stderr(&o)
    );
    assert_same_cell(&s.dir, "cell-8", "stopped", "reference");
    // the Slurm path: a sweep task stops the same way, and its rerun finishes the sweep
    let out = s.dir.join("sweep");
    let args = ["sweep", "--out", out.to_str().unwrap(), "--cell", "0"];
    let o = s.run(&args, Some("phase2-2:TERM"));
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(stderr(&o)
        .lines()
        .last()
        .unwrap()
        .starts_with("stopped by SIGTERM"));
    assert!(!out.join("results.json").exists());
    assert_ok(&s.run(&args, None));
    assert!(out.join("results.json").exists());
    assert_same_cell(&s.dir, "cell-8", "sweep", "reference");
}

#[test]
fn a_second_ctrl_c_stops_at_once_and_the_last_state_is_kept() {
    let s = Setup::new("ctrlc", |c| c);
    assert_ok(&s.train("newllm", "reference", None));
    // the first Ctrl-C alone would stop at this safe point; the second ends
    // the process before its write
    let o = s.train("newllm", "stopped", Some("phase2-2:INT,phase2-2:INT"));
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let o = s.train("newllm", "stopped", None);
    assert_ok(&o);
    assert!(stderr(&o).contains(", epoch 1)"), "{}", stderr(&o));
    assert_same_cell(&s.dir, "cell-8", "stopped", "reference");
}

#[test]
fn a_damaged_state_is_reported_and_the_cell_starts_over() {
    let s = Setup::new("damaged", |c| c);
    assert_ok(&s.train("newllm", "reference", None));
    assert_killed(&s.train("newllm", "damaged", Some("phase2-1:KILL")));
    let state = s.dir.join("damaged/cell-8.state");
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&state, bytes).unwrap();
    let o = s.train("newllm", "damaged", None);
    assert_ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("was damaged (checksum mismatch") && err.contains("the cell starts over"),
        "{err}"
    );
    assert!(!err.contains("resuming from"), "{err}");
    assert_same_cell(&s.dir, "cell-8", "damaged", "reference");
}

#[test]
fn a_state_from_other_settings_is_refused_and_kept() {
    let s = Setup::new("mismatch", |c| c);
    assert_ok(&s.train("newllm", "reference", None));
    assert_killed(&s.train("newllm", "other", Some("phase1-2:KILL")));
    let out = s.dir.join("other");
    let o = s.run(
        &[
            "train",
            "--samples",
            "8",
            "--out",
            out.to_str().unwrap(),
            "--set",
            "phase2_learning_rate=0.002",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("holds a cell's state from a different run (config phase2_learning_rate: 0.001 in the state, 0.002 now)")
            && err.contains("delete it to start this cell over"),
        "{err}"
    );
    assert!(out.join("cell-8.state").exists(), "a refused state is kept");
    assert_ok(&s.train("newllm", "other", None));
    assert_same_cell(&s.dir, "cell-8", "other", "reference");
}

/// The process state letter of `pid` ('T' = stopped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim().chars().next()
}

#[test]
fn a_second_process_on_a_running_cell_is_refused_and_a_dead_owner_is_taken_over() {
    let s = Setup::new("claims", |c| c);
    assert_ok(&s.train("newllm", "reference", None));
    let out = s.dir.join("shared");
    let sweep = |signal| {
        s.command(
            &["sweep", "--out", out.to_str().unwrap(), "--cell", "0"],
            signal,
        )
    };
    // the first process stops itself (SIGSTOP) inside Phase 1, holding its claim
    let mut first = sweep(Some("phase1-2:STOP")).spawn().unwrap();
    let pid = first.id();
    let t0 = std::time::Instant::now();
    while proc_state(pid) != Some('T') {
        assert!(
            t0.elapsed().as_secs() < 60,
            "the first process never stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = sweep(None).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "cell 8 samples (newllm replicate 0) is being computed by another process (pid {pid} on "
        )),
        "{err}"
    );
    // the owner dies without cleaning up; the next process takes over
    first.kill().unwrap();
    first.wait().unwrap();
    let o = sweep(None).output().unwrap();
    assert_ok(&o);
    assert!(
        stderr(&o).contains(&format!("taking over cell 8 samples (newllm replicate 0) from a process that has stopped (pid {pid} on ")),
        "{}",
        stderr(&o)
    );
    assert_same_cell(&s.dir, "cell-8", "shared", "reference");
}

#[test]
fn a_failed_state_write_names_the_file_keeps_the_last_state_and_a_rerun_resumes() {
    use std::os::unix::process::CommandExt;
    let s = Setup::new("fullfile", |c| c);
    assert_ok(&s.train("newllm", "reference", None));
    let out = s.dir.join("limited");
    let mut c = s.command(
        &["train", "--samples", "8", "--out", out.to_str().unwrap()],
        None,
    );
    // Files over 2 MB fail to grow (EFBIG, as a full disk fails with
    // ENOSPC): the Phase-1 and cache states fit, Phase 2's (with its
    // 50,257-row head four times over) does not.
    // SAFETY: setrlimit and signal are async-signal-safe, as pre_exec requires.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 2 << 20,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let state = out.join("cell-8.state");
    assert!(
        err.contains(&format!("cannot write {}: File too large", state.display()))
            && err.contains("earlier files are intact"),
        "{err}"
    );
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !left.iter().any(|f| f.contains(".tmp")),
        "a temporary file is left: {left:?}"
    );
    let o = s.train("newllm", "limited", None);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("(stage Caches, Phase-1 iteration 4)"),
        "{}",
        stderr(&o)
    );
    assert_same_cell(&s.dir, "cell-8", "limited", "reference");
}
