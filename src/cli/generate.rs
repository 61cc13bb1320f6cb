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

/// The manual page ordersync(1), in roff, on standard output; or, given `dir`, it and a page per command
/// (`ordersync-serve.1`, …: the main page's SUBCOMMANDS section points to them) written there, and listed.
pub(super) fn man(dir: Option<&std::path::Path>) -> anyhow::Result<i32> {
    let command = <Cli as clap::CommandFactory>::command();
    let Some(dir) = dir else {
        let mut roff = Vec::new();
        clap_mangen::Man::new(command).render(&mut roff).context("rendering the manual page")?;
        return print_generated(&roff, "the manual page");
    };
    if !dir.is_dir() {
        anyhow::bail!("--dir {}: no such directory (create it first, e.g. mkdir -p {0})", dir.display());
    }
    let pages: Vec<String> = std::iter::once("ordersync.1".to_string())
        .chain(
            command
                .get_subcommands()
                .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
                .map(|sub| format!("ordersync-{}.1", sub.get_name())),
        )
        .collect();
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("writing the manual pages into {}", dir.display()))?;
    let listed: String = pages.iter().map(|page| format!("{}\n", dir.join(page).display())).collect();
    print_generated(listed.as_bytes(), "the list of manual pages")
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
