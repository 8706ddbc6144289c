//! UTC calendar arithmetic without a date library: Unix days ↔ proleptic Gregorian dates,
//! and ISO-8601 date-times ↔ Unix seconds. MSK IAM needs it (SigV4 dates, the expiry of
//! instance-role credentials); `inspect` uses [`civil_from_days`] to print record timestamps.
//!
//! Owns: the one copy of these conversions. May depend on: std only (a leaf).
//!
//! Invariants: [`civil_from_days`], [`format_iso8601`] and [`parse_iso8601`] never panic nor
//! overflow, whatever the input; a string that is not a date-time of the accepted form is
//! `None`, never a guess.

/// Proleptic Gregorian (year, month 1..=12, day 1..=31) of a day count since 1970-01-01, using
/// 400-year eras of 146097 days (March-based years so leap days come last). Total for any
/// `i64` (arithmetic saturates far outside any real date).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days.saturating_add(719_468); // days from 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = era
        .saturating_mul(400)
        .saturating_add(yoe)
        .saturating_add(i64::from(month <= 2));
    // Both are in range by construction (see the comments above).
    (year, month as u32, day as u32)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (inverse of [`civil_from_days`]).
/// Callers pass validated months and days (1..=12, 1..=31) and years of four digits.
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Parses an ISO-8601 / RFC 3339 date-time such as `2024-03-01T12:34:56Z` (fractional
/// seconds and `±HH:MM` offsets accepted) into Unix seconds.
pub fn parse_iso8601(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    let num = |start: usize, len: usize| -> Option<i64> {
        let digits = b.get(start..start.checked_add(len)?)?;
        digits.iter().try_fold(0i64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // 60 is a leap second; like most parsers we fold it onto the next second.
    if second > 60 {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset_secs = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let oh = num(i + 1, 2)?;
            let (om, end) = if b.get(i + 3) == Some(&b':') {
                (num(i + 4, 2)?, i + 6)
            } else {
                (num(i + 3, 2)?, i + 5)
            };
            if end != b.len() || oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs)
}

/// ISO-8601 UTC rendering of a Unix time (`2024-03-01T12:34:56Z`), for log messages.
pub fn format_iso8601(epoch_secs: i64) -> String {
    let (y, m, d) = civil_from_days(epoch_secs.div_euclid(86_400));
    let s = epoch_secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_round_trip_and_extremes() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
        for days in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(
                days_from_civil(y, i64::from(m), i64::from(d)),
                days,
                "{y}-{m}-{d}"
            );
        }
        // extremes do not panic
        let _ = civil_from_days(i64::MAX);
        let _ = civil_from_days(i64::MIN);
        let _ = format_iso8601(i64::MAX);
        let _ = format_iso8601(i64::MIN);
    }

    #[test]
    fn iso8601_parsing() {
        assert_eq!(parse_iso8601("2024-03-01T12:34:56Z"), Some(1_709_296_496));
        assert_eq!(
            parse_iso8601("2024-03-01T12:34:56.789Z"),
            Some(1_709_296_496)
        );
        assert_eq!(
            parse_iso8601("2024-03-01T13:34:56+01:00"),
            Some(1_709_296_496)
        );
        assert_eq!(
            parse_iso8601("2024-03-01T11:04:56-0130"),
            Some(1_709_296_496)
        );
        assert_eq!(
            parse_iso8601(" 2024-02-29T23:59:59Z\n"),
            Some(1_709_251_199)
        );
        for bad in [
            "",
            "2024-03-01",
            "2024-03-01T12:34:56",
            "2024-13-01T12:34:56Z",
            "2024-03-01T12:34:5xZ",
            "2024-03-01T12:34:56.Z",
            "2024-03-01T12:34:56Zjunk",
            "2024-03-01T12:34:56+01",
            "2024/03/01T12:34:56Z",
            "２０２４-03-01T12:34:56Z",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad:?}");
        }
        assert_eq!(format_iso8601(1_709_296_496), "2024-03-01T12:34:56Z");
    }
}
