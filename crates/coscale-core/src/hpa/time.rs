//! Points in time for the HPA, as whole milliseconds since an arbitrary epoch chosen by
//! the caller (the live controller uses a monotonic clock, the simulator virtual time).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time, in milliseconds since the caller's epoch (may be negative).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(i64);

fn millis_of(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Timestamp {
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }
    pub const fn from_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(1000))
    }
    /// The time `d` after the epoch.
    pub fn from_duration(d: Duration) -> Self {
        Self(millis_of(d))
    }
    pub const fn millis(self) -> i64 {
        self.0
    }
    /// `self - d`, saturating.
    pub fn minus(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(millis_of(d)))
    }
    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(millis_of(d)))
    }
    /// Seconds from `self` until `later` (negative if `later` is earlier).
    pub fn seconds_until(self, later: Timestamp) -> f64 {
        (later.0.saturating_sub(self.0)) as f64 / 1000.0
    }
}
