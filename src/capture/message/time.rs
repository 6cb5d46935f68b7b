//! Commit times as the message headers show them, and the PostgreSQL epoch.
//!
//! PostgreSQL sends commit times as microseconds since 2000-01-01 00:00:00 UTC. Converting
//! them needs only the proleptic Gregorian calendar, so it is done here with integer
//! arithmetic rather than with a date crate: days are split into 400-year eras (146,097 days
//! each, the calendar's exact period), and within an era into years and months counted from
//! March, so that the leap day falls at the end of the counting year.

/// Seconds from 1970-01-01 (the Unix epoch) to 2000-01-01 (the PostgreSQL epoch, from which
/// PostgreSQL counts commit times and `now()` in its wire formats). The one definition.
pub const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS_FROM_UNIX: i64 = PG_EPOCH_UNIX_SECS / SECONDS_PER_DAY;
/// Days from 0000-03-01 to 1970-01-01 in the proleptic Gregorian calendar.
const UNIX_EPOCH_DAYS_FROM_MARCH_0000: i64 = 719_468;
const DAYS_PER_ERA: i64 = 146_097;
const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// A PostgreSQL commit time as RFC 3339 UTC with microseconds: `2024-01-02T03:04:05.123456Z`.
///
/// Years outside 0000..=9999 cannot be written in RFC 3339; they get ISO 8601's expanded
/// form with a sign (`+12345-...`), which no real commit time needs.
pub fn format_commit_time(micros_since_2000: i64) -> String {
    let seconds = micros_since_2000.div_euclid(MICROS_PER_SECOND);
    let micros = micros_since_2000.rem_euclid(MICROS_PER_SECOND);
    let days = seconds.div_euclid(SECONDS_PER_DAY) + PG_EPOCH_DAYS_FROM_UNIX;
    let second_of_day = seconds.rem_euclid(SECONDS_PER_DAY);
    let (year, month, day) = civil_from_unix_days(days);
    let year = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else {
        format!("{year:+05}")
    };
    format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
    )
}

/// Now, in microseconds since the PostgreSQL epoch (what a commit time counts); 0 for a
/// clock set before 1970.
pub fn pg_now_micros() -> i64 {
    pg_micros_at(std::time::SystemTime::now())
}

/// `at` in microseconds since 2000-01-01 (0 for a time before 1970). Pure.
pub fn pg_micros_at(at: std::time::SystemTime) -> i64 {
    let unix = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    unix - PG_EPOCH_UNIX_SECS * MICROS_PER_SECOND
}

/// (year, month 1..=12, day 1..=31) of a day counted from 1970-01-01.
fn civil_from_unix_days(days: i64) -> (i64, u32, u32) {
    let days = days + UNIX_EPOCH_DAYS_FROM_MARCH_0000;
    let era = days.div_euclid(DAYS_PER_ERA);
    let day_of_era = days.rem_euclid(DAYS_PER_ERA); // 0..=146_096
    // Every 4th year is long, except every 100th, except every 400th: subtract the leap
    // days before `day_of_era` so that division by 365 gives the year of the era.
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: 31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 31, 28/29; their lengths
    // follow a 5-month pattern of 153 days, hence (5 * day + 2) / 153.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second, independent calendar: walks day by day with the textbook leap rule.
    fn walk(mut date: (i64, u32, u32), days: i64) -> (i64, u32, u32) {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let length = |y: i64, m: u32| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        for _ in 0..days.abs() {
            date = if days > 0 {
                match date {
                    (y, 12, 31) => (y + 1, 1, 1),
                    (y, m, d) if d == length(y, m) => (y, m + 1, 1),
                    (y, m, d) => (y, m, d + 1),
                }
            } else {
                match date {
                    (y, 1, 1) => (y - 1, 12, 31),
                    (y, m, 1) => (y, m - 1, length(y, m - 1)),
                    (y, m, d) => (y, m, d - 1),
                }
            };
        }
        date
    }

    #[test]
    fn civil_dates_agree_with_a_day_by_day_walk_for_450_years_each_way() {
        for direction in [1, -1] {
            let mut expected = (2000, 1, 1);
            for step in 0..=164_500_i64 {
                let days = PG_EPOCH_DAYS_FROM_UNIX + direction * step;
                assert_eq!(civil_from_unix_days(days), expected, "day {days} from 1970");
                expected = walk(expected, direction);
            }
        }
    }

    #[test]
    fn commit_times_are_rfc3339_utc_with_microseconds() {
        let day = SECONDS_PER_DAY * MICROS_PER_SECOND;
        let cases = [
            (0, "2000-01-01T00:00:00.000000Z"),
            (757_479_845_000_000, "2024-01-02T03:04:05.000000Z"),
            (757_479_845_123_456, "2024-01-02T03:04:05.123456Z"),
            (-1, "1999-12-31T23:59:59.999999Z"),
            (
                -946_684_800 * MICROS_PER_SECOND,
                "1970-01-01T00:00:00.000000Z",
            ),
            (
                -946_684_800 * MICROS_PER_SECOND - 1,
                "1969-12-31T23:59:59.999999Z",
            ),
            (59 * day, "2000-02-29T00:00:00.000000Z"),
            (60 * day - 1, "2000-02-29T23:59:59.999999Z"),
            (366 * day - 1, "2000-12-31T23:59:59.999999Z"),
            (366 * day, "2001-01-01T00:00:00.000000Z"),
            (
                4_107_456_000 * MICROS_PER_SECOND,
                "2130-02-28T00:00:00.000000Z",
            ),
            (
                3_160_857_600 * MICROS_PER_SECOND,
                "2100-03-01T00:00:00.000000Z",
            ),
            (
                3_160_857_599 * MICROS_PER_SECOND,
                "2100-02-28T23:59:59.000000Z",
            ),
            (
                -3_150_576_000 * MICROS_PER_SECOND,
                "1900-03-01T00:00:00.000000Z",
            ),
            (
                -3_150_576_001 * MICROS_PER_SECOND,
                "1900-02-28T23:59:59.000000Z",
            ),
            (
                -63_082_281_600 * MICROS_PER_SECOND,
                "0001-01-01T00:00:00.000000Z",
            ),
        ];
        for (micros, expected) in cases {
            assert_eq!(
                format_commit_time(micros),
                expected,
                "{micros} µs since 2000"
            );
        }
    }

    #[test]
    fn extreme_times_do_not_panic_and_keep_a_sign() {
        assert!(format_commit_time(i64::MAX).starts_with("+29"));
        assert!(format_commit_time(i64::MIN).starts_with("-29"));
        let year_0000 = -63_113_904_000 * MICROS_PER_SECOND;
        assert_eq!(format_commit_time(year_0000), "0000-01-01T00:00:00.000000Z");
        assert_eq!(
            format_commit_time(year_0000 - 1),
            "-0001-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn the_pg_epoch_is_2000_01_01() {
        assert_eq!(PG_EPOCH_DAYS_FROM_UNIX, 10_957);
        assert_eq!(format_commit_time(0), "2000-01-01T00:00:00.000000Z");
        let now = pg_now_micros();
        assert!(format_commit_time(now).starts_with("20"), "{now}");
    }
}
