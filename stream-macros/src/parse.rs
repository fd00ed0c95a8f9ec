//! Attribute parsing: turns the derive input into a [`Model`].
//!
//! This module knows the syntax of `#[record(...)]` (and reads the few
//! `#[serde(...)]` attributes that change wire names). It reports every
//! syntax mistake into [`Errors`] and keeps going, so that the user sees all of
//! them at once. Rules that need the whole model (one key field, `min <= max`,
//! ...) are left to [`crate::check`].

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Attribute, Data, DeriveInput, Expr, ExprLit, ExprPath, Fields, Generics, Ident, Lit, LitInt, LitStr, Meta, Path,
    Token, Type, UnOp,
};

use crate::case::RenameRule;

/// The keys `#[record(...)]` accepts on a struct.
const CONTAINER_KEYS: &str = "`namespace`, `version`, `validate`, `crate`";

/// The keys `#[record(...)]` accepts on a field.
const FIELD_KEYS: &str = "`key`, `timestamp`, `range`, `min`, `max`, `len`, `non_empty`, `regex`, `validate`";

/// Collects every error of one derive, to report them all at once.
#[derive(Default)]
pub(crate) struct Errors {
    /// All errors so far, combined.
    combined: Option<syn::Error>,
    /// How many errors were pushed.
    count: usize,
}

impl Errors {
    /// Records one more error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        self.count += 1;
        match &mut self.combined {
            Some(combined) => combined.combine(error),
            None => self.combined = Some(error),
        }
    }

    /// How many errors were recorded so far.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// `Err` with every recorded error, `Ok` when there is none.
    pub(crate) fn finish(self) -> syn::Result<()> {
        match self.combined {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// A `#[derive(Record)]` struct, as far as the macro cares.
pub(crate) struct Model {
    /// The struct's name.
    pub(crate) ident: Ident,
    /// Its generics, passed through to the impls.
    pub(crate) generics: Generics,
    /// The struct-level `#[record(...)]` settings.
    pub(crate) container: Container,
    /// The fields, in declaration order.
    pub(crate) fields: Vec<Field>,
}

/// Struct-level settings.
#[derive(Default)]
pub(crate) struct Container {
    /// `namespace = "..."`.
    pub(crate) namespace: Option<LitStr>,
    /// `version = N`.
    pub(crate) version: Option<Version>,
    /// `validate = path`: a record-level custom rule.
    pub(crate) validate: Option<ExprPath>,
    /// `crate = "path"`: where stream-core is.
    pub(crate) krate: Option<Path>,
    /// serde's `rename_all`, for wire names.
    pub(crate) rename_all: Option<RenameRule>,
}

/// A parsed `version = N`.
pub(crate) struct Version {
    /// The value.
    pub(crate) value: u32,
    /// The literal, for error spans.
    pub(crate) lit: LitInt,
}

/// One field of the struct.
pub(crate) struct Field {
    /// The Rust name.
    pub(crate) ident: Ident,
    /// The type, as written.
    pub(crate) ty: Type,
    /// The name on the wire (after serde renames).
    pub(crate) wire_name: String,
    /// The `key` token when the field is marked `#[record(key)]`.
    pub(crate) key: Option<Path>,
    /// The `timestamp` token when the field is marked `#[record(timestamp)]`.
    pub(crate) timestamp: Option<Path>,
    /// The validation rules, in the order written.
    pub(crate) rules: Vec<Rule>,
    /// The doc comment, trimmed, lines joined with spaces.
    pub(crate) doc: String,
}

impl Field {
    /// The span of the field's type, where type errors about it belong.
    pub(crate) fn ty_span(&self) -> proc_macro2::Span {
        self.ty.span()
    }
}

/// One validation rule of a field.
pub(crate) struct Rule {
    /// What the rule checks.
    pub(crate) kind: RuleKind,
    /// The rule as written, for error spans.
    pub(crate) meta: Meta,
}

/// The validation rules a field can carry.
pub(crate) enum RuleKind {
    /// `range(min = .., max = ..)`, `min = ..` or `max = ..`.
    Range {
        /// How it was written.
        form: RangeForm,
        /// The lower bound.
        min: Option<Num>,
        /// The upper bound.
        max: Option<Num>,
    },
    /// `len(min = .., max = ..)`.
    Len {
        /// The shortest allowed length.
        min: Option<LenBound>,
        /// The longest allowed length.
        max: Option<LenBound>,
    },
    /// `non_empty`.
    NonEmpty,
    /// `regex = "..."`, already known to compile.
    Regex(LitStr),
    /// `validate = path`: a custom function.
    Validate(ExprPath),
}

/// How a range rule was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeForm {
    /// `range(...)`.
    Range,
    /// `min = ..`.
    Min,
    /// `max = ..`.
    Max,
}

/// A numeric bound of a range rule.
pub(crate) struct Num {
    /// Its value.
    pub(crate) value: NumValue,
    /// As written (`-90.0`).
    pub(crate) text: String,
    /// The tokens as written, for error spans.
    pub(crate) tokens: TokenStream,
}

/// The value of a [`Num`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum NumValue {
    /// An integer literal.
    Int(i128),
    /// A float literal (finite).
    Float(f64),
}

