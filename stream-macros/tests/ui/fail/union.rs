use stream_core::Record;

#[derive(Record)]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
