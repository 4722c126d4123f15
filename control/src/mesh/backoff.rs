//! Retry pacing towards the control plane.

use std::time::Duration;

/// Fully jittered exponential backoff, 100 ms doubling to 5 s.
pub(super) struct Backoff {
    ceiling: Duration,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub(super) fn new() -> Backoff {
        Backoff {
            ceiling: Self::BASE,
        }
    }

    pub(super) fn next(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(Self::MAX);
        // At least a tenth of the ceiling, so a loop never spins.
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(ms / 10 + ringmesh_l7::random::below(ms - ms / 10 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_capped() {
        let mut b = Backoff::new();
        for _ in 0..20 {
            let d = b.next();
            assert!(d >= Duration::from_millis(10) && d <= Backoff::MAX, "{d:?}");
        }
        assert_eq!(b.ceiling, Backoff::MAX);
    }
}