/// A bound of a `len` rule.
pub(crate) struct LenBound {
    /// Its value.
    pub(crate) value: usize,
    /// The literal, for error spans and as written.
    pub(crate) lit: LitInt,
}

/// Parses the derive input. Returns `None` when the input is not a struct with
/// named fields (the error is in `errors`).
pub(crate) fn parse(input: &DeriveInput, errors: &mut Errors) -> Option<Model> {
    let container = parse_container(&input.attrs, errors);
    let ident = &input.ident;
    let named = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => named,
            Fields::Unnamed(unnamed) => {
                errors.push(syn::Error::new_spanned(
                    unnamed,
                    format!(
                        "`#[derive(Record)]` needs named fields, but `{ident}` is a tuple struct: \
                         name its fields, e.g. `struct {ident} {{ id: u32 }}`"
                    ),
                ));
                return None;
            }
            Fields::Unit => {
                let semi = data.semi_token;
                errors.push(syn::Error::new_spanned(
                    quote!(#ident #semi),
                    format!("`#[derive(Record)]` needs named fields, but `{ident}` is a unit struct"),
                ));
                return None;
            }
        },
        Data::Enum(data) => {
            let enum_token = data.enum_token;
            errors.push(syn::Error::new_spanned(
                quote!(#enum_token #ident),
                format!("`#[derive(Record)]` only supports structs with named fields, but `{ident}` is an enum"),
            ));
            return None;
        }
        Data::Union(data) => {
            let union_token = data.union_token;
            errors.push(syn::Error::new_spanned(
                quote!(#union_token #ident),
                format!("`#[derive(Record)]` only supports structs with named fields, but `{ident}` is a union"),
            ));
            return None;
        }
    };
    let fields =
        named.named.iter().filter_map(|field| parse_field(field, container.rename_all, errors)).collect::<Vec<_>>();
    Some(Model { ident: ident.clone(), generics: input.generics.clone(), container, fields })
}

/// Parses the struct's `#[record(...)]` and `#[serde(rename_all)]` attributes.
fn parse_container(attrs: &[Attribute], errors: &mut Errors) -> Container {
    let mut container = Container {
        rename_all: serde_name(attrs, "rename_all").and_then(|name| RenameRule::from_name(&name)),
        ..Container::default()
    };
    for meta in record_args(attrs, errors) {
        let Some(key) = meta_key(&meta, errors) else { continue };
        match key.as_str() {
            "namespace" => {
                let Some(value) = expect_value(&meta, "namespace = \"sensors.reading\"", errors) else { continue };
                match lit_str(value) {
                    Some(lit) => set_once(&mut container.namespace, lit.clone(), &meta, errors),
                    None => errors.push(syn::Error::new_spanned(
                        value,
                        "`namespace` must be a string literal, e.g. `namespace = \"sensors.reading\"`",
                    )),
                }
            }
            "version" => {
                let Some(value) = expect_value(&meta, "version = 2", errors) else { continue };
                match parse_version(value) {
                    Ok(version) => set_once(&mut container.version, version, &meta, errors),
                    Err(error) => errors.push(error),
                }
            }
            "validate" => {
                let Some(value) = expect_value(&meta, "validate = path::to_fn", errors) else { continue };
                match fn_path(value) {
                    Ok(path) => set_once(&mut container.validate, path, &meta, errors),
                    Err(error) => errors.push(error),
                }
            }
            "crate" => {
                let Some(value) = expect_value(&meta, "crate = \"path::to::stream_core\"", errors) else {
                    continue;
                };
                let parsed = match lit_str(value) {
                    Some(lit) => lit.parse::<Path>().map_err(|_| {
                        syn::Error::new_spanned(lit, "`crate` must name a path, e.g. `crate = \"my_app::stream_core\"`")
                    }),
                    None => Err(syn::Error::new_spanned(
                        value,
                        "`crate` must be a string literal, e.g. `crate = \"my_app::stream_core\"`",
                    )),
                };
                match parsed {
                    Ok(path) => set_once(&mut container.krate, path, &meta, errors),
                    Err(error) => errors.push(error),
                }
            }
            "key" | "timestamp" | "range" | "min" | "max" | "len" | "non_empty" | "regex" => {
                errors.push(syn::Error::new_spanned(
                    meta.path(),
                    format!("`{key}` is a field attribute: put it on a field, not on the struct"),
                ));
            }
            _ => errors.push(syn::Error::new_spanned(
                meta.path(),
                format!("unknown struct attribute `{key}`; expected one of {CONTAINER_KEYS}"),
            )),
        }
    }
    container
}

/// Parses one field's attributes. `None` only for a field without a name,
/// which cannot happen in a struct with named fields.
fn parse_field(field: &syn::Field, rename_all: Option<RenameRule>, errors: &mut Errors) -> Option<Field> {
    let ident = field.ident.clone()?;
    let rust_name = ident.unraw().to_string();
    let wire_name = serde_name(&field.attrs, "rename")
        .unwrap_or_else(|| rename_all.map_or_else(|| rust_name.clone(), |rule| rule.apply_to_field(&rust_name)));
    let mut out = Field {
        ident,
        ty: field.ty.clone(),
        wire_name,
        key: None,
        timestamp: None,
        rules: Vec::new(),
        doc: doc_comment(&field.attrs),
    };
    for meta in record_args(&field.attrs, errors) {
        let Some(key) = meta_key(&meta, errors) else { continue };
        let kind = match key.as_str() {
            "key" => {
                if expect_flag(&meta, "key", errors) {
                    set_once(&mut out.key, meta.path().clone(), &meta, errors);
                }
                continue;
            }
            "timestamp" => {
                if expect_flag(&meta, "timestamp", errors) {
                    set_once(&mut out.timestamp, meta.path().clone(), &meta, errors);
                }
                continue;
            }
            "non_empty" => {
                if !expect_flag(&meta, "non_empty", errors) {
                    continue;
                }
                RuleKind::NonEmpty
            }
            "range" => {
                let Some(args) = expect_list(&meta, "range(min = 0, max = 100)", errors) else { continue };
                let Some((min, max)) = parse_range_args(&args, errors) else { continue };
                RuleKind::Range { form: RangeForm::Range, min, max }
            }
            "min" | "max" => {
                let example = if key == "min" { "min = 0" } else { "max = 100" };
                let Some(value) = expect_value(&meta, example, errors) else { continue };
                let num = match parse_num(&key, value) {
                    Ok(num) => num,
                    Err(error) => {
                        errors.push(error);
                        continue;
                    }
                };
                if key == "min" {
                    RuleKind::Range { form: RangeForm::Min, min: Some(num), max: None }
                } else {
                    RuleKind::Range { form: RangeForm::Max, min: None, max: Some(num) }
                }
            }
            "len" => {
                let Some(args) = expect_list(&meta, "len(min = 1, max = 64)", errors) else { continue };
                let Some((min, max)) = parse_len_args(&args, errors) else { continue };
                RuleKind::Len { min, max }
            }
            "regex" => {
                let Some(value) = expect_value(&meta, "regex = \"^[a-z]+$\"", errors) else { continue };
                let Some(lit) = lit_str(value) else {
                    errors.push(syn::Error::new_spanned(
                        value,
                        "`regex` must be a string literal, e.g. `regex = \"^[a-z]+$\"`",
                    ));
                    continue;
                };
                if let Err(error) = regex::Regex::new(&lit.value()) {
                    errors.push(syn::Error::new_spanned(lit, regex_error(&error)));
                    continue;
                }
                RuleKind::Regex(lit.clone())
            }
            "validate" => {
                let Some(value) = expect_value(&meta, "validate = path::to_fn", errors) else { continue };
                match fn_path(value) {
                    Ok(path) => RuleKind::Validate(path),
                    Err(error) => {
                        errors.push(error);
                        continue;
                    }
                }
            }
            "namespace" | "version" | "crate" => {
                errors.push(syn::Error::new_spanned(
                    meta.path(),
                    format!("`{key}` is a struct attribute: put it on the struct, not on a field"),
                ));
                continue;
            }
            _ => {
                errors.push(syn::Error::new_spanned(
                    meta.path(),
                    format!("unknown field attribute `{key}`; expected one of {FIELD_KEYS}"),
                ));
                continue;
            }
        };
        out.rules.push(Rule { kind, meta });
    }
    Some(out)
}

/// The arguments of every `#[record(...)]` attribute in `attrs`, in order.
fn record_args(attrs: &[Attribute], errors: &mut Errors) -> Vec<Meta> {
    let mut out = Vec::new();
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("record")) {
        match &attr.meta {
            Meta::List(list) => match list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
                Ok(args) => out.extend(args),
                Err(error) => errors.push(error),
            },
            Meta::Path(_) | Meta::NameValue(_) => errors.push(syn::Error::new_spanned(
                attr,
                "expected `#[record(...)]` with arguments, e.g. `#[record(key)]` or `#[record(namespace = \"a.b\")]`",
            )),
        }
    }
    out
}

