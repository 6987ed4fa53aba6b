//! Clean stops. SIGTERM (what Slurm sends before a time limit or a
//! preemption) and SIGINT (Ctrl-C) ask the run to stop at its next safe
//! point, once the cell's state is written; the command then exits with
//! `EXIT_STOPPED`, and rerunning it continues the cell. A second signal
//! stops at once (exit 128 + signal), keeping the last state written.

use anyhow::Result;
use signal_hook::consts::{SIGINT, SIGTERM};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Exit status of a run stopped by a signal after saving its state
/// (EX_TEMPFAIL: "try again later").
pub const EXIT_STOPPED: i32 = 75;

static SIGNAL: std::sync::OnceLock<Arc<AtomicUsize>> = std::sync::OnceLock::new();

fn signal_name(sig: usize) -> &'static str {
    match sig as i32 {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Installs the handlers (the commands that train call this first).
pub fn install() -> Result<()> {
    let requested = Arc::new(AtomicBool::new(false));
    let which = SIGNAL.get_or_init(|| Arc::new(AtomicUsize::new(0))).clone();
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as it was before this signal:
        // set only by an earlier one.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, requested.clone())?;
        signal_hook::flag::register_usize(sig, which.clone(), sig as usize)?;
        signal_hook::flag::register(sig, requested.clone())?;
    }
    // Says so at once (the handler itself may not print): a thread that
    // sleeps until the first signal.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!(
                "{}: stopping at the next safe point, after writing the cell's state (send it again to stop at once)",
                signal_name(sig as usize)
            );
        }
    });
    Ok(())
}

/// The signal that asked for a stop, if one did.
pub fn requested() -> Option<&'static str> {
    let sig = SIGNAL.get()?.load(Ordering::SeqCst);
    (sig != 0).then(|| signal_name(sig))
}

/// A run stopped on request; `saved` says what a rerun continues from.
#[derive(Debug)]
pub struct Stopped {
    pub signal: &'static str,
    pub saved: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped by {}; {}: rerun the same command to continue (exit status {EXIT_STOPPED})",
            self.signal, self.saved
        )
    }
}

impl std::error::Error for Stopped {}

/// The `Stopped` error if a stop was asked for; `saved` describes what a
/// rerun continues from.
pub fn check(saved: impl FnOnce() -> String) -> Result<()> {
    match requested() {
        Some(signal) => Err(Stopped {
            signal,
            saved: saved(),
        }
        .into()),
        None => Ok(()),
    }
}

/// What a stop after writing the state at `state` leaves.
pub fn saved_in(state: &Path) -> String {
    format!("the cell's state is saved in {}", state.display())
}

/// For the pipeline tests: `NEWLLM_TEST_SIGNAL=POINT:SIG[,...]` sends this
/// process SIG (KILL, TERM, INT, STOP) on reaching the safe point named
/// POINT (`phase1-3`, `train_cache`, `val_cache`, `phase2-2`,
/// `transformer-1`), before its state is written, so a signal lands at a
/// known place.
pub fn test_hook(point: &str) {
    let Ok(spec) = std::env::var("NEWLLM_TEST_SIGNAL") else {
        return;
    };
    for item in spec.split(',') {
        let Some((at, sig)) = item.split_once(':') else {
            continue;
        };
        if at != point {
            continue;
        }
        let sig = match sig {
            "KILL" => libc::SIGKILL,
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            "STOP" => libc::SIGSTOP,
            _ => continue,
        };
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), sig);
        }
        // Lets the handler run before the caller checks for a stop.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
