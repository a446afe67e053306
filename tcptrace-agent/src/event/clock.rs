//! Turning the kernel's monotonic timestamps into wall-clock time.

/// Offset between CLOCK_REALTIME and CLOCK_MONOTONIC, sampled once at start.
///
/// Nanoseconds are `i64` (they last until 2262), not `i128`: dividing an `i128` is a
/// library call, and every rendered event divides one.
pub struct Clock {
    realtime_minus_monotonic_ns: i64,
}

fn now_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            realtime_minus_monotonic_ns: now_ns(libc::CLOCK_REALTIME)
                - now_ns(libc::CLOCK_MONOTONIC),
        }
    }

    /// A clock whose wall time equals the monotonic time plus `offset_ns` (tests).
    #[cfg(test)]
    pub fn fixed(offset_ns: i64) -> Clock {
        Clock {
            realtime_minus_monotonic_ns: offset_ns,
        }
    }

    fn unix_ns(&self, mono_ns: u64) -> i64 {
        // Saturating: a corrupt timestamp shows as a wrong time, never a panic.
        (mono_ns as i64).saturating_add(self.realtime_minus_monotonic_ns)
    }

    /// The current wall-clock time, RFC 3339 UTC.
    pub fn rfc3339_now(&self) -> String {
        self.rfc3339(now_ns(libc::CLOCK_MONOTONIC) as u64)
    }

    /// `HH:MM:SS.micros` in UTC.
    pub fn time_of_day(&self, mono_ns: u64) -> String {
        TimeOfDay(self.unix_ns(mono_ns)).to_string()
    }

    /// RFC 3339 in UTC with microseconds: `2026-11-26T12:00:00.123456Z`.
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        self.rfc3339_display(mono_ns).to_string()
    }

    /// `rfc3339`, formatted where it is written (no string per event).
    pub fn rfc3339_display(&self, mono_ns: u64) -> Rfc3339 {
        Rfc3339(self.unix_ns(mono_ns))
    }

    /// The Unix second of a monotonic instant, and the microseconds into it.
    pub fn unix_second_and_micros(&self, mono_ns: u64) -> (i64, u32) {
        let ns = self.unix_ns(mono_ns);
        (
            ns.div_euclid(1_000_000_000),
            (ns.rem_euclid(1_000_000_000) / 1000) as u32,
        )
    }

    /// `YYYY-MM-DDTHH:MM:SS` of a Unix second, in UTC.
    pub fn date_time(&self, second: i64) -> [u8; 19] {
        let text = Rfc3339(second.saturating_mul(1_000_000_000)).to_string();
        let mut out = [b'0'; 19];
        out.copy_from_slice(&text.as_bytes()[..19]);
        out
    }
}

/// A wall-clock instant (Unix nanoseconds) shown as RFC 3339 UTC with microseconds.
pub struct Rfc3339(i64);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let days = self.0.div_euclid(86_400 * 1_000_000_000);
        let (y, m, d) = civil_from_days(days);
        write!(f, "{y:04}-{m:02}-{d:02}T{}Z", TimeOfDay(self.0))
    }
}

/// The time of day (UTC) of Unix nanoseconds, `HH:MM:SS.micros`.
struct TimeOfDay(i64);

impl std::fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ns = self.0.rem_euclid(86_400 * 1_000_000_000);
        let secs = ns / 1_000_000_000;
        write!(
            f,
            "{:02}:{:02}:{:02}.{:06}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            ns % 1_000_000_000 / 1000
        )
    }
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        // 2026-11-26T12:30:52.000123Z = 1795696252 s since the epoch.
        let c = Clock::fixed(1_795_696_252 * 1_000_000_000);
        assert_eq!(c.rfc3339(123_000), "2026-11-26T12:30:52.000123Z");
        assert_eq!(c.time_of_day(0), "12:30:52.000000");
        assert_eq!(Clock::fixed(0).rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(
            c.unix_second_and_micros(123_456_789),
            (1_795_696_252, 123_456)
        );
        assert_eq!(&c.date_time(1_795_696_252), b"2026-11-26T12:30:52");
    }

    #[test]
    fn seconds_and_micros_at_the_edges() {
        let c = Clock::fixed(1_795_696_252 * 1_000_000_000);
        // The last microsecond of a second, then the next second.
        assert_eq!(
            c.unix_second_and_micros(999_999_999),
            (1_795_696_252, 999_999)
        );
        assert_eq!(c.unix_second_and_micros(1_000_000_000), (1_795_696_253, 0));
        // Before the epoch (a clock set back): the second rounds down, micros count up.
        let before = Clock::fixed(-1_500);
        assert_eq!(before.unix_second_and_micros(0), (-1, 999_998));
        assert_eq!(before.rfc3339(0), "1969-12-31T23:59:59.999998Z");
        assert_eq!(&before.date_time(-1), b"1969-12-31T23:59:59");
        // Past 2262 the nanoseconds saturate rather than overflow.
        let end = Clock::fixed(i64::MAX);
        assert_eq!(end.unix_second_and_micros(1), (9_223_372_036, 854_775));
        assert_eq!(&end.date_time(9_223_372_036), b"2262-04-11T23:47:16");
    }
}