/// The key of a `#[record(...)]` argument: a single identifier.
fn meta_key(meta: &Meta, errors: &mut Errors) -> Option<String> {
    match meta.path().get_ident() {
        Some(ident) => Some(ident.unraw().to_string()),
        None => {
            errors.push(syn::Error::new_spanned(meta.path(), "expected a single identifier as attribute key"));
            None
        }
    }
}

/// Stores `value` in `slot`, or reports a repeated attribute.
fn set_once<T>(slot: &mut Option<T>, value: T, meta: &Meta, errors: &mut Errors) {
    if slot.is_some() {
        let name = meta.path().get_ident().map(Ident::to_string).unwrap_or_default();
        errors.push(syn::Error::new_spanned(meta, format!("duplicate `{name}`: it may be given only once")));
    } else {
        *slot = Some(value);
    }
}

/// Accepts `key` alone; reports `key = ...` and `key(...)`.
fn expect_flag(meta: &Meta, name: &str, errors: &mut Errors) -> bool {
    match meta {
        Meta::Path(_) => true,
        Meta::List(_) | Meta::NameValue(_) => {
            errors.push(syn::Error::new_spanned(meta, format!("`{name}` takes no value: write `#[record({name})]`")));
            false
        }
    }
}

/// The value of `key = value`; reports the other forms.
fn expect_value<'m>(meta: &'m Meta, example: &str, errors: &mut Errors) -> Option<&'m Expr> {
    match meta {
        Meta::NameValue(nv) => Some(&nv.value),
        Meta::Path(_) | Meta::List(_) => {
            let name = meta.path().get_ident().map(Ident::to_string).unwrap_or_default();
            errors.push(syn::Error::new_spanned(meta, format!("`{name}` needs a value: write `{example}`")));
            None
        }
    }
}

