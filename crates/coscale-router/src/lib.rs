//! coscale-router (work in progress).
