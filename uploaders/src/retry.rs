//! Retries for backend calls: exponential backoff with full jitter, on
//! transient errors only, honouring the server's `Retry-After`, all inside
//! one time budget so a dead service cannot hold a run forever.
//!
//! Full jitter (a uniformly random wait between zero and the exponential
//! cap) is what spreads many clients hitting one rate limit; a server's
//! `Retry-After` replaces the random wait, because it knows better.

use std::time::{Duration, Instant};

use crate::backends::BackendError;

/// How often and how long to retry one backend operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (1 = no retry).
    pub max_attempts: u32,
    /// Cap of the first random wait; doubled after each failure.
    pub base_delay: Duration,
    /// Largest cap of a random wait.
    pub max_delay: Duration,
    /// Wall-clock budget of all attempts and waits together. A wait that
    /// would end past it is not taken: the last error is returned instead.
    pub budget: Duration,
    /// An end shared by every [`run`](Self::run) of this policy (and of its
    /// copies): one put is many retried requests, and they must all fit in
    /// one budget, not each in its own ([`until`](Self::until)).
    pub deadline: Option<Instant>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            budget: Duration::from_secs(300),
            deadline: None,
        }
    }
}

/// What a [`RetryPolicy::run`] reports before each wait, for logs and spans.
#[derive(Debug, Clone)]
pub struct RetryEvent<'a> {
    /// What is being retried, e.g. `"put host/run.tar.gz"`.
    pub what: &'a str,
    /// The attempt that failed (1-based).
    pub attempt: u32,
    /// How long we wait before the next attempt.
    pub wait: Duration,
    /// The error that made us retry.
    pub error: &'a BackendError,
}

impl RetryPolicy {
    /// No retry at all: one attempt.
    pub fn once() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// This policy with every run ending by `deadline` at the latest.
    pub fn until(self, deadline: Instant) -> Self {
        RetryPolicy {
            deadline: Some(deadline),
            ..self
        }
    }

    /// This policy with one deadline, `budget` from now, for all its runs.
    pub fn from_now(self) -> Self {
        let end = Instant::now().checked_add(self.budget);
        RetryPolicy {
            deadline: end.or(self.deadline),
            ..self
        }
    }

    /// Runs `op` (given the 1-based attempt number) until it succeeds, fails
    /// permanently, or attempts or budget run out; returns the last error.
    pub fn run<T>(
        &self,
        what: &str,
        op: impl FnMut(u32) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        self.run_with(what, op, &mut |ev| {
            tracing::warn!(
                target: "ferry::retry",
                backend = ev.error.backend(),
                attempt = ev.attempt,
                wait_ms = ev.wait.as_millis() as u64,
                "{}: {}; retrying",
                ev.what,
                ev.error
            );
        })
    }

