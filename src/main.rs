//! The `crmsync` binary.

fn main() {}
