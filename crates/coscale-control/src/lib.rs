//! coscale-control (work in progress).
