//! Durations the operator types (`30m`, `12h`, `7d`) and the timestamps the moderation
//! commands print (RFC 3339 in UTC, whole seconds: `2026-12-02T03:45:00Z`).

use std::time::Duration;

/// `90s`, `30m`, `12h`, `7d`: a whole number and one unit (s, m, h, d); more than zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "{text:?} is not a duration: use a whole number and a unit s, m, h or d \
             (e.g. 90s, 30m, 12h, 7d)"
        )
    };
    let unit_at = t.len().checked_sub(1).ok_or_else(bad)?;
    let (digits, unit) = t.split_at(unit_at);
    let per_unit: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is too long a duration"))?;
    if n == 0 {
        return Err(format!("{text:?}: the duration must be more than zero"));
    }
    // Up to 100 years, so unix times computed from it never overflow.
    let secs = n
        .checked_mul(per_unit)
        .filter(|s| *s <= 100 * 366 * 86_400)
        .ok_or_else(|| format!("{text:?} is too long a duration (at most 100 years)"))?;
    Ok(Duration::from_secs(secs))
}

/// Unix seconds as RFC 3339 in UTC, e.g. `2026-12-02T03:45:00Z`.
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let rem = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        for bad in [
            "",
            "d",
            "7",
            "7w",
            "-1d",
            "1.5h",
            "7 d",
            "1d2h",
            "0m",
            "99999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
