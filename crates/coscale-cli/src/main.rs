//! The `coscale` command line.
fn main() {}
