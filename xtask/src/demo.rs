use std::path::Path;
pub fn run(_bin: &Path) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}