    /// [`run`](Self::run) with a callback before every wait instead of the
    /// default warning.
    pub fn run_with<T>(
        &self,
        what: &str,
        mut op: impl FnMut(u32) -> Result<T, BackendError>,
        on_retry: &mut dyn FnMut(&RetryEvent<'_>),
    ) -> Result<T, BackendError> {
        let start = Instant::now();
        let own_end = start.checked_add(self.budget);
        let end = match (own_end, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut attempt = 1;
        loop {
            let err = match op(attempt) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !err.is_transient() || attempt >= self.max_attempts.max(1) {
                return Err(err);
            }
            let wait = self.delay(attempt, err.retry_after());
            let past_end = match end {
                Some(end) => Instant::now().checked_add(wait).is_none_or(|t| t > end),
                None => false,
            };
            if past_end {
                return Err(err);
            }
            on_retry(&RetryEvent {
                what,
                attempt,
                wait,
                error: &err,
            });
            std::thread::sleep(wait);
            attempt += 1;
        }
    }

    /// The wait after failed attempt `attempt` (1-based): the server's
    /// `Retry-After` when it gave one (never less, so we do not get
    /// throttled again at once), else a uniform random value in
    /// `[0, min(max_delay, base_delay * 2^(attempt-1))]`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(d) = retry_after {
            return d;
        }
        let shift = attempt.saturating_sub(1).min(30);
        let cap = self
            .base_delay
            .saturating_mul(1u32 << shift)
            .min(self.max_delay);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::ErrorKind;

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            budget: Duration::from_secs(5),
            deadline: None,
        }
    }

    fn err(kind: ErrorKind) -> BackendError {
        BackendError::new("t", kind, "boom", "fix it")
    }

    #[test]
    fn transient_errors_are_retried_until_success() {
        let mut calls = 0;
        let mut waits = 0;
        let v = fast()
            .run_with(
                "op",
                |n| {
                    calls += 1;
                    if n < 3 {
                        Err(err(ErrorKind::Unavailable))
                    } else {
                        Ok(n)
                    }
                },
                &mut |_| waits += 1,
            )
            .unwrap();
        assert_eq!((v, calls, waits), (3, 3, 2));
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let mut calls = 0;
        let e = fast()
            .run_with(
                "op",
                |_| -> Result<(), _> {
                    calls += 1;
                    Err(err(ErrorKind::Auth))
                },
                &mut |_| {},
            )
            .unwrap_err();
        assert_eq!((calls, e.kind()), (1, ErrorKind::Auth));
    }

    #[test]
    fn attempts_are_bounded() {
        let mut calls = 0;
        let e = fast()
            .run_with(
                "op",
                |_| -> Result<(), _> {
                    calls += 1;
                    Err(err(ErrorKind::RateLimited))
                },
                &mut |_| {},
            )
            .unwrap_err();
        assert_eq!(calls, 5);
        assert_eq!(e.kind(), ErrorKind::RateLimited);
    }

    #[test]
    fn retry_after_is_honoured_and_budget_stops_long_waits() {
        let p = fast();
        let asked = Duration::from_secs(7);
        assert_eq!(p.delay(1, Some(asked)), asked);
        // 7 s is beyond the 5 s budget: give up at once with the error.
        let mut calls = 0;
        let t = Instant::now();
        let e = p
            .run_with(
                "op",
                |_| -> Result<(), _> {
                    calls += 1;
                    Err(err(ErrorKind::RateLimited).with_retry_after(asked))
                },
                &mut |_| {},
            )
            .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(e.retry_after(), Some(asked));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    /// Regression: each run started its own budget, so a put made of many
    /// retried requests could take many budgets. A shared deadline ends
    /// them all.
    #[test]
    fn a_shared_deadline_ends_every_run_of_the_policy() {
        let p = RetryPolicy {
            max_attempts: 1000,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(20),
            budget: Duration::from_secs(60),
            deadline: None,
        }
        .until(Instant::now() + Duration::from_millis(300));
        let t = Instant::now();
        let mut calls = 0;
        for _ in 0..5 {
            let _ = p.run_with(
                "op",
                |_| -> Result<(), _> {
                    calls += 1;
                    Err(err(ErrorKind::Unavailable))
                },
                &mut |_| {},
            );
        }
        // Five runs of one policy share the 300 ms: not 5 × 60 s.
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(calls >= 5, "every run tries once: {calls}");
        // Past the deadline a run tries once and gives up.
        std::thread::sleep(Duration::from_millis(350).saturating_sub(t.elapsed()));
        let mut once = 0;
        let _ = p.run_with(
            "op",
            |_| -> Result<(), _> {
                once += 1;
                Err(err(ErrorKind::Unavailable))
            },
            &mut |_| {},
        );
        assert_eq!(once, 1);
    }

    #[test]
    fn a_huge_retry_after_does_not_overflow() {
        let mut calls = 0;
        let r = fast().run_with(
            "op",
            |_| -> Result<(), _> {
                calls += 1;
                Err(err(ErrorKind::RateLimited).with_retry_after(Duration::from_secs(u64::MAX)))
            },
            &mut |_| {},
        );
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }

    #[test]
    fn jitter_stays_under_the_exponential_cap() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for attempt in 1..12 {
            let cap = Duration::from_millis(100 * (1 << (attempt - 1).min(10))).min(p.max_delay);
            for _ in 0..50 {
                assert!(p.delay(attempt, None) <= cap, "attempt {attempt}");
            }
        }
        // Full jitter: the waits really vary (not a fixed schedule).
        let seen: std::collections::BTreeSet<_> = (0..50).map(|_| p.delay(4, None)).collect();
        assert!(seen.len() > 10, "{seen:?}");
    }
}