/// The arguments of `key(a = .., b = ..)`; reports the other forms.
fn expect_list(meta: &Meta, example: &str, errors: &mut Errors) -> Option<Vec<Meta>> {
    let name = meta.path().get_ident().map(Ident::to_string).unwrap_or_default();
    match meta {
        Meta::List(list) => match list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
            Ok(args) => Some(args.into_iter().collect()),
            Err(error) => {
                errors.push(syn::Error::new(error.span(), format!("`{name}` takes named bounds: write `{example}`")));
                None
            }
        },
        Meta::Path(_) | Meta::NameValue(_) => {
            errors.push(syn::Error::new_spanned(meta, format!("`{name}` needs bounds: write `{example}`")));
            None
        }
    }
}

/// Parses `min = .., max = ..` of a `range(...)`. `None` when an argument was
/// wrong (already reported), so that no second error follows.
fn parse_range_args(args: &[Meta], errors: &mut Errors) -> Option<(Option<Num>, Option<Num>)> {
    parse_bounds(args, errors, ("range", "<number>", "0"), parse_num)
}

/// Parses `min = .., max = ..` of a `len(...)`, like [`parse_range_args`].
fn parse_len_args(args: &[Meta], errors: &mut Errors) -> Option<(Option<LenBound>, Option<LenBound>)> {
    parse_bounds(args, errors, ("len", "<length>", "8"), parse_len)
}

