//! Printing command results as aligned tables for people or JSON for scripts.

use std::io::Write;

use comfy_table::{Table, presets::ASCII_NO_BORDERS};
use serde::Serialize;
use serde_json::json;

use crate::config::{OutputFormat, Settings, Source, Sourced};
use crate::publication::PublicationInfo;
use crate::schema::{Check, MigrationStatus};
use crate::slot::{Created, Dropped, SlotInfo};

use super::CliError;
use super::options::RunOptions;

/// Writes results to stdout in the chosen format.
pub(super) struct Printer {
    format: OutputFormat,
}

impl Printer {
    pub(super) fn new(format: OutputFormat) -> Self {
        Printer { format }
    }

    fn emit(&self, text: &str) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}").map_err(|e| CliError::Output(e.to_string()))
    }

    fn json<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), CliError> {
        let text =
            serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.to_string()))?;
        self.emit(&text)
    }

    /// A one-line confirmation (`{"ok": true, "name": ...}` in JSON).
    pub(super) fn message(&self, text: &str, name: &str) -> Result<(), CliError> {
        match self.format {
            OutputFormat::Table => self.emit(text),
            OutputFormat::Json => self.json(&json!({"ok": true, "name": name, "message": text})),
        }
    }

    pub(super) fn slots(&self, slots: &[SlotInfo]) -> Result<(), CliError> {
        if self.format == OutputFormat::Json {
            return self.json(slots);
        }
        let mut table = new_table(&[
            "slot",
            "plugin",
            "database",
            "active",
            "pid",
            "restart_lsn",
            "confirmed_flush_lsn",
            "lag",
            "wal_status",
            "safe_wal_size",
        ]);
        for s in slots {
            table.add_row(vec![
                s.slot_name.clone(),
                opt(&s.plugin),
                opt(&s.database),
                if s.temporary {
                    format!("{} (temporary)", s.active)
                } else {
                    s.active.to_string()
                },
                opt(&s.active_pid),
                opt(&s.restart_lsn),
                opt(&s.confirmed_flush_lsn),
                s.lag_bytes.map_or("-".into(), human_bytes),
                opt(&s.wal_status),
                s.safe_wal_size.map_or("unlimited".into(), human_bytes),
            ]);
        }
        if slots.is_empty() {
            return self.emit("no replication slots");
        }
        self.emit(&table.to_string())
    }

    pub(super) fn created_slot(&self, c: &Created) -> Result<(), CliError> {
        match self.format {
            OutputFormat::Json => self.json(c),
            OutputFormat::Table => {
                let verb = if c.created { "created" } else { "exists:" };
                let temp = if c.slot.temporary {
                    " (temporary: dropped when this command exits)"
                } else {
                    ""
                };
                self.emit(&format!(
                    "{verb} slot {} at {}{temp}",
                    c.slot.slot_name,
                    c.slot
                        .confirmed_flush_lsn
                        .map_or_else(|| "-".to_owned(), |l| l.to_string())
                ))
            }
        }
    }

    pub(super) fn dropped_slot(&self, d: &Dropped) -> Result<(), CliError> {
        match self.format {
            OutputFormat::Json => self.json(d),
            OutputFormat::Table => match d.terminated_pid {
                Some(pid) => self.emit(&format!(
                    "dropped slot {} (terminated walsender pid {pid})",
                    d.slot_name
                )),
                None => self.emit(&format!("dropped slot {}", d.slot_name)),
            },
        }
    }

    pub(super) fn publication(&self, p: &PublicationInfo) -> Result<(), CliError> {
        if self.format == OutputFormat::Json {
            return self.json(p);
        }
        let scope = if p.all_tables {
            "all tables"
        } else {
            "listed tables"
        };
        let partitions = if p.via_root {
            "partitions through their partitioned table"
        } else {
            "partitions as tables of their own"
        };
        let mut text = format!(
            "publication {} ({scope}; publishes {}; {partitions})\n",
            p.name,
            p.operations.join(", ")
        );
        if let Some(companion) = &p.insert_only_publication {
            text.push_str(&format!(
                "insert-only tables: publication {companion} (publishes insert, truncate)\n"
            ));
        }
        let mut table = new_table(&[
            "table",
            "published",
            "row filter",
            "columns",
            "replica identity",
        ]);
        let mut warnings = Vec::new();
        for t in &p.tables {
            let identity = match &t.identity_index {
                Some(index) => format!("{} ({index})", t.replica_identity),
                None => t.replica_identity.clone(),
            };
            let name = format!("{}.{}", t.schema, t.table);
            if let Some(w) = &t.warning {
                warnings.push(format!("warning: {name}: {w}"));
            }
            let published = match (t.insert_only, t.partitioned) {
                (true, _) => "inserts only",
                (false, true) => "all changes (partitioned)",
                (false, false) => "all changes",
            };
            table.add_row(vec![
                name,
                published.into(),
                t.row_filter.clone().unwrap_or_else(|| "-".into()),
                t.columns.as_ref().map_or("all".into(), |c| c.join(", ")),
                identity,
            ]);
        }
        text.push_str(&table.to_string());
        for w in warnings {
            text.push('\n');
            text.push_str(&w);
        }
        self.emit(&text)
    }

    pub(super) fn init_report(
        &self,
        migrations: &[MigrationStatus],
        table: &TableReport,
        checks: &[Check],
    ) -> Result<(), CliError> {
        if self.format == OutputFormat::Json {
            return self.json(
                &json!({"migrations": migrations, "session_events": table, "checks": checks}),
            );
        }
        let mut lines = Vec::new();
        for m in migrations {
            let state = if m.applied_now {
                "applied"
            } else {
                "already applied"
            };
            lines.push(format!("schema  {:<28} {state}", m.name));
        }
        lines.push(format!("table   {:<28} {}", "session_events", table.text()));
        for c in checks {
            let state = if c.ok { "ok  " } else { "FAIL" };
            lines.push(format!("check   {:<28} {state} {}", c.name, c.value));
            if let Some(fix) = &c.fix {
                lines.push(format!("        fix: {fix}"));
            }
        }
        self.emit(&lines.join("\n"))
    }

    /// The summary line of `ds-sync prune`.
    pub(super) fn prune(
        &self,
        summary: &crate::retention::prune::PruneSummary,
    ) -> Result<(), CliError> {
        if self.format == OutputFormat::Json {
            return self.json(summary);
        }
        self.emit(&summary.line())
    }

    /// `config show`: the shared settings, then `run`'s options by section
    /// (`capture.batch_max_messages`), each with its source.
    pub(super) fn config(
        &self,
        s: &Settings,
        postgres: Option<&str>,
        run: &RunOptions,
    ) -> Result<(), CliError> {
        let pg = json!({"value": postgres, "source": s.postgres_url_source()});
        let mut v = to_json(s)?;
        v["postgres_url"] = pg;
        if s.listen.is_none() {
            v["listen"] = json!({"value": null, "source": Source::Unset});
        }
        v["capture"] = to_json(&run.capture)?;
        v["ingest"] = to_json(&run.ingest)?;
        if self.format == OutputFormat::Json {
            return self.json(&v);
        }
        let mut table = new_table(&["setting", "value", "source"]);
        table.add_row(vec![
            "postgres_url".to_string(),
            postgres.unwrap_or("(not set)").to_string(),
            source_name(s.postgres_url_source()),
        ]);
        add_sourced(&mut table, "ds_server_url", &s.ds_server_url);
        add_optional(&mut table, "ds_token", s.ds_token.as_ref());
        add_optional(&mut table, "ds_token_file", s.ds_token_file.as_ref());
        add_sourced(&mut table, "ds_headers", &s.ds_headers);
        add_optional(&mut table, "ds_ca_file", s.ds_ca_file.as_ref());
        add_optional(&mut table, "ds_client_cert", s.ds_client_cert.as_ref());
        add_optional(&mut table, "ds_client_key", s.ds_client_key.as_ref());
        add_sourced(&mut table, "slot", &s.slot);
        add_sourced(&mut table, "publication", &s.publication);
        add_sourced(&mut table, "log_format", &s.log_format);
        add_sourced(&mut table, "output", &s.output);
        match &s.listen {
            Some(listen) => add_sourced(&mut table, "listen", listen),
            None => {
                table.add_row(vec![
                    "listen",
                    "(not set: no metrics or health endpoints)",
                    "unset",
                ]);
            }
        }
        for section in ["capture", "ingest"] {
            add_section(&mut table, section, &v[section]);
        }
        self.emit(&table.to_string())
    }
}

