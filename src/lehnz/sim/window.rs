//! The fixed-window request counter behind the organization and auth-endpoint limits.

use std::time::Duration;

use tokio::time::Instant;

/// A request quota: `limit` requests per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Quota {
    pub(crate) limit: u32,
    pub(crate) period: Duration,
}

/// What one counted request learned about its window; becomes the `RateLimit-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Standing {
    /// Whether the request fits in the window.
    pub(crate) allowed: bool,
    /// The window's quota (`RateLimit-Limit`).
    pub(crate) limit: u32,
    /// Requests left after this one (`RateLimit-Remaining`); 0 once the quota is used up.
    pub(crate) remaining: u32,
    /// Whole seconds until the window resets, rounded up (`RateLimit-Reset`).
    pub(crate) reset_secs: u64,
}

/// A fixed window: it opens with the first request after the previous one ended and lasts one
/// period; every request in it counts, refused ones included.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FixedWindow {
    opened: Option<Instant>,
    count: u32,
}

impl FixedWindow {
    /// Counts one request arriving at `now`.
    pub(crate) fn hit(&mut self, quota: Quota, now: Instant) -> Standing {
        let opened = match self.opened {
            Some(opened) if now.saturating_duration_since(opened) < quota.period => opened,
            _ => {
                self.count = 0;
                self.opened = Some(now);
                now
            }
        };
        self.count = self.count.saturating_add(1);
        let left = quota
            .period
            .saturating_sub(now.saturating_duration_since(opened));
        Standing {
            allowed: self.count <= quota.limit,
            limit: quota.limit,
            remaining: quota.limit.saturating_sub(self.count),
            reset_secs: ceil_secs(left),
        }
    }

    /// When the current (or last) window ends and how many requests it counted; `None`
    /// before the first request.
    pub(crate) fn ended(&self, quota: Quota) -> Option<(Instant, u32)> {
        let opened = self.opened?;
        let end = opened.checked_add(quota.period).unwrap_or(opened);
        Some((end, self.count))
    }

    /// Whether the window has ended by `now`, so forgetting it changes nothing.
    pub(crate) fn is_expired(&self, quota: Quota, now: Instant) -> bool {
        self.opened
            .is_none_or(|opened| now.saturating_duration_since(opened) >= quota.period)
    }
}

/// Whole seconds in `d`, rounded up, so a client never retries before the reset; saturates at
/// `u64::MAX` for the longest durations.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs();
    if d.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTA: Quota = Quota {
        limit: 3,
        period: Duration::from_secs(60),
    };

    #[test]
    fn counts_down_and_refuses_past_the_limit() {
        let start = Instant::now();
        let mut window = FixedWindow::default();
        let seen: Vec<_> = (0..5)
            .map(|_| {
                let s = window.hit(QUOTA, start);
                (s.allowed, s.remaining)
            })
            .collect();
        assert_eq!(
            seen,
            [(true, 2), (true, 1), (true, 0), (false, 0), (false, 0)]
        );
    }

    #[test]
    fn reset_rounds_up_and_the_window_reopens() {
        let start = Instant::now();
        let mut window = FixedWindow::default();
        assert_eq!(window.hit(QUOTA, start).reset_secs, 60);
        let later = start + Duration::from_millis(10_500);
        assert_eq!(window.hit(QUOTA, later).reset_secs, 50);
        assert!(!window.is_expired(QUOTA, later));
        let next = start + QUOTA.period;
        assert!(window.is_expired(QUOTA, next));
        let s = window.hit(QUOTA, next);
        assert_eq!((s.allowed, s.remaining, s.reset_secs), (true, 2, 60));
    }

    #[test]
    fn the_longest_window_does_not_overflow_the_reset() {
        assert_eq!(ceil_secs(Duration::MAX), u64::MAX);
        let quota = Quota {
            limit: 1,
            period: Duration::MAX,
        };
        let s = FixedWindow::default().hit(quota, Instant::now());
        assert_eq!((s.allowed, s.reset_secs), (true, u64::MAX));
    }

    #[test]
    fn a_zero_limit_refuses_everything() {
        let quota = Quota {
            limit: 0,
            period: Duration::from_secs(1),
        };
        let s = FixedWindow::default().hit(quota, Instant::now());
        assert_eq!((s.allowed, s.remaining), (false, 0));
    }
}
