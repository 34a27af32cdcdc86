//! Placement (in progress).