/// Parses the `min`/`max` arguments of a rule, each with `parse`. `rule` names
/// the rule, what a bound is, and an example bound, for the error messages.
fn parse_bounds<T>(
    args: &[Meta],
    errors: &mut Errors,
    (rule, what, example): (&str, &str, &str),
    parse: fn(&str, &Expr) -> syn::Result<T>,
) -> Option<(Option<T>, Option<T>)> {
    let before = errors.count();
    let (mut min, mut max) = (None, None);
    for arg in args {
        let Some(key) = meta_key(arg, errors) else { continue };
        let slot = match key.as_str() {
            "min" => &mut min,
            "max" => &mut max,
            _ => {
                errors.push(syn::Error::new_spanned(
                    arg.path(),
                    format!("unknown `{rule}` argument `{key}`: expected `min = {what}` and/or `max = {what}`"),
                ));
                continue;
            }
        };
        let Some(value) = expect_value(arg, &format!("{rule}({key} = {example})"), errors) else { continue };
        match parse(&key, value) {
            Ok(bound) => set_once(slot, bound, arg, errors),
            Err(error) => errors.push(error),
        }
    }
    (errors.count() == before).then_some((min, max))
}

/// Parses a numeric literal, possibly negated: `3`, `-90.0`, `1e3`.
fn parse_num(key: &str, expr: &Expr) -> syn::Result<Num> {
    let wrong = || {
        syn::Error::new_spanned(expr, format!("`{key}` must be a number literal, e.g. `{key} = 0` or `{key} = -90.5`"))
    };
    let (negative, lit) = match strip_groups(expr) {
        Expr::Lit(ExprLit { lit, .. }) => (false, lit),
        Expr::Unary(unary) if matches!(unary.op, UnOp::Neg(_)) => match strip_groups(&unary.expr) {
            Expr::Lit(ExprLit { lit, .. }) => (true, lit),
            _ => return Err(wrong()),
        },
        _ => return Err(wrong()),
    };
    let sign = if negative { "-" } else { "" };
    let text = format!("{sign}{}", quote!(#lit));
    let value = match lit {
        Lit::Int(int) => {
            let value = int
                .base10_parse::<i128>()
                .map_err(|_| syn::Error::new_spanned(expr, format!("`{key}` is too large: it must fit in an i128")))?;
            NumValue::Int(if negative { -value } else { value })
        }
        Lit::Float(float) => {
            let value = float.base10_parse::<f64>()?;
            if !value.is_finite() {
                return Err(syn::Error::new_spanned(expr, format!("`{key}` must be a finite number")));
            }
            NumValue::Float(if negative { -value } else { value })
        }
        _ => return Err(wrong()),
    };
    Ok(Num { value, text, tokens: expr.to_token_stream() })
}

/// Parses a length: a non-negative integer literal.
fn parse_len(key: &str, expr: &Expr) -> syn::Result<LenBound> {
    let negative =
        || syn::Error::new_spanned(expr, format!("`len({key} = ..)` must not be negative: a length is 0 or more"));
    match strip_groups(expr) {
        // syn reads a lone `-1` as one negative literal.
        Expr::Lit(ExprLit { lit: Lit::Int(lit), .. }) if lit.base10_digits().starts_with('-') => Err(negative()),
        Expr::Lit(ExprLit { lit: Lit::Int(lit), .. }) => {
            let value = lit.base10_parse::<usize>().map_err(|_| {
                syn::Error::new_spanned(lit, format!("`len({key} = ..)` is too large: it must fit in a usize"))
            })?;
            Ok(LenBound { value, lit: lit.clone() })
        }
        Expr::Unary(unary) if matches!(unary.op, UnOp::Neg(_)) => Err(negative()),
        _ => Err(syn::Error::new_spanned(
            expr,
            format!("`len({key} = ..)` must be a whole number of elements, e.g. `len({key} = 8)`"),
        )),
    }
}

/// Parses `version = N`.
fn parse_version(expr: &Expr) -> syn::Result<Version> {
    match strip_groups(expr) {
        Expr::Lit(ExprLit { lit: Lit::Int(lit), .. }) => {
            let value = lit.base10_parse::<u32>().map_err(|_| {
                syn::Error::new_spanned(lit, "`version` must be a whole number from 1 to 4294967295 (a u32)")
            })?;
            Ok(Version { value, lit: lit.clone() })
        }
        _ => Err(syn::Error::new_spanned(expr, "`version` must be an integer literal, e.g. `version = 2`")),
    }
}

/// The function path of `validate = path::to_fn`.
fn fn_path(expr: &Expr) -> syn::Result<ExprPath> {
    match strip_groups(expr) {
        Expr::Path(path) => Ok(path.clone()),
        Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => Err(syn::Error::new_spanned(
            lit,
            format!("`validate` takes a function path without quotes: write `validate = {}`", lit.value()),
        )),
        _ => Err(syn::Error::new_spanned(expr, "`validate` must be a function path, e.g. `validate = checks::id`")),
    }
}

/// A one-line message for a pattern that does not compile. The regex crate's
/// own message draws a caret under the pattern over several lines; keep its
/// last line, which says what is wrong.
fn regex_error(error: &regex::Error) -> String {
    let text = error.to_string();
    match text.lines().rev().find_map(|line| line.strip_prefix("error: ")) {
        Some(reason) => format!("invalid regex: {reason}"),
        None => format!("invalid regex: {}", text.lines().collect::<Vec<_>>().join(" ")),
    }
}

/// The string literal `expr` is, if it is one.
fn lit_str(expr: &Expr) -> Option<&LitStr> {
    match strip_groups(expr) {
        Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => Some(lit),
        _ => None,
    }
}

/// `expr` without the invisible groups `macro_rules!` wraps around `$e:expr`.
fn strip_groups(mut expr: &Expr) -> &Expr {
    while let Expr::Group(group) = expr {
        expr = &group.expr;
    }
    expr
}

/// The `///` doc comment of an item: lines trimmed, blank lines dropped,
/// joined with spaces.
fn doc_comment(attrs: &[Attribute]) -> String {
    let mut lines = Vec::new();
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("doc")) {
        if let Meta::NameValue(nv) = &attr.meta
            && let Some(lit) = lit_str(&nv.value)
        {
            lines.extend(lit.value().lines().map(str::trim).filter(|line| !line.is_empty()).map(str::to_owned));
        }
    }
    lines.join(" ")
}

/// The value of `#[serde(key = "...")]` (or, for `key(serialize = "..",
/// deserialize = "..")`, the deserialize name, else the serialize name).
/// Malformed serde attributes are ignored here: serde reports them.
fn serde_name(attrs: &[Attribute], key: &str) -> Option<String> {
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("serde")) {
        let Ok(args) = attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) else { continue };
        for meta in args.iter().filter(|meta| meta.path().is_ident(key)) {
            match meta {
                Meta::NameValue(nv) => {
                    if let Some(lit) = lit_str(&nv.value) {
                        return Some(lit.value());
                    }
                }
                Meta::List(list) => {
                    let Ok(inner) = list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) else {
                        continue;
                    };
                    let named = |side: &str| {
                        inner.iter().find_map(|meta| match meta {
                            Meta::NameValue(nv) if nv.path.is_ident(side) => lit_str(&nv.value).map(LitStr::value),
                            _ => None,
                        })
                    };
                    if let Some(name) = named("deserialize").or_else(|| named("serialize")) {
                        return Some(name);
                    }
                }
                Meta::Path(_) => {}
            }
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    fn model(input: &DeriveInput) -> (Option<Model>, syn::Result<()>) {
        let mut errors = Errors::default();
        let model = parse(input, &mut errors);
        (model, errors.finish())
    }

    #[test]
    fn parses_rules_and_names() {
        let input: DeriveInput = syn::parse_quote! {
            #[serde(rename_all = "camelCase")]
            #[record(namespace = "a.b", version = 3)]
            struct R {
                /// The id.
                ///
                /// Unique.
                #[record(key, regex = "^[a-z]+$")]
                sensor_id: String,
                #[serde(rename = "t")]
                #[record(timestamp, min = -5, max = 9.5)]
                ts: f64,
                #[record(range(max = 3), len(min = 1))]
                r#type: u8,
            }
        };
        let (model, result) = model(&input);
        result.unwrap();
        let model = model.unwrap();
        assert_eq!(model.container.namespace.unwrap().value(), "a.b");
        assert_eq!(model.container.version.unwrap().value, 3);
        let names: Vec<_> = model.fields.iter().map(|f| f.wire_name.as_str()).collect();
        assert_eq!(names, ["sensorId", "t", "type"]);
        assert_eq!(model.fields[0].doc, "The id. Unique.");
        assert!(model.fields[0].key.is_some());
        assert!(model.fields[1].timestamp.is_some());
        match &model.fields[1].rules[0].kind {
            RuleKind::Range { form: RangeForm::Min, min: Some(num), max: None } => {
                assert_eq!(num.value, NumValue::Int(-5));
                assert_eq!(num.text, "-5");
            }
            _ => panic!("expected min"),
        }
        assert_eq!(model.fields[2].rules.len(), 2);
    }

    #[test]
    fn collects_all_errors() {
        let input: DeriveInput = syn::parse_quote! {
            #[record(namespace = 1, bogus, namespace = "x", namespace = "y")]
            struct R {
                #[record(key = 1, range(min = "a"), len(min = -1), regex = "(", what)]
                a: String,
            }
        };
        let mut errors = Errors::default();
        let _ = parse(&input, &mut errors);
        assert_eq!(errors.count(), 8);
    }
}
