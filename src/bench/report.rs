//! A scenario's result: printed as a table, written as `result.json`, `report.md` and SVG
//! charts (throughput over time, latency CDF) in the results directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use comfy_table::{Table, presets::ASCII_BORDERS_ONLY_CONDENSED};
use plotters::prelude::*;
use serde::Serialize;

use super::BenchError;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

/// A figure held against a target: a ratio to a ceiling or baseline from the same run, or
/// an absolute bound (peak RSS, p99).
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    /// Higher is better unless `lower_is_better`.
    pub value: f64,
    pub unit: String,
    pub target: Option<f64>,
    pub lower_is_better: bool,
}

impl Check {
    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| {
            if self.lower_is_better {
                self.value <= t
            } else {
                self.value >= t
            }
        })
    }
}

/// A value sampled over time (x: seconds since the phase began).
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub name: String,
    pub unit: String,
    pub points: Vec<(f64, f64)>,
}

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub name: String,
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    /// (latency ms, fraction at or below it), for the CDF chart.
    pub cdf: Vec<(f64, f64)>,
}

impl Latency {
    /// Summarises a histogram of microseconds.
    pub fn from_histogram(name: &str, h: &hdrhistogram::Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        let cdf = (0..=200)
            .map(|i| {
                let q = f64::from(i) / 200.0;
                (ms(h.value_at_quantile(q)), q)
            })
            .collect();
        Latency {
            name: name.to_owned(),
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            cdf,
        }
    }
}

/// The machine a run was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gb: f64,
    pub kernel: String,
    pub postgres: String,
    pub build: String,
}

/// Everything a scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub command: String,
    pub started_at: String,
    pub duration_secs: f64,
    pub machine: Machine,
    pub figures: Vec<Figure>,
    pub checks: Vec<Check>,
    pub series: Vec<Series>,
    pub latencies: Vec<Latency>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn figure(&mut self, name: &str, value: f64, unit: &str) {
        self.figures.push(Figure {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
        });
    }

    pub fn check(
        &mut self,
        name: &str,
        value: f64,
        unit: &str,
        target: Option<f64>,
        lower_is_better: bool,
    ) {
        self.checks.push(Check {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            target,
            lower_is_better,
        });
    }

    /// True when no ratio misses its target.
    pub fn targets_met(&self) -> bool {
        self.checks.iter().all(|r| r.met() != Some(false))
    }

    /// The terminal table.
    pub fn table(&self) -> String {
        let mut t = Table::new();
        t.load_style(ASCII_BORDERS_ONLY_CONDENSED);
        t.set_header(["figure", "value", "unit / target"]);
        for f in &self.figures {
            t.add_row([f.name.clone(), fmt_num(f.value), f.unit.clone()]);
        }
        for l in &self.latencies {
            for (q, v) in [
                ("p50", l.p50),
                ("p95", l.p95),
                ("p99", l.p99),
                ("max", l.max),
            ] {
                t.add_row([format!("{} {q}", l.name), fmt_num(v), "ms".into()]);
            }
        }
        for r in &self.checks {
            t.add_row([r.name.clone(), format!("{:.3}", r.value), target_text(r)]);
        }
        t.to_string()
    }

    /// Writes `result.json`, `report.md` and the charts into `dir`; returns the files.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
        std::fs::create_dir_all(dir).map_err(|e| BenchError::io(dir, &e))?;
        let mut files = Vec::new();
        let json = dir.join("result.json");
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(&json, text).map_err(|e| BenchError::io(&json, &e))?;
        files.push(json);
        let mut charts = Vec::new();
        if self.series.iter().any(|s| s.points.len() > 1) {
            let path = dir.join("throughput.svg");
            series_chart(&path, &self.series)?;
            charts.push("throughput.svg");
            files.push(path);
        }
        if !self.latencies.is_empty() {
            let path = dir.join("latency.svg");
            cdf_chart(&path, &self.latencies)?;
            charts.push("latency.svg");
            files.push(path);
        }
        let md = dir.join("report.md");
        std::fs::write(&md, self.markdown(&charts)).map_err(|e| BenchError::io(&md, &e))?;
        files.push(md);
        Ok(files)
    }

    /// The Markdown report.
    pub fn markdown(&self, charts: &[&str]) -> String {
        let m = &self.machine;
        let mut s = format!(
            "# ds-sync bench {}\n\n* command: `{}`\n* started: {}, {:.1} s\n\
             * machine: {} ({} cores), {:.1} GB RAM, Linux {}\n* {}\n* ds-sync build: {}\n\n",
            self.scenario,
            self.command,
            self.started_at,
            self.duration_secs,
            m.cpu,
            m.cores,
            m.memory_gb,
            m.kernel,
            m.postgres,
            m.build
        );
        s.push_str("| figure | value | unit |\n|---|---:|---|\n");
        for f in &self.figures {
            let _ = writeln!(s, "| {} | {} | {} |", f.name, fmt_num(f.value), f.unit);
        }
        for l in &self.latencies {
            let _ = writeln!(
                s,
                "| {} p50 / p95 / p99 / max | {:.2} / {:.2} / {:.2} / {:.2} | ms ({} samples) |",
                l.name, l.p50, l.p95, l.p99, l.max, l.count
            );
        }
        if !self.checks.is_empty() {
            s.push_str("\n| check | value | target |\n|---|---:|---|\n");
            for r in &self.checks {
                let _ = writeln!(s, "| {} | {:.3} | {} |", r.name, r.value, target_text(r));
            }
        }
        for n in &self.notes {
            let _ = write!(s, "\n{n}\n");
        }
        for c in charts {
            let _ = write!(s, "\n![{c}]({c})\n");
        }
        s
    }
}

