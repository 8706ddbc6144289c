//! STUB
use std::path::Path;
#[derive(Debug, thiserror::Error)]
pub enum FileSinkError { #[error("io")] Io }
pub struct FileSink;
impl FileSink {
    pub fn open(_d: &Path, _n: &str, _m: u64) -> Result<Self, FileSinkError> { Ok(FileSink) }
    pub fn append(&mut self, _v: &[u8]) -> Result<(), FileSinkError> { Ok(()) }
    pub fn commit(&mut self) -> Result<(), FileSinkError> { Ok(()) }
    pub fn sync(&mut self) -> Result<(), FileSinkError> { Ok(()) }
}