fn add_sourced<T: Serialize>(table: &mut Table, name: &str, v: &Sourced<T>) {
    // Serialize gives enums their lower-case names and strings their plain text.
    let value = match serde_json::to_value(&v.value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    };
    table.add_row(vec![name.to_string(), value, source_name(v.source)]);
}

fn to_json<T: Serialize>(value: &T) -> Result<serde_json::Value, CliError> {
    serde_json::to_value(value).map_err(|e| CliError::Output(e.to_string()))
}

/// One row per option of a section: `section.key`, its value, its source.
fn add_section(table: &mut Table, section: &str, options: &serde_json::Value) {
    let Some(options) = options.as_object() else {
        return;
    };
    for (key, option) in options {
        let value = match &option["value"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "(not set)".to_owned(),
            serde_json::Value::Array(items) if items.is_empty() => "(none)".to_owned(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        };
        let source = option["source"].as_str().unwrap_or("?").to_owned();
        table.add_row(vec![format!("{section}.{key}"), value, source]);
    }
}

fn add_optional<T: Serialize>(table: &mut Table, name: &str, v: Option<&Sourced<T>>) {
    match v {
        Some(v) => add_sourced(table, name, v),
        None => {
            table.add_row(vec![
                name.to_string(),
                "(not set)".into(),
                source_name(Source::Unset),
            ]);
        }
    }
}

fn source_name(source: Source) -> String {
    match serde_json::to_value(source) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}

fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(ASCII_NO_BORDERS)
        .set_header(header.to_vec());
    table
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".into(), |v| v.to_string())
}

/// `1536` → `1.5 KiB (1536)`: readable, with the exact figure kept.
pub(super) fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {} ({n})", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_keeps_the_exact_figure() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB (1536)");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB (3145728)");
    }
}

/// What `init` left `session_events` as.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableReport {
    /// `plain` or `partitioned`.
    pub form: &'static str,
    /// The partition interval, when ds-sync partitions it.
    pub interval: Option<&'static str>,
    /// True when this run made it partitioned.
    pub partitioned_now: bool,
}

impl TableReport {
    fn text(&self) -> String {
        match (self.interval, self.partitioned_now) {
            (Some(i), true) => format!("partitioned by {i} of received_at (created now)"),
            (Some(i), false) => format!("partitioned by {i} of received_at"),
            (None, _) => self.form.to_owned(),
        }
    }
}
