//! Raw identifiers, doc comments and attributes spread over several lines.
use serde::{Deserialize, Serialize};
use stream_core::{Payload, Record};

/// A record with a keyword as field name.
#[derive(Record, Serialize, Deserialize)]
#[record(namespace = "docs")]
#[record(version = 2)]
struct r#Docs {
    /// The kind of thing.
    ///
    /// Free text, but never empty.
    #[record(key)]
    #[record(non_empty)]
    r#type: String,
    /** A block doc comment. */
    #[record(len(max = 4))]
    r#match: Vec<u8>,
}

fn main() {
    let schema = Docs::schema();
    assert_eq!((schema.name, schema.namespace, schema.version), ("Docs", "docs", 2));
    assert_eq!(schema.fields[0].name, "type");
    assert_eq!(schema.fields[0].doc, "The kind of thing. Free text, but never empty.");
    assert_eq!(schema.fields[1].doc, "A block doc comment.");
    let docs = Docs { r#type: String::new(), r#match: vec![] };
    assert_eq!(docs.validate().unwrap_err().violations[0].field, "type");
}
