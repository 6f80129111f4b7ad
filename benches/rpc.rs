//! Placeholder until the bench lands in this change.
fn main() {}
