//! The one place where a command's config is assembled: defaults, then a `--config` file,
//! then `--data` and `--set` overrides (or, for a resumed run, the config its checkpoint
//! carries, then `--set`), checked; and `selfsup config`, which prints it.

use super::ConfigArgs;
use crate::config::Config;
use crate::methods;
use crate::run::{RunDir, checkpoint};
use anyhow::{Context, Result, bail};
use std::path::Path;

/// The config of a command without a run: defaults, `--config`, `--data` and `--set`.
pub fn plain(args: &ConfigArgs) -> Result<Config> {
    let (cfg, _) = Config::assemble(Config::default(), args.config.as_deref(), &args.overrides())?;
    cfg.validate()?;
    Ok(cfg)
}

/// The config of a command that runs a method without a run folder (`bench-step`): `file`
/// (or the defaults), then the overrides of `args`, checked for its method; prints a
/// warning for each key the method does not read.
pub fn of_method(file: Option<&Path>, args: &ConfigArgs) -> Result<Config> {
    let (cfg, given) = Config::assemble(Config::default(), file, &args.overrides())?;
    warn(&methods::check_config(&cfg, &given)?);
    Ok(cfg)
}

/// `selfsup config`: the effective config as TOML.
pub fn command(args: &ConfigArgs) -> Result<()> {
    print!("{}", toml::to_string(&plain(args)?)?);
    Ok(())
}

pub fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

/// The config of `selfsup pretrain` into `out`, checked.
pub struct PretrainConfig {
    pub cfg: Config,
    /// A warning for each key the user set that its method does not read.
    pub warnings: Vec<String>,
    /// Continue from a checkpoint: `--resume`, unless the run in `out` was stopped before
    /// its first checkpoint (then it starts again from the beginning).
    pub resume: bool,
}

/// The config of `selfsup pretrain` into `out`. A new run takes the defaults, then `file`,
/// then `method` (which wins over the file's), then `sets`; a resumed one takes the config
/// saved in its checkpoint (`out`'s last one, or `from`), then `sets`. A run stopped before
/// its first checkpoint has only its `config.toml`: `--resume` starts it from the
/// beginning with that config (as Lightning's `ckpt_path="last"` does), so that a requeued
/// job can always run the same command.
pub fn pretrain_config(
    method: Option<&str>,
    file: Option<&Path>,
    sets: &[String],
    out: &Path,
    resume: bool,
    from: Option<&Path>,
) -> Result<PretrainConfig> {
    let run = RunDir::new(out);
    let mut resume = resume;
    let (cfg, given) = if resume {
        if file.is_some() {
            bail!(
                "--resume continues with the config saved in {}; change keys with --set",
                out.display()
            );
        }
        let saved = if from.is_none() && !run.file(RunDir::CHECKPOINT).exists() {
            let config = run.file(RunDir::CONFIG);
            if !config.is_file() {
                bail!(
                    "--resume: {} holds no selfsup run (neither {} nor {}); start a run there without --resume",
                    out.display(),
                    RunDir::CHECKPOINT,
                    RunDir::CONFIG
                );
            }
            let (saved, _) =
                Config::assemble(Config::default(), Some(&config), &[]).context("--resume")?;
            eprintln!(
                "note: {} holds the config of a run that stopped before its first checkpoint: starting it from the beginning",
                out.display()
            );
            resume = false;
            saved
        } else {
            let ck = match from {
                Some(f) => checkpoint::load_file(f),
                None => checkpoint::load(out),
            };
            ck.context("--resume")?.meta.config
        };
        if let Some(m) = method
            && m != saved.method
        {
            bail!(
                "--method {m} differs from the method '{}' of the run in {}",
                saved.method,
                out.display()
            );
        }
        Config::assemble(saved, None, sets)?
    } else {
        if from.is_some() {
            bail!("--checkpoint FILE goes with --resume (a new run starts from scratch)");
        }
        let mut all: Vec<String> = method.iter().map(|m| format!("method=\"{m}\"")).collect();
        all.extend(sets.iter().cloned());
        let (cfg, mut given) = Config::assemble(Config::default(), file, &all)?;
        given.retain(|k| k != "method");
        (cfg, given)
    };
    let warnings = methods::check_config(&cfg, &given)?;
    Ok(PretrainConfig {
        cfg,
        warnings,
        resume,
    })
}
