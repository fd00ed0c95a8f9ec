//! Code generation: a checked [`Model`] becomes the `Payload` and `Record`
//! impls, wrapped in `const _: () = { ... };`.
//!
//! The generated code names stream-core only through
//! `<crate>::record::__private` (`::stream_core` unless `#[record(crate = "...")]`
//! says otherwise), plus `::core` and `::std`. Calls whose trait bounds depend
//! on a field's type carry that type's span, so that a rule applied to the
//! wrong type is reported at the field with the helper trait's message.

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;

use crate::parse::{Field, Model, Num, NumValue, RangeForm, Rule, RuleKind};

/// The impls for `model`.
pub(crate) fn expand(model: &Model) -> TokenStream {
    let krate = model.container.krate.as_ref().map_or_else(|| quote!(::stream_core), ToTokens::to_token_stream);
    let private = quote!(#krate::record::__private);
    let ident = &model.ident;
    let (impl_generics, ty_generics, where_clause) = model.generics.split_for_impl();

    let name = ident.unraw().to_string();
    let namespace = model.container.namespace.as_ref().map_or_else(|| name.clone(), syn::LitStr::value);
    let version = model.container.version.as_ref().map_or(1, |version| version.value);

    let validate = validate_body(model, &private, &name);
    let event_time = event_time_body(model, &private);
    let (key_ty, key_body) = key(model);
    let schema = schema(model, &private, &name, &namespace, version);

    quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #private::Payload for #ident #ty_generics #where_clause {
                type Codec = #private::Json;

                fn validate(&self) -> ::core::result::Result<(), #private::ValidationError> {
                    #validate
                }

                fn event_time_ms(&self) -> ::core::option::Option<::core::primitive::i64> {
                    #event_time
                }
            }

            #[automatically_derived]
            impl #impl_generics #private::Record for #ident #ty_generics #where_clause {
                type Key = #key_ty;
                const NAMESPACE: &'static ::core::primitive::str = #namespace;
                const VERSION: ::core::primitive::u32 = #version;

                fn key(&self) -> ::core::option::Option<Self::Key> {
                    #key_body
                }

                fn schema() -> &'static #private::Schema {
                    #schema
                }
            }
        };
    }
}

/// The body of `Payload::validate`: every rule in field order, then the
/// record-level rule, then `finish`.
fn validate_body(model: &Model, private: &TokenStream, name: &str) -> TokenStream {
    let checks = model
        .fields
        .iter()
        .flat_map(|field| field.rules.iter().map(move |rule| rule_check(field, rule, private)))
        .collect::<Vec<_>>();
    let record_check = model.container.validate.as_ref().map(|path| custom_check(path, &quote!(self), "*", private));
    if checks.is_empty() && record_check.is_none() {
        return quote!(::core::result::Result::Ok(()));
    }
    quote! {
        let mut __violations = ::std::vec::Vec::new();
        #(#checks)*
        #record_check
        #private::finish(#name, __violations)
    }
}

