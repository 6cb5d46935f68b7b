//! `ds-sync bench`: options to a [`BenchOptions`], the result to the terminal.

use std::io::IsTerminal;
use std::time::Duration;

use crate::bench::{self, BenchOptions};
use crate::config::{Settings, Source};

use super::CliError;
use super::args::BenchArgs;

/// Runs one scenario and prints its table and where the report went.
pub(super) async fn bench(args: &BenchArgs, settings: &Settings) -> Result<(), CliError> {
    let postgres = (settings.postgres_url_source() != Source::Unset)
        .then(|| super::commands::target(settings))
        .transpose()?;
    let ds_url = (settings.ds_server_url.source != Source::Default)
        .then(|| settings.ds_server_url.value.clone());
    let ds_access = settings.ds_access()?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Invalid(format!("cannot find the ds-sync executable: {e}")))?;
    let opts = BenchOptions {
        scenario: args.scenario,
        rows: args.rows.max(1),
        txns: args.txns.max(1),
        rate: args.rate.max(1),
        peak_rate: args.peak_rate,
        duration: Duration::from_secs(args.duration.max(1)),
        out: args.out.clone(),
        postgres,
        ds_url,
        ds_access,
        exe,
        progress: std::io::stderr().is_terminal(),
        command: command_line(),
        ds_sync_args: args.ds_sync_args.clone(),
        writers: args.writers.max(1),
        runs: args.runs.max(1),
        streams: args.streams.max(1),
        instances: args.instances.max(2),
        table_forms: if args.table_forms.is_empty() {
            vec![bench::table_form::TableForm::Plain]
        } else {
            args.table_forms.clone()
        },
        kills: args.kills,
        seed: args.seed.unwrap_or_else(clock_seed),
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; run the bench with `cargo run --release --features bench -- bench ...`"
        );
    }
    let (report, dir) = bench::run(&opts).await?;
    println!("{}", report.table());
    println!("\nreport: {}", dir.join("report.md").display());
    if !report.targets_met() {
        println!("at least one target was MISSED (see the table above)");
        if opts.scenario == bench::Scenario::Chaos {
            return Err(bench::BenchError::ChecksFailed(format!(
                "the chaos run failed a check (lost, duplicated or reordered data, or fewer \
                 faults than planned); see {}",
                dir.join("report.md").display()
            ))
            .into());
        }
    }
    Ok(())
}

/// A seed from the clock, for a chaos run given none.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// Options whose values may hold a secret.
const SECRET_OPTIONS: [&str; 3] = ["--postgres-url", "--ds-token", "--ds-header"];

/// The command as typed, without values that may hold a password or a token.
fn command_line() -> String {
    hide_secrets(std::env::args().skip(1))
}

fn hide_secrets(args: impl Iterator<Item = String>) -> String {
    let mut out = vec!["ds-sync".to_owned()];
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("<hidden>".into());
            hide_next = false;
        } else if SECRET_OPTIONS.contains(&a.as_str()) {
            out.push(a);
            hide_next = true;
        } else if let Some(option) = SECRET_OPTIONS
            .iter()
            .find(|o| a.starts_with(&format!("{o}=")))
        {
            out.push(format!("{option}=<hidden>"));
        } else {
            out.push(a);
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_report_never_shows_a_password_or_token() {
        let args = [
            "bench",
            "capture-drain",
            "--postgres-url",
            "postgres://u:pw@h/db",
            "--ds-token=tok123",
            "--ds-header",
            "X-Key: k3y",
        ];
        let line = super::hide_secrets(args.iter().map(|s| s.to_string()));
        for secret in ["pw@", "tok123", "k3y"] {
            assert!(!line.contains(secret), "{line}");
        }
        assert!(line.contains("--ds-token=<hidden>"), "{line}");
    }
}
