//! STUB
use std::sync::Arc;
use super::encode::Timestamp;
#[derive(Debug)]
pub struct CaptureSettings { pub node_id: Arc<str>, pub max_record_bytes: usize }
#[derive(Debug, thiserror::Error)]
pub enum CaptureError { #[error("too small")] TooSmall }
impl CaptureSettings { pub fn new(node_id: Arc<str>, max_record_bytes: usize) -> Result<Self, CaptureError> { Ok(CaptureSettings { node_id, max_record_bytes }) } }
pub struct FinishedRecord { pub value: Vec<u8>, pub number: u32, pub is_final: bool }
pub trait RecordOut { fn take_buffer(&mut self) -> Vec<u8>; fn emit(&mut self, rec: FinishedRecord); }
pub struct StreamBuilder;
impl StreamBuilder {
    pub fn new(_c: Arc<str>, _s: Arc<CaptureSettings>) -> Self { StreamBuilder }
    pub fn read(&mut self, _ts: Timestamp, _d: &[u8], _o: &mut impl RecordOut) {}
    pub fn write(&mut self, _ts: Timestamp, _d: &[u8], _o: &mut impl RecordOut) {}
    pub fn end_of_message(&mut self, _ts: Timestamp, _a: u32, _b: u32, _o: &mut impl RecordOut) {}
    pub fn request_dropped(&mut self, _ts: Timestamp, _o: &mut impl RecordOut) {}
    pub fn connection_exception(&mut self, _ts: Timestamp, _m: &str, _o: &mut impl RecordOut) {}
    pub fn flush(&mut self, _o: &mut impl RecordOut) -> Option<u32> { None }
    pub fn close(&mut self, _ts: Timestamp, _o: &mut impl RecordOut) -> u32 { 1 }
    pub fn has_unflushed(&self) -> bool { false }
}
