//! `#[derive(Record)]` for Strom.
use proc_macro::TokenStream;

/// Placeholder.
#[proc_macro_derive(Record, attributes(record))]
pub fn derive_record(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
