//! Log lines about conditions that repeat at the rate of incoming traffic — a connection
//! flood, a saturated port range — would flood the log exactly when an operator needs it.
//! [`LogLimit`] lets the first line through, then at most one per period, and that one says how
//! many occurrences were not logged since the last. The exact totals are in `/metrics`.

use std::time::Duration;

/// At most one log line per period for one condition.
#[derive(Debug, Clone)]
pub struct LogLimit {
    period: Duration,
    /// When the next line may be written (`None`: the first one may).
    next: Option<Duration>,
    skipped: u64,
}

impl LogLimit {
    pub const fn new(period: Duration) -> Self {
        LogLimit {
            period,
            next: None,
            skipped: 0,
        }
    }

    /// Whether to write the line for an occurrence at `now` (a reading of any monotonic
    /// clock): `Some(n)` — write it, `n` occurrences were not logged since the last line;
    /// `None` — counted, not logged.
    pub fn check(&mut self, now: Duration) -> Option<u64> {
        match self.next {
            Some(t) if now < t => {
                self.skipped += 1;
                None
            }
            _ => {
                self.next = Some(now + self.period);
                Some(std::mem::take(&mut self.skipped))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_then_one_per_period_with_the_count_skipped() {
        let s = Duration::from_secs;
        let mut l = LogLimit::new(s(10));
        assert_eq!(l.check(s(100)), Some(0));
        for t in 100..110 {
            assert_eq!(l.check(s(t)), None);
        }
        assert_eq!(l.check(s(110)), Some(10));
        assert_eq!(l.check(s(111)), None);
        // After a quiet spell the next occurrence is logged at once.
        assert_eq!(l.check(s(500)), Some(1));
        assert_eq!(l.check(s(509)), None);
    }
}
