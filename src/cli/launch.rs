//! `selfsup launch`: N local ranks of a `pretrain` command.

use super::{Cli, Command};
use anyhow::{Context, Result, bail};
use clap::Parser;

pub fn command(
    cli: &Cli,
    nproc_per_node: usize,
    master_port: Option<u16>,
    command: &[String],
) -> Result<()> {
    let args = launch_args(cli, command)?;
    let program = std::env::current_exe().context("the path of this selfsup binary")?;
    crate::launch::run(&program, &args, nproc_per_node, master_port)
}

/// The forwarded arguments of `launch`, checked: a `pretrain` command.
fn launch_args(cli: &Cli, command: &[String]) -> Result<Vec<String>> {
    // The global options given to launch itself (--device's default, auto, goes without
    // saying), so that the command after `--` may carry its own.
    let mut args = Vec::new();
    if cli.device != "auto" {
        args.extend(["--device".to_string(), cli.device.clone()]);
    }
    if let Some(n) = cli.threads {
        args.extend(["--threads".to_string(), n.to_string()]);
    }
    args.extend(command.iter().cloned());
    let parsed = Cli::try_parse_from(std::iter::once("selfsup".to_string()).chain(args.clone()));
    match parsed.map(|c| c.command) {
        Ok(Command::Pretrain(_)) => Ok(args),
        Ok(_) => bail!(
            "launch runs `selfsup pretrain` on every rank: selfsup launch --nproc-per-node N -- pretrain ..."
        ),
        Err(e) => bail!("the command after `--`: {e}"),
    }
}
