//! The payload budget: how many bytes of rendezvous payload (request data coming in, read
//! replies going out) a server holds in transfer buffers at once.
//!
//! Why: every rendezvous transfer has a buffer of its own for as long as it is in flight,
//! and a server that takes all of them at once (16 writes of 4 MiB is 64 MiB) works out of
//! main memory instead of its cache. Over shared memory that halved the bandwidth of 4 MiB
//! transfers here (5.7 against 9.9 GB/s with two in flight; see ARCHITECTURE.md). So a
//! request waits until its bytes fit, in arrival order. A wait is bounded by
//! [`PAYLOAD_BUDGET_WAIT_MAX`]: past it the request goes anyway, over budget, so a stalled
//! peer (a stopped client whose transfer holds bytes until the transfer timeout) delays
//! the others by milliseconds, never by the timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Longest a request waits for its bytes before it goes over budget.
pub const PAYLOAD_BUDGET_WAIT_MAX: Duration = Duration::from_millis(5);

/// Bytes per permit: a budget of up to 4 TiB counts in `u32` permits.
const UNIT: u64 = 1024;

/// The payload budget of one server; clones share it.
#[derive(Debug, Clone)]
pub struct PayloadBudget {
    /// Free units; `None`: no bound.
    units: Option<Arc<Semaphore>>,
    total_units: u32,
}

impl PayloadBudget {
    /// A budget of `bytes` (rounded up to a KiB); 0 means no bound.
    pub fn new(bytes: u64) -> PayloadBudget {
        if bytes == 0 {
            return PayloadBudget {
                units: None,
                total_units: 0,
            };
        }
        let total_units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        PayloadBudget {
            units: Some(Arc::new(Semaphore::new(total_units as usize))),
            total_units,
        }
    }

    /// Waits until `bytes` fit (a request larger than the whole budget waits for all of
    /// it), at most [`PAYLOAD_BUDGET_WAIT_MAX`], and returns their share, held until it is
    /// dropped. `None`: nothing to hold (no bound, no bytes), or the wait ran out and the
    /// request goes over budget.
    pub async fn hold(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let units = self.units.as_ref()?;
        if bytes == 0 {
            return None;
        }
        let wanted = u32::try_from((bytes as u64).div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.total_units);
        let acquire = Arc::clone(units).acquire_many_owned(wanted);
        match tokio::time::timeout(PAYLOAD_BUDGET_WAIT_MAX, acquire).await {
            Ok(Ok(permit)) => Some(permit),
            Ok(Err(_closed)) => None,
            Err(_elapsed) => {
                tracing::debug!(bytes, "payload budget exhausted; going over it");
                None
            }
        }
    }

    /// Bytes free now (`None`: no bound).
    pub fn free_bytes(&self) -> Option<u64> {
        self.units
            .as_ref()
            .map(|u| u.available_permits() as u64 * UNIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn bytes_are_held_until_dropped_and_never_past_the_budget() {
        run(async {
            let budget = PayloadBudget::new(8 << 20);
            let first = budget.hold(4 << 20).await.expect("fits");
            let second = budget.hold(4 << 20).await.expect("fits");
            assert_eq!(budget.free_bytes(), Some(0));
            assert!(budget.hold(1).await.is_none(), "over budget after the wait");
            assert_eq!(budget.free_bytes(), Some(0), "going over takes nothing");
            drop(first);
            assert_eq!(budget.free_bytes(), Some(4 << 20));
            let third = budget.hold(3 << 20).await.expect("fits again");
            drop((second, third));
            assert_eq!(budget.free_bytes(), Some(8 << 20));
        });
    }

    #[test]
    fn a_waiting_request_gets_its_bytes_when_they_free() {
        run(async {
            let budget = PayloadBudget::new(1 << 20);
            let held = budget.hold(1 << 20).await.expect("fits");
            let waiter = {
                let budget = budget.clone();
                tokio::spawn(async move { budget.hold(1 << 20).await.is_some() })
            };
            benchfs_ucx::yield_turn().await;
            drop(held);
            assert!(waiter.await.unwrap(), "the waiter got the freed bytes");
        });
    }

    #[test]
    fn a_request_larger_than_the_budget_takes_all_of_it() {
        run(async {
            let budget = PayloadBudget::new(1 << 20);
            let all = budget.hold(4 << 20).await.expect("the whole budget");
            assert_eq!(budget.free_bytes(), Some(0));
            drop(all);
            assert_eq!(budget.free_bytes(), Some(1 << 20));
        });
    }

    #[test]
    fn no_bound_holds_nothing() {
        run(async {
            let budget = PayloadBudget::new(0);
            assert!(budget.hold(1 << 30).await.is_none());
            assert_eq!(budget.free_bytes(), None);
        });
    }
}
