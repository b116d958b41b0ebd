//! End-to-end tests across the promhub crates live in `tests/tests/`.

// The README's Rust examples are compiled and run as doctests, so the
// documentation cannot drift from the code.
#[doc = include_str!("../../README.md")]
mod readme {}
