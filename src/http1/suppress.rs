//! STUB
pub fn is_suppressed(_rules: &crate::config::SuppressConfig, _head: &super::request::RequestHead<'_>) -> bool { false }
