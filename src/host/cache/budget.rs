//! The memory the cache's responses hold, all of them together: blocks read or fetched into
//! memory, their decoding, and the links a walk keeps waiting. Each share is taken before the
//! memory is spent; a response that cannot get its share in [`BUDGET_WAIT`] (because others
//! hold it all, clients that stopped reading included, until they are dropped) fails, and its
//! client retries or goes elsewhere.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Memory all responses may hold at once.
pub const RESPONSE_MEMORY: usize = 64 << 20;
/// Longest wait for a share of [`RESPONSE_MEMORY`].
pub const BUDGET_WAIT: Duration = Duration::from_secs(30);
/// The budget's unit: shares are rounded up to it.
const UNIT: usize = 1024;

/// Why a share could not be had.
#[derive(Debug, thiserror::Error)]
#[error("the cache's response memory ({} MiB) stayed taken for {}s", RESPONSE_MEMORY >> 20, BUDGET_WAIT.as_secs())]
pub struct Busy;

/// The shares of memory handed to responses.
pub(super) struct Budget {
    sem: Arc<Semaphore>,
    units: usize,
}

/// A share of the budget, given back when dropped.
pub(super) struct Share {
    budget: Arc<Semaphore>,
    units: usize,
    permit: Option<OwnedSemaphorePermit>,
}

fn units(bytes: usize) -> usize {
    bytes.div_ceil(UNIT).max(1)
}

impl Budget {
    pub(super) fn new(bytes: usize) -> Budget {
        let units = units(bytes);
        Budget {
            sem: Arc::new(Semaphore::new(units)),
            units,
        }
    }

    /// A share of `bytes`, waiting at most [`BUDGET_WAIT`] for it.
    pub(super) async fn take(&self, bytes: usize) -> Result<Share, Busy> {
        let mut s = Share {
            budget: self.sem.clone(),
            units: self.units,
            permit: None,
        };
        s.resize(bytes).await?;
        Ok(s)
    }
}

impl Share {
    /// Makes the share `bytes`: gives back at once what is over, or waits for what is missing
    /// (at most [`BUDGET_WAIT`]; more than the whole budget is never granted).
    pub(super) async fn resize(&mut self, bytes: usize) -> Result<(), Busy> {
        let want = units(bytes);
        let have = self.permit.as_ref().map_or(0, |p| p.num_permits());
        if want <= have {
            if let Some(p) = self.permit.as_mut() {
                drop(p.split(have - want));
            }
            return Ok(());
        }
        if want > self.units {
            return Err(Busy);
        }
        let more = u32::try_from(want - have).map_err(|_| Busy)?;
        let got = tokio::time::timeout(BUDGET_WAIT, self.budget.clone().acquire_many_owned(more))
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        match self.permit.as_mut() {
            Some(p) => p.merge(got),
            None => self.permit = Some(got),
        }
        Ok(())
    }
}
