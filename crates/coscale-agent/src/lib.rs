//! coscale-agent (work in progress).
