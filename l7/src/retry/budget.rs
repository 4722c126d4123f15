//! A cluster's retry budget (Linkerd's `retryBudget`, tower's
//! `TpsBudget`): over the last `ttl`, retries may add `retry_ratio` of the
//! requests sent to the cluster, plus `min_retries_per_second` × `ttl`
//! retries that need no requests behind them. A failing cluster then sees
//! at most (1 + ratio) times its normal load, never the attempts multiple.
//!
//! The budget is the proxy's, not each core's. Every request deposits
//! into its own core's ring (one relaxed load and store, no cache line
//! shared); a retry, which is rare, sums every core's ring and takes its
//! withdrawal from one shared ring with a compare-and-swap, so two cores
//! cannot both spend the last retry.
//!
//! Each ring has ten slots of `ttl / 10`; a slot holds its epoch (slot
//! number since the budget was made) in the high 32 bits and its count in
//! the low 32, so an expired slot is recognised and restarted in one word.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ringmesh_core::per_core::PerCore;

/// Slots per window.
const SLOTS: usize = 10;

/// A budget's settings (`clusters[].retry_budget`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSettings {
    /// Share of recent requests that retries may add (default 0.2).
    pub retry_ratio: f64,
    /// Retries per second allowed whatever the request rate (default 10).
    pub min_retries_per_second: u32,
    /// The window requests and retries are counted over (default 10 s).
    pub ttl: Duration,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            retry_ratio: 0.2,
            min_retries_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// Ten slots of one window.
#[derive(Debug, Default)]
struct Ring {
    slots: [AtomicU64; SLOTS],
}

impl Ring {
    /// The count over the window ending in slot `epoch`, and the current
    /// slot's word as read.
    fn window(&self, epoch: u64) -> (u64, u64) {
        let current = epoch as usize % SLOTS;
        // The current slot is read once: the count and the word a
        // compare-and-swap expects must be the same reading, or a
        // concurrent withdrawal could slip between them.
        let now = self.slots[current].load(Relaxed);
        let mut total = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            let word = if i == current {
                now
            } else {
                slot.load(Relaxed)
            };
            let at = word >> 32;
            if at <= epoch && at + SLOTS as u64 > epoch {
                total += word & u64::from(u32::MAX);
            }
        }
        (total, now)
    }
}

/// The next word of a slot whose word is `word`, counting one in `epoch`.
fn bumped(word: u64, epoch: u64) -> u64 {
    if word >> 32 == epoch {
        word + u64::from((word as u32) < u32::MAX)
    } else {
        (epoch << 32) | 1
    }
}

/// One cluster's retry budget, shared by every worker.
#[derive(Debug)]
pub struct RetryBudget {
    settings: BudgetSettings,
    origin: Instant,
    slot_nanos: u64,
    deposits: PerCore<Ring>,
    withdrawals: Ring,
}

impl RetryBudget {
    /// An empty budget for `workers` workers.
    pub fn new(settings: BudgetSettings, workers: usize) -> Self {
        RetryBudget {
            settings,
            origin: Instant::now(),
            slot_nanos: (settings.ttl.as_nanos() as u64 / SLOTS as u64).max(1),
            deposits: PerCore::new(workers),
            withdrawals: Ring::default(),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> BudgetSettings {
        self.settings
    }

    #[inline]
    fn epoch(&self, now: Instant) -> u64 {
        // u64 arithmetic: `as_nanos` is a u128 and its division a libcall
        // on the per-request path.
        let d = now.saturating_duration_since(self.origin);
        (d.as_secs() * 1_000_000_000 + u64::from(d.subsec_nanos())) / self.slot_nanos
    }

    /// One request sent on worker `core` (the worker is the slot's only
    /// writer, so a load and a store suffice).
    #[inline]
    pub fn deposit(&self, core: usize, now: Instant) {
        let epoch = self.epoch(now);
        let slot = &self.deposits.get(core).slots[epoch as usize % SLOTS];
        slot.store(bumped(slot.load(Relaxed), epoch), Relaxed);
    }

    /// Takes one retry if the budget has one.
    pub fn withdraw(&self, now: Instant) -> bool {
        let epoch = self.epoch(now);
        let deposited: u64 = self.deposits.iter().map(|r| r.window(epoch).0).sum();
        let allowance = self.settings.retry_ratio * deposited as f64
            + f64::from(self.settings.min_retries_per_second) * self.settings.ttl.as_secs_f64();
        let slot = &self.withdrawals.slots[epoch as usize % SLOTS];
        loop {
            let (withdrawn, word) = self.withdrawals.window(epoch);
            if withdrawn as f64 + 1.0 > allowance {
                return false;
            }
            if slot
                .compare_exchange(word, bumped(word, epoch), Relaxed, Relaxed)
                .is_ok()
            {
                return true;
            }
        }
    }

    /// Retries the budget would grant now (for the admin API and tests).
    pub fn remaining(&self, now: Instant) -> u64 {
        let epoch = self.epoch(now);
        let deposited: u64 = self.deposits.iter().map(|r| r.window(epoch).0).sum();
        let allowance = self.settings.retry_ratio * deposited as f64
            + f64::from(self.settings.min_retries_per_second) * self.settings.ttl.as_secs_f64();
        let withdrawn = self.withdrawals.window(epoch).0 as f64;
        (allowance - withdrawn).max(0.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min: u32, ttl_secs: u64, workers: usize) -> RetryBudget {
        RetryBudget::new(
            BudgetSettings {
                retry_ratio: ratio,
                min_retries_per_second: min,
                ttl: Duration::from_secs(ttl_secs),
            },
            workers,
        )
    }

    fn granted(b: &RetryBudget, now: Instant, tries: usize) -> usize {
        (0..tries).filter(|_| b.withdraw(now)).count()
    }

    #[test]
    fn the_reserve_is_min_per_second_times_ttl_without_requests() {
        let b = budget(0.2, 10, 10, 2);
        assert_eq!(granted(&b, b.origin, 500), 100);
        assert_eq!(b.remaining(b.origin), 0);
    }

    #[test]
    fn requests_on_every_core_add_their_ratio_once() {
        let b = budget(0.2, 0, 10, 2);
        let now = b.origin + Duration::from_secs(1);
        for i in 0..1000 {
            b.deposit(i % 2, now);
        }
        // 1,000 requests over both cores buy 200 retries, not 400.
        assert_eq!(granted(&b, now, 1000), 200);
    }

    #[test]
    fn requests_and_retries_expire_after_the_window() {
        let b = budget(0.5, 0, 10, 1);
        let t0 = b.origin;
        for _ in 0..100 {
            b.deposit(0, t0);
        }
        assert_eq!(granted(&b, t0 + Duration::from_secs(5), 30), 30);
        // Ten seconds on, the deposits and withdrawals of t0..t0+5 are gone.
        let later = t0 + Duration::from_secs(16);
        assert_eq!(granted(&b, later, 10), 0);
        for _ in 0..10 {
            b.deposit(0, later);
        }
        assert_eq!(granted(&b, later, 10), 5);
    }

    #[test]
    fn cores_racing_for_the_last_retries_get_exactly_the_budget() {
        let b = std::sync::Arc::new(budget(0.0, 5, 10, 2));
        let now = b.origin;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || granted(&b, now, 1000))
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(total, 50);
    }
}
