//! The progress line of a long run: one line on stderr, redrawn in place on a terminal, with
//! what is being measured and an estimate of the time left. Hidden when stderr is not a
//! terminal (CI logs get the summary only).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A run's progress: `advance` once per measured trial.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A progress line for `trials` measured trials of `subcommand`.
    pub fn new(subcommand: &str, trials: u64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(trials), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} trials, ~{eta} left: {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(subcommand.to_owned());
        Self { bar }
    }

    /// A progress that shows nothing.
    pub fn hidden() -> Self {
        Self {
            bar: ProgressBar::hidden(),
        }
    }

    /// Says what is running now.
    pub fn step_message(&self, message: &str) {
        self.bar.set_message(message.to_owned());
    }

    /// One more trial done.
    pub fn advance(&self) {
        self.bar.inc(1);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
