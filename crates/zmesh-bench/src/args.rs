//! Parses the command-line values the benchmark tools share (`zmesh bench`, the peer and
//! jobs comparisons, the `zmesh` command's timeouts): one rule for what a duration in
//! seconds may be.

/// A positive, finite number of seconds, for clap's `value_parser`.
///
/// # Errors
/// A message naming the text, for clap to print.
pub fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_positive_finite_seconds_pass() {
        assert_eq!(positive_seconds("2.5"), Ok(2.5));
        for bad in ["0", "-1", "inf", "NaN", "soon"] {
            assert!(positive_seconds(bad).is_err(), "{bad}");
        }
    }
}
