//! Per-transaction stage times, for `ds-sync bench capture-latency`'s timeline.
//!
//! The latency bench sees two ends of a row's way: its commit returning to the writer and its
//! arrival at an SSE reader. To say where the time between goes, the ds-sync child writes
//! the moments in between, per transaction, to the file named by `DS_SYNC_BENCH_TIMELINE`:
//!
//! ```text
//!  R <commit lsn> <xid> <µs>   the Commit of the transaction was decoded (received)
//!  P <commit lsn> <µs>         a POST carrying messages of it was started (each attempt)
//!  A <commit lsn> <µs>         the DS server acknowledged that POST
//! ```
//!
//! Times are microseconds of the Unix clock, which the bench process (same machine) reads
//! too. The recorder exists only in builds with the `bench` feature, and records only when
//! the variable is set: in the sidecar binary every hook is an empty function. Lines go to a
//! buffer that a thread flushes every 100 ms, so a hook costs a short lock and a formatted
//! write to memory, not a system call.

use crate::lsn::Lsn;

/// The environment variable naming the timeline file.
pub const ENV: &str = "DS_SYNC_BENCH_TIMELINE";

/// The Commit of transaction `xid` (committed at `commit_lsn`) was decoded.
pub fn received(commit_lsn: Lsn, xid: u32) {
    imp::line(format_args!("R {} {xid}", commit_lsn.as_u64()));
}

/// A POST with messages of these transactions (commit LSNs, in order, repeats allowed) was
/// started.
pub fn posted(commits: impl Iterator<Item = Lsn>) {
    imp::each('P', commits);
}

/// The POST with messages of these transactions was acknowledged.
pub fn acknowledged(commits: impl Iterator<Item = Lsn>) {
    imp::each('A', commits);
}

#[cfg(feature = "bench")]
mod imp {
    use std::fmt::Arguments;
    use std::io::{BufWriter, Write};
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use crate::lsn::Lsn;

    type Sink = Mutex<BufWriter<std::fs::File>>;

    static SINK: OnceLock<Option<&'static Sink>> = OnceLock::new();

    /// The open timeline file, if the variable names one (opened, and its flusher started,
    /// on first use).
    fn sink() -> Option<&'static Sink> {
        *SINK.get_or_init(|| {
            let path = std::env::var_os(super::ENV)?;
            let file = match std::fs::File::create(&path) {
                Ok(file) => file,
                Err(e) => {
                    tracing::warn!(path = %std::path::Path::new(&path).display(), error = %e, "cannot write the bench timeline");
                    return None;
                }
            };
            let sink: &'static Sink = Box::leak(Box::new(Mutex::new(BufWriter::new(file))));
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(100));
                    if let Ok(mut w) = sink.lock() {
                        let _ = w.flush();
                    }
                }
            });
            Some(sink)
        })
    }

    fn now_us() -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    }

    pub(super) fn line(args: Arguments<'_>) {
        if let Some(sink) = sink()
            && let Ok(mut w) = sink.lock()
        {
            let _ = writeln!(w, "{args} {}", now_us());
        }
    }

    pub(super) fn each(stage: char, commits: impl Iterator<Item = Lsn>) {
        let Some(sink) = sink() else { return };
        let at = now_us();
        let Ok(mut w) = sink.lock() else { return };
        let mut last = None;
        for lsn in commits {
            if last != Some(lsn) {
                let _ = writeln!(w, "{stage} {} {at}", lsn.as_u64());
                last = Some(lsn);
            }
        }
    }
}

#[cfg(not(feature = "bench"))]
mod imp {
    use std::fmt::Arguments;

    use crate::lsn::Lsn;

    #[inline(always)]
    pub(super) fn line(_: Arguments<'_>) {}

    #[inline(always)]
    pub(super) fn each(_: char, _: impl Iterator<Item = Lsn>) {}
}
