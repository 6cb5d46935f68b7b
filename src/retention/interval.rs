//! Partition intervals and partition names, without I/O.
//!
//! A partition of `session_events` covers one day, ISO week (from Monday) or calendar month,
//! in UTC, and is named after its first day: `session_events_p20261130`. The name alone gives
//! its range, so `prune` and `run` never parse PostgreSQL's bound expressions (whose text
//! depends on the session's time zone).

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};

/// The partition that takes rows no ranged partition covers.
pub const DEFAULT_PARTITION: &str = "session_events_default";
const PREFIX: &str = "session_events_p";

/// How much of `received_at` one partition covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionInterval {
    Day,
    Week,
    Month,
}

impl PartitionInterval {
    /// The name stored in `ds_sync.partitioning` and used on the command line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionInterval::Day => "day",
            PartitionInterval::Week => "week",
            PartitionInterval::Month => "month",
        }
    }

    /// The inverse of [`as_str`](Self::as_str).
    #[must_use]
    pub fn parse(text: &str) -> Option<PartitionInterval> {
        match text {
            "day" => Some(PartitionInterval::Day),
            "week" => Some(PartitionInterval::Week),
            "month" => Some(PartitionInterval::Month),
            _ => None,
        }
    }

    /// The first day of the partition that holds `at`.
    #[must_use]
    pub fn start_of(self, at: DateTime<Utc>) -> NaiveDate {
        let day = at.date_naive();
        match self {
            PartitionInterval::Day => day,
            PartitionInterval::Week => {
                day - chrono::Days::new(u64::from(day.weekday().num_days_from_monday()))
            }
            PartitionInterval::Month => day.with_day(1).unwrap_or(day),
        }
    }

    /// The first day after the partition starting at `start`.
    #[must_use]
    pub fn end_of(self, start: NaiveDate) -> NaiveDate {
        match self {
            PartitionInterval::Day => start + chrono::Days::new(1),
            PartitionInterval::Week => start + chrono::Days::new(7),
            PartitionInterval::Month => start
                .checked_add_months(Months::new(1))
                .unwrap_or(NaiveDate::MAX),
        }
    }
}

/// One ranged partition: `[start, end)` at midnight UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub start: NaiveDate,
    pub end: NaiveDate,
}

impl Range {
    /// The partition's table name (in schema `public`).
    #[must_use]
    pub fn name(&self) -> String {
        format!("{PREFIX}{}", self.start.format("%Y%m%d"))
    }

    /// The bounds as SQL literals for `FOR VALUES FROM (..) TO (..)`.
    #[must_use]
    pub fn bounds_sql(&self) -> String {
        format!(
            "FOR VALUES FROM ('{} 00:00:00+00') TO ('{} 00:00:00+00')",
            self.start.format("%Y-%m-%d"),
            self.end.format("%Y-%m-%d")
        )
    }

    /// The end as seconds since 1970 (UTC).
    #[must_use]
    pub fn end_epoch(&self) -> i64 {
        self.end
            .and_hms_opt(0, 0, 0)
            .map_or(i64::MAX, |t| t.and_utc().timestamp())
    }
}

/// The partitions that should exist at `now`: the current one and `ahead` after it.
#[must_use]
pub fn wanted(interval: PartitionInterval, now: DateTime<Utc>, ahead: u32) -> Vec<Range> {
    let mut start = interval.start_of(now);
    let mut out = Vec::with_capacity(ahead as usize + 1);
    for _ in 0..=ahead {
        let end = interval.end_of(start);
        out.push(Range { start, end });
        start = end;
    }
    out
}

/// The range of a partition ds-sync named, or `None` for any other table.
#[must_use]
pub fn parse_name(interval: PartitionInterval, name: &str) -> Option<Range> {
    let digits = name.strip_prefix(PREFIX)?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let start = NaiveDate::parse_from_str(digits, "%Y%m%d").ok()?;
    Some(Range {
        start,
        end: interval.end_of(start),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn each_interval_starts_where_date_trunc_would() {
        let t = at("2026-12-02T23:59:59Z"); // a Wednesday
        assert_eq!(PartitionInterval::Day.start_of(t), date("2026-12-02"));
        assert_eq!(PartitionInterval::Week.start_of(t), date("2026-11-30"));
        assert_eq!(PartitionInterval::Month.start_of(t), date("2026-12-01"));
        assert_eq!(
            PartitionInterval::Month.end_of(date("2026-12-01")),
            date("2027-01-01")
        );
        assert_eq!(
            PartitionInterval::Month.end_of(date("2027-01-01")),
            date("2027-02-01")
        );
    }

    #[test]
    fn wanted_partitions_are_contiguous_and_named_by_their_first_day() {
        let ranges = wanted(PartitionInterval::Week, at("2026-12-02T10:00:00Z"), 2);
        let names: Vec<String> = ranges.iter().map(Range::name).collect();
        assert_eq!(
            names,
            [
                "session_events_p20261130",
                "session_events_p20261207",
                "session_events_p20261214"
            ]
        );
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert_eq!(
            ranges[0].bounds_sql(),
            "FOR VALUES FROM ('2026-11-30 00:00:00+00') TO ('2026-12-07 00:00:00+00')"
        );
    }

    #[test]
    fn only_names_ds_sync_gives_are_parsed() {
        let r = parse_name(PartitionInterval::Day, "session_events_p20261202").unwrap();
        assert_eq!((r.start, r.end), (date("2026-12-02"), date("2026-12-03")));
        assert_eq!(r.end_epoch(), at("2026-12-03T00:00:00Z").timestamp());
        for other in [
            "session_events_default",
            "session_events_p2026120",
            "session_events_p20261302",
            "session_events_pabcdefgh",
            "other_p20261202",
        ] {
            assert_eq!(parse_name(PartitionInterval::Day, other), None, "{other}");
        }
    }
}
