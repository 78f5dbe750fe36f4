//! `selfsup compare`: trains the methods asked for (or takes runs trained before), then
//! evaluates every row with the baselines and writes the table.

use super::{CompareArgs, pretrain};
use crate::eval::{baselines::Baseline, compare};
use anyhow::Result;
use tch::Device;

pub fn command(args: CompareArgs, device: Device) -> Result<()> {
    let plan = compare::Plan {
        runs: args.runs,
        methods: args.methods,
        preset: args.preset,
        config: args.cfg.config.clone(),
        sets: args.cfg.overrides(),
        baselines: (args.baselines.iter().filter(|b| *b != "supervised"))
            .map(|b| Baseline::parse(b))
            .collect::<Result<_>>()?,
        supervised: args.baselines.iter().any(|b| b == "supervised"),
        out: args.out,
        segmentation: args.segmentation,
        quiet: args.quiet,
    };
    let runs = compare::runs(&plan)?;
    for cfg in &runs.to_train {
        pretrain::ensure_trained(cfg, &plan.run_dir(cfg), plan.quiet, device)?;
    }
    let rows = compare::evaluate(&plan, &runs, device)?;
    print!("{}", compare::markdown(&rows));
    let (md, csv) = (plan.out.join("compare.md"), plan.out.join("compare.csv"));
    println!("-> {} and {}", md.display(), csv.display());
    Ok(())
}
