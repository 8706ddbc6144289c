//! STUB (replaced by the real framer)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method { Get, Head, Post, Put, Delete, Patch, Options, Connect, Trace, Other }
impl Method { pub fn is_mutating(self) -> bool { matches!(self, Method::Post | Method::Put | Method::Delete | Method::Patch) } }
#[derive(Debug, Clone, Copy)]
pub struct FramerLimits { pub max_head_bytes: usize, pub max_chunk_line_bytes: usize, pub max_trailer_bytes: usize }
impl Default for FramerLimits { fn default() -> Self { FramerLimits { max_head_bytes: 65536, max_chunk_line_bytes: 4096, max_trailer_bytes: 65536 } } }
#[derive(Debug, thiserror::Error)]
pub enum FrameError { #[error("head too large")] HeadTooLarge, #[error("malformed: {0}")] Malformed(&'static str) }
pub struct RequestHead<'a> { pub method: Method, pub target: &'a [u8] }
pub enum Event<'a> { HeadComplete(RequestHead<'a>), MessageComplete { first_line_len: u32, headers_len: u32 }, Http2Preface }
pub struct Step<'a> { pub consumed: usize, pub event: Option<Event<'a>> }
pub struct RequestFramer;
impl RequestFramer {
    pub fn new(_l: FramerLimits) -> Self { RequestFramer }
    pub fn advance(&mut self, _input: &[u8]) -> Result<Step<'_>, FrameError> { todo!() }
    pub fn in_message(&self) -> bool { todo!() }
    pub fn is_idle(&self) -> bool { todo!() }
}