fn target_text(r: &Check) -> String {
    match (r.target, r.met()) {
        (Some(t), Some(met)) => {
            let op = if r.lower_is_better { "<=" } else { ">=" };
            let unit = &r.unit;
            format!("{unit} {op} {t} ({})", if met { "met" } else { "MISSED" })
        }
        _ => r.unit.clone(),
    }
}

/// Thousands separated, two decimals below 100.
pub fn fmt_num(v: f64) -> String {
    if v.abs() < 100.0 {
        return format!("{v:.2}");
    }
    let n = v.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn chart_error(path: &Path, e: impl std::fmt::Display) -> BenchError {
    BenchError::Report(format!("drawing {}: {e}", path.display()))
}

/// One line per series, all on one set of axes (they share a unit).
fn series_chart(path: &Path, series: &[Series]) -> Result<(), BenchError> {
    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_error(path, e))?;
    let x_max = max_of(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let y_max = max_of(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let unit = series.first().map(|s| s.unit.clone()).unwrap_or_default();
    let mut chart = ChartBuilder::on(&root)
        .caption("throughput over time", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max * 1.02, 0f64..y_max * 1.1)
        .map_err(|e| chart_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(unit)
        .draw()
        .map_err(|e| chart_error(path, e))?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| chart_error(path, e))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| chart_error(path, e))?;
    root.present().map_err(|e| chart_error(path, e))
}

/// Latency CDFs: x latency in ms, y fraction of samples at or below it.
fn cdf_chart(path: &Path, latencies: &[Latency]) -> Result<(), BenchError> {
    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_error(path, e))?;
    let x_max = max_of(latencies.iter().flat_map(|l| l.cdf.iter().map(|p| p.0)));
    let mut chart = ChartBuilder::on(&root)
        .caption("latency CDF", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..x_max * 1.05, 0f64..1.0)
        .map_err(|e| chart_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("milliseconds")
        .y_desc("fraction of samples")
        .draw()
        .map_err(|e| chart_error(path, e))?;
    for (i, l) in latencies.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                l.cdf.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| chart_error(path, e))?
            .label(l.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| chart_error(path, e))?;
    root.present().map_err(|e| chart_error(path, e))
}

fn max_of(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0f64, f64::max).max(1e-3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            scenario: "capture-drain".into(),
            command: "ds-sync bench capture-drain".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_secs: 1.0,
            machine: Machine {
                cpu: "cpu".into(),
                cores: 2,
                memory_gb: 24.0,
                kernel: "6".into(),
                postgres: "PostgreSQL 15".into(),
                build: "release".into(),
            },
            figures: vec![],
            checks: vec![],
            series: vec![],
            latencies: vec![],
            notes: vec![],
        }
    }

    #[test]
    fn ratios_know_their_direction() {
        let mut r = report();
        r.check("throughput", 0.7, "x", Some(0.8), false);
        assert!(!r.targets_met());
        let mut r = report();
        r.check("rss", 80.0, "MB", Some(100.0), true);
        r.check("speed", 0.9, "x", Some(0.8), false);
        r.check("untargeted", 0.1, "x", None, false);
        assert!(r.targets_met());
        assert!(!r.table().contains("MISSED"));
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(fmt_num(1_234_567.4), "1,234,567");
        assert_eq!(fmt_num(-1000.0), "-1,000");
        assert_eq!(fmt_num(12.345), "12.35");
    }

    #[test]
    fn writes_json_markdown_and_charts() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = report();
        r.figure("rows", 1000.0, "rows");
        r.series.push(Series {
            name: "ds-sync".into(),
            unit: "rows/s".into(),
            points: vec![(0.0, 0.0), (1.0, 500.0), (2.0, 900.0)],
        });
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for us in [1000u64, 2000, 3000, 40_000] {
            h.record(us).unwrap();
        }
        r.latencies
            .push(Latency::from_histogram("commit to SSE", &h));
        let files = r.write(dir.path()).unwrap();
        assert_eq!(files.len(), 4);
        let svg = std::fs::read_to_string(dir.path().join("throughput.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("polyline"));
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(md.contains("| rows | 1,000 | rows |"), "{md}");
        assert!(md.contains("![latency.svg](latency.svg)"));
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("result.json")).unwrap())
                .unwrap();
        assert_eq!(json["latencies"][0]["count"], 4);
        assert!((json["latencies"][0]["max"].as_f64().unwrap() - 40.0).abs() < 0.1);
    }
}
