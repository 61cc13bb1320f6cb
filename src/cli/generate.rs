//! `ordersync completions SHELL` and `ordersync man`: generated from the clap definition; no configuration
//! is read.

use std::io::Write;

use anyhow::Context;

use super::Cli;

/// The completion script for `shell`.
pub(super) fn completions(shell: clap_complete::Shell) -> anyhow::Result<i32> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "ordersync", &mut script);
    print_generated(&script, "the completion script")
}

/// The manual page, in roff.
pub(super) fn man() -> anyhow::Result<i32> {
    let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
    let mut roff = Vec::new();
    page.render(&mut roff).context("rendering the manual page")?;
    print_generated(&roff, "the manual page")
}

/// Write generated text to standard output; a reader that stops early (`| head`) is no failure.
fn print_generated(text: &[u8], what: &str) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(error).context(format!("writing {what}")))
        }
        _ => Ok(0),
    }
}
