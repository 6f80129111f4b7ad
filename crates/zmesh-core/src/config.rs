//! Provides the one rule every configuration follows: a setting is stored as given, checked
//! by its config's `validate` when the component starts (`Node` start, a `Client`'s connect
//! or first call, `Subscriber` and `Publisher` start, a `MeshClient`'s first call, a device's
//! start), and refused there with a [`ConfigError`] that names the field. Never clamped
//! silently, never a panic in a task later.
//!
//! The checks are small functions here so every config words the same rule the same way.

pub use crate::spin::MAX_SPIN;
use std::fmt::Debug;

/// A setting out of its range: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct ConfigError {
    /// The setting, as its config's field is named (`heartbeat`, `max_connections_per_endpoint`).
    pub field: &'static str,
    /// What it must be, such as `must be at least 10ms`.
    pub reason: String,
}

impl ConfigError {
    /// A setting refused for `reason`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// `value` must be at least `min`.
///
/// # Errors
/// [`ConfigError`] naming `field` when it is smaller.
pub fn at_least<T: PartialOrd + Debug>(
    field: &'static str,
    value: T,
    min: T,
) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::new(field, format!("must be at least {min:?}")));
    }
    Ok(())
}

/// `value` must lie in `min..=max`.
///
/// # Errors
/// [`ConfigError`] naming `field` when it is outside.
pub fn in_range<T: PartialOrd + Debug>(
    field: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            field,
            format!("must be in {min:?}..={max:?}"),
        ));
    }
    Ok(())
}

/// `value` must be at least the setting `other` (whose value is `min`).
///
/// # Errors
/// [`ConfigError`] naming `field` when it is smaller.
pub fn at_least_field<T: PartialOrd>(
    field: &'static str,
    value: T,
    other: &'static str,
    min: T,
) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::new(field, format!("must be at least {other}")));
    }
    Ok(())
}

/// `value` must be a finite number in `min..=max` (a NaN is in no range).
///
/// # Errors
/// [`ConfigError`] naming `field` otherwise.
pub fn finite_in(field: &'static str, value: f64, min: f64, max: f64) -> Result<(), ConfigError> {
    if !value.is_finite() || value < min || value > max {
        return Err(ConfigError::new(
            field,
            format!("must be a finite number in {min}..={max}"),
        ));
    }
    Ok(())
}

/// A non-negative finite number (a rate, a ratio).
///
/// # Errors
/// [`ConfigError`] naming `field` when it is negative, infinite or NaN.
pub fn non_negative(field: &'static str, value: f64) -> Result<(), ConfigError> {
    if !value.is_finite() || value < 0.0 {
        return Err(ConfigError::new(
            field,
            "must be a finite number of at least 0",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_check_names_the_field_and_says_why() {
        assert_eq!(at_least("n", 1usize, 1), Ok(()));
        let e = at_least("heartbeat", Duration::ZERO, Duration::from_millis(10))
            .expect_err("out of range");
        assert_eq!(e.field, "heartbeat");
        assert_eq!(e.to_string(), "heartbeat must be at least 10ms");

        assert_eq!(in_range("n", 5u32, 1, 5), Ok(()));
        assert_eq!(
            in_range("n", 0u32, 1, 5)
                .expect_err("out of range")
                .to_string(),
            "n must be in 1..=5"
        );
        assert!(in_range("n", 6u32, 1, 5).is_err());

        assert_eq!(at_least_field("a", 10usize, "b", 10), Ok(()));
        assert_eq!(
            at_least_field("a", 9usize, "b", 10)
                .expect_err("out of range")
                .to_string(),
            "a must be at least b"
        );

        assert_eq!(finite_in("p", 100.0, 0.0, 100.0), Ok(()));
        for bad in [f64::NAN, f64::INFINITY, -0.1, 100.1] {
            assert_eq!(
                finite_in("p", bad, 0.0, 100.0)
                    .expect_err("out of range")
                    .field,
                "p"
            );
        }

        assert_eq!(non_negative("r", 0.0), Ok(()));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0] {
            assert_eq!(non_negative("r", bad).expect_err("out of range").field, "r");
        }
    }
}
