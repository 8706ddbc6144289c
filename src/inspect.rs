//! STUB
pub fn run(_a: &crate::cli::InspectArgs, _o: &mut dyn std::io::Write) -> anyhow::Result<bool> { todo!() }
