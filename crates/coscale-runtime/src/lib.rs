//! coscale-runtime (work in progress).
