//! Report schedules in AWS EventBridge syntax: `rate(<n> minute|minutes|hour|hours|day|days)` and
//! `cron(<minutes> <hours> <day-of-month> <month> <day-of-week> <year>)`, always in UTC.
//!
//! - `rate(n unit)`: slots are the multiples of the period since the Unix epoch (`rate(5 minutes)` → :00, :05, ...),
//!   so every process computes the same slots. The singular unit goes with 1 and the plural with more, as in
//!   EventBridge (`rate(1 minute)`, `rate(5 minutes)`); the other spelling is refused with the fix.
//! - `cron(...)`: six fields as EventBridge has them: day-of-week is 1-7 or SUN-SAT with 1 = Sunday, months 1-12 or
//!   JAN-DEC, `*`, `,`, `-`, `/` everywhere, and exactly one of day-of-month and day-of-week is `?`. Parsed with the
//!   `cron` crate (which takes the same fields after a seconds field); `L`, `W` and `#` are refused with a clear
//!   message.
//!
//! A slot is a UTC minute; a scheduled run is keyed by it ([`slot_run_id`]), so a slot that completed never runs
//! again, also after a restart.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Rate(Duration),
    Cron(Box<cron::Schedule>),
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl Schedule {
    /// Parse `rate(...)` or `cron(...)`; the error says what is wrong and what is expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let inner = |prefix: &str| {
            t.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(')'))
                .map(str::trim)
        };
        let kind = if let Some(body) = inner("rate(") {
            Kind::Rate(parse_rate(body)?)
        } else if let Some(body) = inner("cron(") {
            Kind::Cron(Box::new(parse_cron(body)?))
        } else {
            return Err(format!(
                "{text:?} is not a schedule: expected rate(<n> minutes|hours|days) or cron(<minutes> <hours> \
                 <day-of-month> <month> <day-of-week> <year>)"
            ));
        };
        Ok(Self {
            text: t.to_string(),
            kind,
        })
    }

    /// The schedule as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The latest slot at or before `t`.
    pub fn slot_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Rate(period) => {
                let period_ms = period.as_millis() as i64;
                let ms = t.timestamp_millis();
                Utc.timestamp_millis_opt(ms.div_euclid(period_ms) * period_ms)
                    .single()
            }
            Kind::Cron(schedule) => schedule.after(&(t + chrono::Duration::seconds(1))).next_back(),
        }
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Rate(period) => {
                let period_ms = period.as_millis() as i64;
                let ms = t.timestamp_millis();
                Utc.timestamp_millis_opt((ms.div_euclid(period_ms) + 1) * period_ms)
                    .single()
            }
            Kind::Cron(schedule) => schedule.after(&t).next(),
        }
    }
}

/// The run id of a scheduled run: `schedule@20261122T0350Z` (the slot, a UTC minute).
pub fn slot_run_id(slot: DateTime<Utc>) -> String {
    format!("schedule@{}", slot.format("%Y%m%dT%H%MZ"))
}

fn parse_rate(body: &str) -> Result<Duration, String> {
    let fix = "expected rate(<n> minute|minutes|hour|hours|day|days), e.g. rate(5 minutes)";
    let mut words = body.split_whitespace();
    let (Some(n), Some(unit), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!("rate({body}): {fix}"));
    };
    let n: u64 = n
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("rate({body}): {n:?} is not a positive whole number; {fix}"))?;
    let (seconds, singular) = match unit {
        "minute" | "minutes" => (60, "minute"),
        "hour" | "hours" => (3600, "hour"),
        "day" | "days" => (86_400, "day"),
        other => return Err(format!("rate({body}): unknown unit {other:?}; {fix}")),
    };
    let want = if n == 1 {
        singular.to_string()
    } else {
        format!("{singular}s")
    };
    if unit != want {
        return Err(format!("rate({body}): write rate({n} {want})"));
    }
    n.checked_mul(seconds)
        .filter(|s| *s <= 366 * 86_400 * 10)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("rate({body}): the period is longer than ten years"))
}

fn parse_cron(body: &str) -> Result<cron::Schedule, String> {
    let fields: Vec<&str> = body.split_whitespace().collect();
    let names = ["minutes", "hours", "day-of-month", "month", "day-of-week", "year"];
    if fields.len() != 6 {
        return Err(format!(
            "cron({body}): {} fields; expected 6: {}",
            fields.len(),
            names.join(" ")
        ));
    }
    for (field, name) in fields.iter().zip(names) {
        if field.contains(['L', 'W', '#']) && !is_name_list(field) {
            return Err(format!(
                "cron({body}): {name} {field:?}: L, W and # are not supported"
            ));
        }
        if *field == "?" && name != "day-of-month" && name != "day-of-week" {
            return Err(format!(
                "cron({body}): ? is only allowed in day-of-month or day-of-week"
            ));
        }
    }
    match (fields[2] == "?", fields[4] == "?") {
        (true, true) => {
            return Err(format!(
                "cron({body}): day-of-month and day-of-week cannot both be ?"
            ));
        }
        (false, false) => {
            return Err(format!(
                "cron({body}): one of day-of-month and day-of-week must be ? (e.g. cron(0 8 * * ? *) or \
                 cron(0 8 ? * MON-FRI *))"
            ));
        }
        _ => {}
    }
    cron::Schedule::from_str(&format!("0 {}", fields.join(" "))).map_err(|e| {
        let detail = e.to_string();
        let last = detail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        format!("cron({body}): {}", last.trim())
    })
}

