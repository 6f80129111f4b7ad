//! The compile errors `#[zmesh::service]` gives for signatures it cannot serve: each case in
//! `tests/ui/` must fail to build with exactly the error (and the span in the user's code)
//! recorded beside it in its `.stderr` file.

#[test]
fn unsupported_signatures_are_compile_errors_at_the_users_code() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
