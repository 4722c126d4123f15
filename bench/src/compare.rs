//! placeholder, replaced below
#[derive(clap::Args, Debug)]
pub struct CompareArgs {}
pub(crate) fn run(_a: CompareArgs) -> Result<(), String> {
    Err("not yet".into())
}