/// The check of one rule on one field.
fn rule_check(field: &Field, rule: &Rule, private: &TokenStream) -> TokenStream {
    let Field { ident, ty, wire_name, .. } = field;
    // The helper's path carries the type's span, so that an unsatisfied
    // `RangeCheck`/`HasLen`/`AsText` bound is reported at the field's type.
    let helper = |name: &str| {
        let name = syn::Ident::new(name, proc_macro2::Span::call_site());
        quote_spanned!(field.ty_span()=> #private::#name::<#ty>)
    };
    match &rule.kind {
        RuleKind::Range { min, max, .. } => {
            let check = helper("check_range");
            let (min, max) = (num_bound(min.as_ref(), private), num_bound(max.as_ref(), private));
            let text = rule_text(&rule.kind);
            quote! { #check(&mut __violations, #wire_name, &self.#ident, #min, #max, #text); }
        }
        RuleKind::Len { min, max } => {
            let check = helper("check_len");
            let len = |bound: Option<usize>| match bound {
                Some(value) => quote!(::core::option::Option::Some(#value)),
                None => quote!(::core::option::Option::None),
            };
            let (min, max) = (len(min.as_ref().map(|b| b.value)), len(max.as_ref().map(|b| b.value)));
            quote! { #check(&mut __violations, #wire_name, &self.#ident, #min, #max); }
        }
        RuleKind::NonEmpty => {
            let check = helper("check_non_empty");
            quote! { #check(&mut __violations, #wire_name, &self.#ident); }
        }
        RuleKind::Regex(pattern) => {
            let check = helper("check_regex");
            quote! {
                {
                    static __RE: ::std::sync::OnceLock<#private::Regex> = ::std::sync::OnceLock::new();
                    #check(&mut __violations, #wire_name, &self.#ident, &__RE, #pattern);
                }
            }
        }
        RuleKind::Validate(path) => custom_check(path, &quote!(&self.#ident), wire_name, private),
    }
}

/// The call of a custom rule `path` on `value` (`self` or `&self.field`).
///
/// The call carries the span of the function's path, so that an error type
/// that is not `Display` is reported there (a function taking the wrong type is
/// reported at the derive, labelled at the path). `value` and the violations
/// vector keep their call-site spans: hygiene would hide `self` and locals from
/// tokens spanned inside a `macro_rules!` macro.
fn custom_check(path: &syn::ExprPath, value: &TokenStream, field: &str, private: &TokenStream) -> TokenStream {
    let span = path.span();
    let check = quote_spanned!(span=> #private::check_custom);
    let call = quote_spanned!(span=> #path(#value));
    quote! { #check(&mut __violations, #field, #call); }
}

/// `Some(Bound::Int(..))`, `Some(Bound::Float(..))` or `None`.
fn num_bound(num: Option<&Num>, private: &TokenStream) -> TokenStream {
    match num.map(|num| num.value) {
        Some(NumValue::Int(value)) => quote!(::core::option::Option::Some(#private::Bound::Int(#value))),
        Some(NumValue::Float(value)) => quote!(::core::option::Option::Some(#private::Bound::Float(#value))),
        None => quote!(::core::option::Option::None),
    }
}

/// The body of `Payload::event_time_ms`.
fn event_time_body(model: &Model, private: &TokenStream) -> TokenStream {
    let Some(field) = model.fields.iter().find(|field| field.timestamp.is_some()) else {
        return quote!(::core::option::Option::None);
    };
    let Field { ident, ty, .. } = field;
    // Spanned at the type: a type that is no time gets `EventTime`'s message there.
    let call = quote_spanned!(field.ty_span()=> <#ty as #private::EventTime>::epoch_ms);
    quote!(#call(&self.#ident))
}

/// `type Key` and the body of `Record::key`.
fn key(model: &Model) -> (TokenStream, TokenStream) {
    match model.fields.iter().find(|field| field.key.is_some()) {
        Some(field) => {
            let Field { ident, ty, .. } = field;
            let clone = quote_spanned!(field.ty_span()=> <#ty as ::core::clone::Clone>::clone);
            (ty.to_token_stream(), quote!(::core::option::Option::Some(#clone(&self.#ident))))
        }
        None => (quote!(()), quote!(::core::option::Option::None)),
    }
}

/// The body of `Record::schema`: a `static` schema and a reference to it.
fn schema(model: &Model, private: &TokenStream, name: &str, namespace: &str, version: u32) -> TokenStream {
    let fields = model.fields.iter().map(|field| {
        let wire_name = &field.wire_name;
        let ty = tokens_to_string(field.ty.to_token_stream());
        let key = field.key.is_some();
        let timestamp = field.timestamp.is_some();
        let rules = field.rules.iter().map(|rule| rule_text(&rule.kind));
        let doc = &field.doc;
        quote! {
            #private::FieldSchema {
                name: #wire_name,
                ty: #ty,
                key: #key,
                timestamp: #timestamp,
                rules: &[#(#rules),*],
                doc: #doc,
            }
        }
    });
    quote! {
        static SCHEMA: #private::Schema = #private::Schema {
            name: #name,
            namespace: #namespace,
            version: #version,
            fields: &[#(#fields),*],
        };
        &SCHEMA
    }
}

/// A rule written back as source: `range(min = -90.0, max = 60.0)`,
/// `len(max = 64)`, `non_empty`, `regex = "^[a-z]+$"`, `validate = check_id`.
pub(crate) fn rule_text(kind: &RuleKind) -> String {
    let pair = |min: Option<String>, max: Option<String>| {
        let parts = [min.map(|min| format!("min = {min}")), max.map(|max| format!("max = {max}"))];
        parts.into_iter().flatten().collect::<Vec<_>>().join(", ")
    };
    match kind {
        RuleKind::Range { form: RangeForm::Range, min, max } => {
            format!("range({})", pair(min.as_ref().map(|n| n.text.clone()), max.as_ref().map(|n| n.text.clone())))
        }
        RuleKind::Range { form: RangeForm::Min | RangeForm::Max, min, max } => {
            pair(min.as_ref().map(|n| n.text.clone()), max.as_ref().map(|n| n.text.clone()))
        }
        RuleKind::Len { min, max } => {
            format!("len({})", pair(min.as_ref().map(|b| b.lit.to_string()), max.as_ref().map(|b| b.lit.to_string())))
        }
        RuleKind::NonEmpty => "non_empty".to_owned(),
        RuleKind::Regex(pattern) => format!("regex = {}", pattern.to_token_stream()),
        RuleKind::Validate(path) => format!("validate = {}", tokens_to_string(path.to_token_stream())),
    }
}

/// One unit of [`tokens_to_string`]'s output.
#[derive(Debug, PartialEq)]
enum Atom {
    /// An identifier, literal or lifetime.
    Word(String),
    /// An operator: one punctuation character, `::` or `->`.
    Op(String),
    /// An opening delimiter.
    Open(char),
    /// A closing delimiter.
    Close(char),
}

/// Types and paths as a person writes them: `Option<Vec<u8>>`,
/// `&'static str`, `[u8; 4]`, `fn(u8) -> bool`, `std::time::SystemTime`
/// (where `to_string` gives `Option < Vec < u8 > >`).
pub(crate) fn tokens_to_string(tokens: TokenStream) -> String {
    let mut atoms = Vec::new();
    flatten(tokens, &mut atoms);
    let mut out = String::new();
    let mut prev: Option<&Atom> = None;
    for atom in &atoms {
        if prev.is_some_and(|prev| space_between(prev, atom)) {
            out.push(' ');
        }
        match atom {
            Atom::Word(text) | Atom::Op(text) => out.push_str(text),
            Atom::Open(c) | Atom::Close(c) => out.push(*c),
        }
        prev = Some(atom);
    }
    out
}

/// Appends the atoms of `tokens` to `out`.
fn flatten(tokens: TokenStream, out: &mut Vec<Atom>) {
    let mut iter = tokens.into_iter().peekable();
    while let Some(tree) = iter.next() {
        match tree {
            TokenTree::Ident(ident) => out.push(Atom::Word(ident.to_string())),
            TokenTree::Literal(lit) => out.push(Atom::Word(lit.to_string())),
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ('(', ')'),
                    Delimiter::Bracket => ('[', ']'),
                    Delimiter::Brace => ('{', '}'),
                    Delimiter::None => {
                        flatten(group.stream(), out);
                        continue;
                    }
                };
                out.push(Atom::Open(open));
                flatten(group.stream(), out);
                out.push(Atom::Close(close));
            }
            TokenTree::Punct(punct) => {
                let first = punct.as_char();
                let mut text = first.to_string();
                if punct.spacing() == Spacing::Joint {
                    match iter.peek() {
                        Some(TokenTree::Ident(ident)) if first == '\'' => {
                            text.push_str(&ident.to_string());
                            iter.next();
                            out.push(Atom::Word(text));
                            continue;
                        }
                        Some(TokenTree::Punct(next))
                            if (first, next.as_char()) == (':', ':') || (first, next.as_char()) == ('-', '>') =>
                        {
                            text.push(next.as_char());
                            iter.next();
                        }
                        _ => {}
                    }
                }
                out.push(Atom::Op(text));
            }
        }
    }
}

/// Whether a space goes between two atoms.
fn space_between(prev: &Atom, next: &Atom) -> bool {
    match (prev, next) {
        (Atom::Open(_), _) | (_, Atom::Close(_)) => false,
        (_, Atom::Op(op)) if op == "," || op == ";" => false,
        (Atom::Op(op), _) if op == "," || op == ";" => true,
        (Atom::Op(op), _) | (_, Atom::Op(op)) if op == "::" => false,
        (Atom::Op(op), _) if matches!(op.as_str(), "<" | "&" | "'" | "!" | "?" | "#") => false,
        (Atom::Op(op), Atom::Word(word)) if op == "*" && (word == "const" || word == "mut") => false,
        (_, Atom::Op(op)) if op == ">" => false,
        (Atom::Word(_), Atom::Op(op)) if op == "<" || op == "!" => false,
        // `Fn(u8)`, `fn(u8)`, but `&mut (u8, u8)` and `&'a (u8, u8)`.
        (Atom::Word(word), Atom::Open('(')) => {
            word.starts_with('\'') || matches!(word.as_str(), "mut" | "const" | "dyn" | "impl" | "as")
        }
        _ => true,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::tokens_to_string;

    fn ty(tokens: proc_macro2::TokenStream) -> String {
        let ty: syn::Type = syn::parse2(tokens).unwrap();
        tokens_to_string(quote::ToTokens::to_token_stream(&ty))
    }

    #[test]
    fn prints_types_like_rustfmt() {
        let cases = [
            (quote::quote!(Option<String>), "Option<String>"),
            (quote::quote!(Option<Vec<u8>>), "Option<Vec<u8>>"),
            (quote::quote!(HashMap<String, Vec<(u8, i64)>>), "HashMap<String, Vec<(u8, i64)>>"),
            (quote::quote!(::std::time::SystemTime), "::std::time::SystemTime"),
            (quote::quote!(chrono::DateTime<chrono::Utc>), "chrono::DateTime<chrono::Utc>"),
            (quote::quote!(&'static str), "&'static str"),
            (quote::quote!(&'a mut [u8]), "&'a mut [u8]"),
            (quote::quote!([u8; 4]), "[u8; 4]"),
            (quote::quote!(()), "()"),
            (quote::quote!(*const u8), "*const u8"),
            (quote::quote!(fn(u8) -> bool), "fn(u8) -> bool"),
            (quote::quote!(Box<dyn Fn(u8) -> u8 + Send + 'static>), "Box<dyn Fn(u8) -> u8 + Send + 'static>"),
            (quote::quote!(<T as Iterator>::Item), "<T as Iterator>::Item"),
            (quote::quote!(Box<dyn Iterator<Item = u8>>), "Box<dyn Iterator<Item = u8>>"),
            (quote::quote!(Vec::<u8>), "Vec::<u8>"),
            (quote::quote!(my_type!(u8)), "my_type!(u8)"),
            (quote::quote!(&mut (u8, u8)), "&mut (u8, u8)"),
            (quote::quote!(for<'a> fn(&'a u8)), "for<'a> fn(&'a u8)"),
        ];
        for (tokens, want) in cases {
            assert_eq!(ty(tokens), want);
        }
    }
}
