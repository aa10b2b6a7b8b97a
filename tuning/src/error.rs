//! The one error type of the crate: a parameter out of its domain, named
//! by its field or argument name so that a CLI can print it as given.

/// A parameter out of its domain. `param` is the argument or field name
/// (`mu_per_s`, `layers`, ...), `value` what was given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("parameter `{param}` {requirement}, got {value}")]
pub struct ParamError {
    /// The parameter's name as it appears in the API.
    pub param: &'static str,
    /// The value given, as text.
    pub value: String,
    /// What the value must be ("must be positive and finite", ...).
    pub requirement: &'static str,
}

impl ParamError {
    /// The error for `param` = `value` failing `requirement`.
    pub fn new(param: &'static str, value: impl ToString, requirement: &'static str) -> Self {
        Self {
            param,
            value: value.to_string(),
            requirement,
        }
    }
}

/// `Ok(x)` when `x` is finite and strictly positive, else an error naming
/// `param` (zero, negative, NaN and infinite rates all land here).
pub fn positive(param: &'static str, x: f64) -> Result<f64, ParamError> {
    if x.is_finite() && x > 0.0 {
        Ok(x)
    } else {
        Err(ParamError::new(param, x, "must be positive and finite"))
    }
}

/// `Ok(x)` when `x` is finite and at least zero, else an error naming
/// `param`.
pub fn non_negative(param: &'static str, x: f64) -> Result<f64, ParamError> {
    if x.is_finite() && x >= 0.0 {
        Ok(x)
    } else {
        Err(ParamError::new(
            param,
            x,
            "must be zero or positive and finite",
        ))
    }
}
