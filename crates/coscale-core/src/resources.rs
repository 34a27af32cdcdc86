//! Resources (in progress).
