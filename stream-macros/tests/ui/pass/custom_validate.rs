//! Custom rules: on fields and on the record, by plain or module path, with
//! any `Display` error.
use std::fmt;

use serde::{Deserialize, Serialize};
use stream_core::{Payload, Record};

mod rules {
    pub fn not_admin(name: &str) -> Result<(), String> {
        if name == "admin" { Err("reserved name".to_owned()) } else { Ok(()) }
    }

    pub fn small<T: Into<f64> + Copy>(value: &T) -> Result<(), &'static str> {
        if (*value).into() < 10.0 { Ok(()) } else { Err("too big") }
    }
}

#[derive(Debug)]
struct Odd(u32);

impl fmt::Display for Odd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is odd", self.0)
    }
}

fn even(value: &u32) -> Result<(), Odd> {
    if value % 2 == 0 { Ok(()) } else { Err(Odd(*value)) }
}

fn consistent(user: &User) -> Result<(), String> {
    if user.logins >= user.failed { Ok(()) } else { Err("more failures than logins".to_owned()) }
}

#[derive(Record, Serialize, Deserialize)]
#[record(validate = consistent)]
struct User {
    #[record(validate = rules::not_admin)]
    name: String,
    #[record(validate = even, validate = rules::small::<u32>)]
    logins: u32,
    #[record(validate = self::rules::small)]
    failed: u32,
}

fn main() {
    let user = User { name: "admin".into(), logins: 13, failed: 20 };
    let err = user.validate().unwrap_err();
    let got: Vec<_> = err.violations.iter().map(|v| format!("{}: {}", v.field, v.message)).collect();
    assert_eq!(
        got,
        [
            "name: reserved name",
            "logins: 13 is odd",
            "logins: too big",
            "failed: too big",
            "*: more failures than logins"
        ]
    );
    let rules = User::schema().fields[1].rules;
    assert_eq!(rules, ["validate = even", "validate = rules::small::<u32>"]);
}
