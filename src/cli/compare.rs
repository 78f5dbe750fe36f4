//! `selfsup compare`: trains the methods asked for (or takes runs trained before), then
//! evaluates every row with the baselines and writes the table.

use super::{CompareArgs, pretrain};
use crate::eval::{baselines::Baseline, compare, finetune};
use crate::nets::EncoderInput;
use crate::run::{LoadedRun, RunDir};
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
        pretrain::ensure_trained(cfg, &plan.run_dir(cfg), plan.quiet, device, None)?;
    }
    if !args.finetune.is_empty() {
        let fractions: Vec<f64> = (args.finetune.iter())
            .map(|p| finetune::parse_labels(&format!("{}%", p.trim().trim_end_matches('%'))))
            .collect::<Result<_>>()?;
        let mut dirs = plan.runs.clone();
        dirs.extend(runs.to_train.iter().map(|c| plan.run_dir(c)));
        for dir in dirs {
            let r = LoadedRun::load(&dir, None, &plan.eval_sets(), device)?;
            if r.model.method.encoder().input != EncoderInput::Image {
                eprintln!(
                    "compare: {} ({}) is not fine-tuned: its encoder does not take whole images",
                    dir.display(),
                    r.cfg.method
                );
                continue;
            }
            let init = RunDir::new(&dir).file(RunDir::CHECKPOINT);
            super::finetune::finetune_into(
                &r.cfg,
                &r.ds,
                Some(&init),
                &dir,
                &fractions,
                plan.quiet,
                device,
            )?;
        }
        if plan.baselines.contains(&Baseline::Random) {
            let first = runs.first.with_overrides(&plan.eval_sets())?;
            let ds = crate::data::load(&first.data, first.train.seed)?;
            let dir = plan.out.join("random-init");
            super::finetune::finetune_into(
                &first, &ds, None, &dir, &fractions, plan.quiet, device,
            )?;
        }
    }
    let rows = compare::evaluate(&plan, &runs, device)?;
    print!("{}", compare::markdown(&rows));
    let (md, csv) = (plan.out.join("compare.md"), plan.out.join("compare.csv"));
    println!("-> {} and {}", md.display(), csv.display());
    Ok(())
}
