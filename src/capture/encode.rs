//! STUB
#[derive(Debug, Clone, Copy)]
pub struct Timestamp { pub secs: i64, pub nanos: u32 }
impl Timestamp { pub fn now() -> Self { Timestamp { secs: 0, nanos: 0 } } }
