//! Compile-time behaviour of `#[derive(Record)]`: what compiles, and the error
//! each mistake gives (`tests/ui/fail/*.stderr`; regenerate with
//! `TRYBUILD=overwrite cargo test -p stream-macros --test ui` and read the diff).

#![allow(clippy::unwrap_used)]

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
