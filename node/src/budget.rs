//! Byte budgets: memory a node lets requests hold, counted in bytes and refused, not queued,
//! when full. Two exist per node: request bytes in flight (`limits.maxInFlightBytes`, shared by
//! the HTTP API and by writes followers forward to this node as leader, so forwarding cannot
//! bring a leader more than its own clients could) and bytes of writes waiting to commit
//! (`limits.maxPendingProposalBytes`).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::metrics::metrics;

/// Permits count units of this many bytes (a semaphore counts in `u32`).
const UNIT: u64 = 1024;

#[derive(Clone)]
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    max_bytes: u64,
}

impl ByteBudget {
    pub fn new(max_bytes: u64) -> ByteBudget {
        let units = (max_bytes / UNIT).clamp(1, u64::from(u32::MAX) / 2);
        ByteBudget {
            permits: Arc::new(Semaphore::new(units as usize)),
            max_bytes,
        }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Takes `bytes` from the budget if they fit now; `None` if they do not (never waits).
    pub fn try_charge(&self, bytes: u64) -> Option<Charge> {
        let units = bytes.div_ceil(UNIT).clamp(1, u64::from(u32::MAX)) as u32;
        let permit = self.permits.clone().try_acquire_many_owned(units).ok()?;
        Some(Charge {
            _permit: permit,
            bytes,
        })
    }
}

/// Bytes held from a [`ByteBudget`] until dropped, however the request ends.
#[must_use = "the bytes go back to the budget when this is dropped"]
pub struct Charge {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
}

impl Charge {
    /// Shows this charge in `concord_http_request_bytes_in_flight` while it is held.
    pub fn shown_in_flight(self) -> InFlight {
        metrics().http_in_flight_bytes.add(self.bytes as i64);
        InFlight(self)
    }
}

/// A [`Charge`] counted in the in-flight gauge.
pub struct InFlight(Charge);

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics().http_in_flight_bytes.sub(self.0.bytes as i64);
    }
}

/// The metadata key a forwarding follower puts the size of a forwarded write under, so the
/// leader can charge it before reading it.
pub const FORWARD_BYTES_HEADER: &str = "concord-forward-bytes";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_until_the_budget_is_spent_and_come_back_when_dropped() {
        let b = ByteBudget::new(10 * 1024);
        let a = b.try_charge(6 * 1024).expect("fits");
        assert!(b.try_charge(6 * 1024).is_none(), "over the budget");
        let c = b.try_charge(4 * 1024).expect("the rest fits");
        drop(a);
        assert!(b.try_charge(6 * 1024).is_some());
        drop(c);
        // Anything is charged at least one unit; nothing larger than the budget ever fits.
        assert!(b.try_charge(0).is_some());
        assert!(b.try_charge(11 * 1024).is_none());
    }
}
