//! The generated code names everything by absolute path, so it compiles in a
//! module without the prelude.
#[no_implicit_prelude]
mod records {
    #[derive(::stream_core::Record, ::serde::Serialize, ::serde::Deserialize)]
    #[record(namespace = "no.prelude", validate = self::check)]
    pub struct Bare {
        #[record(key, len(max = 3), regex = "^a", non_empty)]
        pub id: ::std::string::String,
        #[record(timestamp, range(min = 0, max = 9.5))]
        pub at: ::core::primitive::f64,
    }

    fn check(_: &Bare) -> ::core::result::Result<(), &'static ::core::primitive::str> {
        ::core::result::Result::Ok(())
    }
}

use stream_core::{Payload, Record};

fn main() {
    let bare = records::Bare { id: "abcd".into(), at: 1.0 };
    assert_eq!(bare.validate().unwrap_err().violations.len(), 1);
    assert_eq!(bare.key().as_deref(), Some("abcd"));
    assert_eq!(bare.event_time_ms(), Some(1_000));
    assert_eq!(records::Bare::NAMESPACE, "no.prelude");
}
