//! Where an inference runs from async code: on the worker that received the request, or with
//! the worker handed over while it runs. One policy for the runtime's own servers and the
//! agent's built-in backend, so that the runtime alone (the data-plane benchmark's baseline) and
//! the runtime inside the agent run inferences the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use coscale_api::v2::InferRequest;

/// An inference expected to take at most this long runs on the async worker that received
/// the request, once it has one of the inline slots: one fewer than the workers (none with a
/// single worker, where every inference hands its worker over), since with every worker
/// computing inline none would read the requests that arrive meanwhile, the queue would sit
/// unread in socket buffers and the inference lag would not see it.
/// `coscale agent` and `coscale runtime` start one worker per core and one more, so there is a
/// slot per core and a worker left to read. A request that finds the slots taken waits for one
/// in its handler. A longer inference hands its worker over (`block_in_place`), which wakes
/// another thread to take the worker's place and switches context at least twice: most of the
/// work of a small model and a few per cent of a 1 ms one. (Handing over the second of two
/// concurrent short inferences, as ee65809 to df18a58 did, cost the runtime alone ~146 µs of CPU
/// per iris-mlp request at 64 connections on two cores; a slot per core and a reading worker,
/// ~86 µs, with 41 % more throughput: docs/benchmarks.md.) Meanwhile requests on a computing
/// worker's connections wait unread for at most about this long; the reading worker accepts.
pub const INLINE_BUDGET: Duration = Duration::from_millis(1);

/// The measured cost of one model's inferences: a moving average of nanoseconds per input
/// element, so that a large batch is predicted to take longer than the single rows before it.
#[derive(Debug)]
pub(crate) struct Cost {
    nanos_per_element: AtomicU64,
}

impl Cost {
    /// Nothing measured yet: the first inference is not assumed to be short.
    const UNMEASURED: u64 = u64::MAX;

    pub(crate) fn new() -> Self {
        Cost {
            nanos_per_element: AtomicU64::new(Self::UNMEASURED),
        }
    }

    /// Whether an inference over `elements` input elements is predicted to fit the budget.
    pub(crate) fn fits(&self, elements: u64, budget: Duration) -> bool {
        match self.nanos_per_element.load(Ordering::Relaxed) {
            Self::UNMEASURED => false,
            per => {
                let budget = u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX);
                per.saturating_mul(elements.max(1)) <= budget
            }
        }
    }

    /// Folds one measured inference into the average (weight 1/8; concurrent updates may
    /// lose one sample, which only makes the average a little slower to move).
    pub(crate) fn record(&self, elements: u64, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let sample = nanos / elements.max(1);
        let old = self.nanos_per_element.load(Ordering::Relaxed);
        let new = if old == Self::UNMEASURED {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.nanos_per_element.store(new, Ordering::Relaxed);
    }
}

/// Input elements of a request (what its inference time grows with).
pub(crate) fn input_elements(request: &InferRequest) -> u64 {
    let n: usize = request.inputs.iter().map(|t| t.data.len()).sum();
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn an_unmeasured_model_is_not_run_inline() {
        assert!(!Cost::new().fits(1, Duration::from_secs(1)));
    }

    #[test]
    fn the_prediction_grows_with_the_batch_and_follows_the_measurements() {
        let cost = Cost::new();
        cost.record(4, Duration::from_micros(20)); // 5 µs per element
        assert!(cost.fits(4, Duration::from_micros(100)));
        assert!(cost.fits(20, Duration::from_micros(100)));
        assert!(!cost.fits(21, Duration::from_micros(100)));
        // A model that became slow (e.g. the machine is loaded) stops running inline after a
        // few inferences; one slow outlier alone does not flip it.
        cost.record(4, Duration::from_micros(400));
        assert!(cost.fits(4, Duration::from_micros(100)));
        for _ in 0..8 {
            cost.record(4, Duration::from_micros(400));
        }
        assert!(!cost.fits(4, Duration::from_micros(100)));
    }

    #[test]
    fn an_empty_request_counts_as_one_element() {
        let cost = Cost::new();
        cost.record(0, Duration::from_micros(10));
        assert!(cost.fits(0, Duration::from_micros(10)));
        assert!(!cost.fits(0, Duration::from_micros(9)));
    }
}
