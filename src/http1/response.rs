//! STUB
use super::request::{FrameError, FramerLimits};
pub struct ExpectedResponse { pub id: u64, pub method_head: bool, pub method_connect: bool }
pub enum REvent { HeadComplete { id: Option<u64>, status: u16, interim: bool }, MessageComplete { id: Option<u64>, keep_alive: bool }, Upgraded { id: Option<u64> } }
pub struct RStep { pub consumed: usize, pub event: Option<REvent> }
pub struct ResponseFramer;
impl ResponseFramer {
    pub fn new(_l: FramerLimits) -> Self { ResponseFramer }
    pub fn expect(&mut self, _r: ExpectedResponse) {}
    pub fn advance(&mut self, _input: &[u8]) -> Result<RStep, FrameError> { todo!() }
    pub fn on_eof(&mut self) -> Option<REvent> { todo!() }
    pub fn outstanding(&self) -> usize { 0 }
}
