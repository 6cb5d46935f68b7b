//! Snapshot progress: a bar with rows, rows/s and ETA when stderr is a terminal, a log
//! line every few seconds otherwise (services, CI, log collectors).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

/// How often the log line is written without a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Counts rows and reports them until dropped or finished.
pub struct Progress {
    rows: Arc<AtomicU64>,
    started: Instant,
    bar: Option<ProgressBar>,
    logger: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts reporting; `estimate` is the planner's row count (0 when unknown).
    pub fn start(estimate: u64) -> Progress {
        let rows = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        if std::io::stderr().is_terminal() {
            let bar =
                ProgressBar::with_draw_target(Some(estimate.max(1)), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "snapshot {bar:30} {human_pos}/~{human_len} rows  {per_sec}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            return Progress {
                rows,
                started,
                bar: Some(bar),
                logger: None,
            };
        }
        let counter = Arc::clone(&rows);
        let logger = tokio::spawn(async move {
            let mut tick = tokio::time::interval(LOG_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let done = counter.load(Ordering::Relaxed);
                let line = line(done, estimate, started.elapsed());
                tracing::info!(rows = done, rate = %line.rate, eta = %line.eta, "snapshot progress");
            }
        });
        Progress {
            rows,
            started,
            bar: None,
            logger: Some(logger),
        }
    }

    /// `n` more rows were queued for delivery.
    pub fn add(&self, n: u64) {
        let total = self.rows.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            if bar.length().is_some_and(|l| total > l) {
                bar.set_length(total);
            }
            bar.set_position(total);
        }
    }

    /// Rows counted so far.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Stops reporting and logs the summary.
    pub fn finish(mut self) {
        let rows = self.rows();
        let elapsed = self.started.elapsed();
        self.stop();
        let rate = rows as f64 / elapsed.as_secs_f64().max(0.001);
        tracing::info!(
            rows,
            elapsed_ms = elapsed.as_millis() as u64,
            rows_per_sec = rate as u64,
            "snapshot delivered"
        );
    }

    fn stop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if let Some(logger) = self.logger.take() {
            logger.abort();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A progress log line's computed parts. Pure.
#[derive(Debug, PartialEq, Eq)]
pub struct Line {
    pub rate: String,
    pub eta: String,
}

/// Rate and ETA from rows done, the estimate and the time spent.
pub fn line(done: u64, estimate: u64, elapsed: Duration) -> Line {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let eta = if rate <= 0.0 || estimate == 0 {
        "unknown".to_string()
    } else if done >= estimate {
        "soon".to_string()
    } else {
        format!("{}s", ((estimate - done) as f64 / rate).ceil() as u64)
    };
    Line {
        rate: format!("{} rows/s", rate.round() as u64),
        eta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_follow_the_estimate() {
        let l = line(1000, 3000, Duration::from_secs(2));
        assert_eq!(
            l,
            Line {
                rate: "500 rows/s".into(),
                eta: "4s".into()
            }
        );
        assert_eq!(line(0, 100, Duration::from_secs(1)).eta, "unknown");
        assert_eq!(line(10, 0, Duration::from_secs(1)).eta, "unknown");
        assert_eq!(line(200, 100, Duration::from_secs(1)).eta, "soon");
    }
}
