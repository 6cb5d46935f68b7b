//! `ds-sync bench`: options to a [`BenchOptions`], the result to the terminal.

use std::io::IsTerminal;
use std::time::Duration;

use crate::bench::{self, BenchOptions};
use crate::config::{Settings, Source};

use super::CliError;
use super::args::BenchArgs;

/// Runs one scenario and prints its table and where the report went.
pub async fn bench(args: &BenchArgs, settings: &Settings) -> Result<(), CliError> {
    let postgres = (settings.postgres_url_source() != Source::Unset)
        .then(|| super::commands::target(settings))
        .transpose()?;
    let ds_url = (settings.ds_server_url.source != Source::Default)
        .then(|| settings.ds_server_url.value.clone());
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Invalid(format!("cannot find the ds-sync executable: {e}")))?;
    let opts = BenchOptions {
        scenario: args.scenario,
        rows: args.rows.max(1),
        txns: args.txns.max(1),
        rate: args.rate.max(1),
        duration: Duration::from_secs(args.duration.max(1)),
        out: args.out.clone(),
        postgres,
        ds_url,
        exe,
        progress: std::io::stderr().is_terminal(),
        command: command_line(),
        ds_sync_args: args.ds_sync_args.clone(),
        writers: args.writers.max(1),
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; run the bench with `cargo run --release -- bench ...`"
        );
    }
    let (report, dir) = bench::run(&opts).await?;
    println!("{}", report.table());
    println!("\nreport: {}", dir.join("report.md").display());
    if !report.targets_met() {
        println!("at least one target was MISSED (see the table above)");
    }
    Ok(())
}

/// The command as typed, without values that may hold a password.
fn command_line() -> String {
    let mut out = vec!["ds-sync".to_owned()];
    let mut hide_next = false;
    for a in std::env::args().skip(1) {
        if hide_next {
            out.push("<hidden>".into());
            hide_next = false;
        } else if a == "--postgres-url" {
            out.push(a);
            hide_next = true;
        } else if a.starts_with("--postgres-url=") {
            out.push("--postgres-url=<hidden>".into());
        } else {
            out.push(a);
        }
    }
    out.join(" ")
}
