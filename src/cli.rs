//! STUB
use std::path::PathBuf;
use crate::config::Config;
pub enum Command { Run(Box<Config>), CheckConfig(Box<Config>), Inspect(InspectArgs), Help(String), Version(String) }
pub struct InspectArgs { pub trace_directory: Option<PathBuf>, pub kafka_connection: Option<String>, pub kafka_topic: String, pub json: bool, pub from_offsets: Option<String>, pub kafka_property_file: Option<PathBuf>, pub quiet: bool }
#[derive(Debug, thiserror::Error)]
pub enum CliError { #[error("{0}")] Usage(String), #[error("bad value for {flag} ({value}): {reason}")] BadValue { flag: String, value: String, reason: String } }
impl CliError { pub fn exit_code(&self) -> i32 { match self { CliError::Usage(_) => 2, _ => 3 } } }
pub fn parse(_args: &[String], _env: &dyn Fn(&str) -> Option<String>) -> Result<Command, CliError> { todo!() }
pub fn render_effective(_cfg: &Config) -> String { todo!() }