/// Month and weekday names (`JUL`, `WED`) contain L and W but are fine.
fn is_name_list(field: &str) -> bool {
    const NAMES: [&str; 19] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC", "SUN", "MON",
        "TUE", "WED", "THU", "FRI", "SAT",
    ];
    field
        .split([',', '-', '/'])
        .all(|part| part.chars().all(|c| c.is_ascii_digit() || c == '*') || NAMES.contains(&part))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn rates_are_aligned_to_the_epoch() {
        let s = Schedule::parse("rate(5 minutes)").unwrap();
        let t = at("2026-11-22T03:52:17Z");
        assert_eq!(s.slot_at_or_before(t), Some(at("2026-11-22T03:50:00Z")));
        assert_eq!(s.next_after(t), Some(at("2026-11-22T03:55:00Z")));
        let exact = at("2026-11-22T03:55:00Z");
        assert_eq!(s.slot_at_or_before(exact), Some(exact));
        assert_eq!(s.next_after(exact), Some(at("2026-11-22T04:00:00Z")));
        let h = Schedule::parse(" rate(1 hour) ").unwrap();
        assert_eq!(h.next_after(t), Some(at("2026-11-22T04:00:00Z")));
        assert_eq!(h.as_str(), "rate(1 hour)");
        assert!(Schedule::parse("rate(1 day)").is_ok());
    }

    #[test]
    fn bad_rates_say_what_is_expected() {
        for (text, needle) in [
            ("rate(5 minute)", "rate(5 minutes)"),
            ("rate(1 minutes)", "rate(1 minute)"),
            ("rate(0 minutes)", "positive"),
            ("rate(-3 minutes)", "positive"),
            ("rate(5 seconds)", "unknown unit"),
            ("rate(5)", "expected rate"),
            ("rate(5 minutes", "not a schedule"),
            ("every 5 minutes", "not a schedule"),
        ] {
            let e = Schedule::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn cron_follows_eventbridge_fields() {
        // Every 15 minutes.
        let s = Schedule::parse("cron(0/15 * * * ? *)").unwrap();
        assert_eq!(
            s.next_after(at("2026-11-22T03:52:17Z")),
            Some(at("2026-11-22T04:00:00Z"))
        );
        assert_eq!(
            s.slot_at_or_before(at("2026-11-22T03:52:17Z")),
            Some(at("2026-11-22T03:45:00Z"))
        );
        // 10:15 on weekdays; 2026-11-22 is a Sunday.
        let s = Schedule::parse("cron(15 10 ? * MON-FRI *)").unwrap();
        assert_eq!(
            s.next_after(at("2026-11-22T03:00:00Z")),
            Some(at("2026-11-23T10:15:00Z"))
        );
        // Day-of-week 1 is Sunday, as in EventBridge.
        let s = Schedule::parse("cron(0 8 ? * 1 *)").unwrap();
        assert_eq!(
            s.next_after(at("2026-11-20T00:00:00Z")),
            Some(at("2026-11-22T08:00:00Z"))
        );
        // First of the month, only in 2027.
        let s = Schedule::parse("cron(0 0 1 * ? 2027)").unwrap();
        assert_eq!(
            s.next_after(at("2026-11-22T03:00:00Z")),
            Some(at("2027-01-01T00:00:00Z"))
        );
        assert_eq!(s.slot_at_or_before(at("2026-11-22T03:00:00Z")), None);
        // Month names with L in them are names, not L.
        assert!(Schedule::parse("cron(0 12 1 JUL,APR ? *)").is_ok());
    }

    #[test]
    fn bad_crons_say_what_is_wrong() {
        for (text, needle) in [
            ("cron(0 8 * * *)", "expected 6"),
            ("cron(0 8 * * * *)", "must be ?"),
            ("cron(0 8 ? * ? *)", "both be ?"),
            ("cron(0 8 L * ? *)", "not supported"),
            ("cron(0 8 ? * 2#1 *)", "not supported"),
            ("cron(61 8 * * ? *)", "cron(61 8 * * ? *)"),
            ("cron(0 8 * * ? ?)", "only allowed"),
            ("cron(0 8 ? * 0 *)", "Days of Week"),
        ] {
            let e = Schedule::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn slot_ids_name_the_minute() {
        assert_eq!(slot_run_id(at("2026-11-22T03:50:00Z")), "schedule@20261122T0350Z");
    }
}
