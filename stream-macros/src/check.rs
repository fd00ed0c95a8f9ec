//! Semantic checks on a parsed [`Model`]: the mistakes that are well-formed
//! syntax but make no sense (two key fields, `version = 0`, `min > max`, ...).
//!
//! Type mistakes (a `range` on a `String`, a `String` timestamp) are not found
//! here: the expansion leaves them to the compiler, which reports them at the
//! field's type through the helper traits' `on_unimplemented` messages.

use crate::parse::{Errors, Field, LenBound, Model, Num, NumValue, RangeForm, RuleKind};

/// Runs every check, reporting into `errors`.
pub(crate) fn check(model: &Model, errors: &mut Errors) {
    check_container(model, errors);
    check_roles(&model.fields, errors);
    for field in &model.fields {
        check_rules(field, errors);
    }
}

/// `namespace` not empty, `version` at least 1.
fn check_container(model: &Model, errors: &mut Errors) {
    if let Some(namespace) = &model.container.namespace
        && namespace.value().trim().is_empty()
    {
        errors.push(syn::Error::new_spanned(
            namespace,
            format!("`namespace` must not be empty; leave it out to use the type name `{}`", model.ident),
        ));
    }
    if let Some(version) = &model.container.version
        && version.value == 0
    {
        errors.push(syn::Error::new_spanned(&version.lit, "`version` starts at 1: write `version = 1` or more"));
    }
}

/// At most one key field and at most one timestamp field.
fn check_roles(fields: &[Field], errors: &mut Errors) {
    let mut key: Option<&Field> = None;
    let mut timestamp: Option<&Field> = None;
    for field in fields {
        if let Some(token) = &field.key {
            match key {
                Some(first) => errors.push(syn::Error::new_spanned(
                    token,
                    format!(
                        "duplicate key field: `{}` is already `#[record(key)]`; a record has at most one key field",
                        first.ident
                    ),
                )),
                None => key = Some(field),
            }
        }
        if let Some(token) = &field.timestamp {
            match timestamp {
                Some(first) => errors.push(syn::Error::new_spanned(
                    token,
                    format!(
                        "duplicate timestamp field: `{}` is already `#[record(timestamp)]`; \
                         a record has at most one event time",
                        first.ident
                    ),
                )),
                None => timestamp = Some(field),
            }
        }
    }
}

/// Every rule of a field can be satisfied by some value.
fn check_rules(field: &Field, errors: &mut Errors) {
    let mut lone_min: Option<&Num> = None;
    let mut lone_max: Option<&Num> = None;
    for rule in &field.rules {
        match &rule.kind {
            RuleKind::Range { form, min, max } => {
                match form {
                    RangeForm::Min => lone_min = min.as_ref().or(lone_min),
                    RangeForm::Max => lone_max = max.as_ref().or(lone_max),
                    RangeForm::Range => {}
                }
                match (min, max) {
                    (None, None) => errors.push(syn::Error::new_spanned(
                        &rule.meta,
                        "`range()` needs a bound: write `range(min = ..)`, `range(max = ..)` or both",
                    )),
                    (Some(min), Some(max)) if greater(min.value, max.value) => {
                        errors.push(syn::Error::new_spanned(
                            &rule.meta,
                            format!("empty range: min ({}) is greater than max ({})", min.text, max.text),
                        ));
                    }
                    _ => {}
                }
            }
            RuleKind::Len { min, max } => match (min, max) {
                (None, None) => errors.push(syn::Error::new_spanned(
                    &rule.meta,
                    "`len()` needs a bound: write `len(min = ..)`, `len(max = ..)` or both",
                )),
                (Some(LenBound { value: lo, lit: lo_lit }), Some(LenBound { value: hi, lit: hi_lit })) if lo > hi => {
                    errors.push(syn::Error::new_spanned(
                        &rule.meta,
                        format!("empty length range: min ({lo_lit}) is greater than max ({hi_lit})"),
                    ));
                }
                _ => {}
            },
            RuleKind::NonEmpty | RuleKind::Regex(_) | RuleKind::Validate(_) => {}
        }
    }
    if let (Some(min), Some(max)) = (lone_min, lone_max)
        && greater(min.value, max.value)
    {
        errors.push(syn::Error::new_spanned(
            &max.tokens,
            format!("empty range: `min = {}` is greater than `max = {}`", min.text, max.text),
        ));
    }
}

/// Whether `a > b`, comparing integers exactly and anything else as `f64`.
fn greater(a: NumValue, b: NumValue) -> bool {
    match (a, b) {
        (NumValue::Int(a), NumValue::Int(b)) => a > b,
        (a, b) => as_f64(a) > as_f64(b),
    }
}

/// The value as a float.
#[expect(clippy::cast_precision_loss, reason = "bounds are compared approximately when one is a float")]
fn as_f64(value: NumValue) -> f64 {
    match value {
        NumValue::Int(i) => i as f64,
        NumValue::Float(f) => f,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;
    use crate::parse::parse;

    fn errors_of(input: &syn::DeriveInput) -> Vec<String> {
        let mut errors = Errors::default();
        let model = parse(input, &mut errors).unwrap();
        check(&model, &mut errors);
        match errors.finish() {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn reports_every_semantic_mistake() {
        let found = errors_of(&syn::parse_quote! {
            #[record(version = 0, namespace = "")]
            struct R {
                #[record(key, timestamp, range(min = 2, max = 1.5))]
                a: f64,
                #[record(key, timestamp, len(min = 3, max = 2), range())]
                b: String,
                #[record(min = 10, max = 9)]
                c: i32,
            }
        });
        assert_eq!(found.len(), 8, "{found:#?}");
        assert!(found.iter().any(|e| e.contains("min (2) is greater than max (1.5)")), "{found:#?}");
        assert!(found.iter().any(|e| e.contains("`min = 10` is greater than `max = 9`")), "{found:#?}");
    }

    #[test]
    fn accepts_equal_and_open_bounds() {
        let found = errors_of(&syn::parse_quote! {
            struct R {
                #[record(range(min = -1, max = -1), len(max = 0), min = 1.0, max = 1)]
                a: f64,
            }
        });
        assert!(found.is_empty(), "{found:#?}");
    }
}
