//! `selfsup compare`: methods (trained here, or runs trained before) in one table with the
//! baselines, one row each, written as Markdown and CSV; with `segmentation`, also the
//! segmentation mIoU of each encoder, frozen and fine-tuned (`eval::segment`).

use super::baselines::Baseline;
use super::segment::{self, Protocol, Subject};
use super::{Scores, finetune};
use crate::config::{self, Config};
use crate::run::LoadedRun;
use crate::run::checkpoint;
use crate::{data, methods};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use tch::Device;

/// What to compare.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Run folders trained before.
    pub runs: Vec<PathBuf>,
    /// Methods to train here, into `out/METHOD` (a finished run there is reused).
    pub methods: Vec<String>,
    /// Take presets/PRESET-METHOD.toml where it exists.
    pub preset: Option<String>,
    /// A config file for the methods without a preset, and overrides for all of them.
    pub config: Option<PathBuf>,
    pub sets: Vec<String>,
    /// The untrained baselines to add.
    pub baselines: Vec<Baseline>,
    /// Add the supervised baseline (trained with the first method's or run's config).
    pub supervised: bool,
    pub out: PathBuf,
    /// Add the segmentation columns (results kept in each run's segment.json, and in
    /// `out/random-init` for the random encoder).
    pub segmentation: bool,
    pub quiet: bool,
}

/// presets/PRESET-METHOD.toml, looked up in ./presets and then in the source tree.
pub fn preset_path(preset: &str, method: &str) -> Option<PathBuf> {
    let name = format!("{preset}-{method}.toml");
    [
        PathBuf::from("presets"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("presets"),
    ]
    .into_iter()
    .map(|d| d.join(&name))
    .find(|f| f.is_file())
}

/// The config of `method` in `plan`: its preset when there is one, else the plan's config
/// file or the defaults; then the plan's overrides. Warns of keys the method does not read.
fn method_config(method: &str, plan: &Plan) -> Result<Config> {
    let preset = plan.preset.as_deref().and_then(|p| preset_path(p, method));
    let file = preset.as_deref().or(plan.config.as_deref());
    let mut sets = vec![format!("method=\"{method}\"")];
    sets.extend(plan.sets.iter().cloned());
    let (cfg, mut given) = Config::assemble(Config::default(), file, &sets)?;
    given.retain(|k| k != "method");
    for w in methods::check_config(&cfg, &given)? {
        eprintln!("warning: {w}");
    }
    Ok(cfg)
}

/// The runs `plan` asks for: the configs of the methods to train here (into
/// `out/METHOD`, the supervised baseline's included) and the config the baselines take
/// (the first method's or run's).
pub struct Runs {
    pub to_train: Vec<Config>,
    pub first: Config,
}

impl Plan {
    /// The overrides of evaluation keys (probe_*, finetune_*, seg_*): they apply to every
    /// row, the runs trained before included.
    pub fn eval_sets(&self) -> Vec<String> {
        (self.sets.iter())
            .filter(|s| {
                config::EVAL_KEYS.contains(&s.split_once('=').map_or(s.as_str(), |(k, _)| k.trim()))
            })
            .cloned()
            .collect()
    }

    /// The folder of a run trained here.
    pub fn run_dir(&self, cfg: &Config) -> PathBuf {
        self.out.join(&cfg.method)
    }
}

/// Checks `plan` and finds the configs of its runs.
pub fn runs(plan: &Plan) -> Result<Runs> {
    if plan.runs.is_empty() == plan.methods.is_empty() {
        bail!("compare needs either --runs DIR,... or --methods NAME,...");
    }
    for m in &plan.methods {
        methods::find(m)?;
    }
    if let Some(p) = &plan.preset
        && !plan.methods.iter().any(|m| preset_path(p, m).is_some())
    {
        bail!(
            "--preset {p}: none of presets/{p}-METHOD.toml exists for the methods {:?}",
            plan.methods
        );
    }
    let mut trained: Vec<Config> = plan
        .methods
        .iter()
        .map(|m| method_config(m, plan))
        .collect::<Result<_>>()?;
    let first = match trained.first() {
        Some(c) => c.clone(),
        None => checkpoint::load(&plan.runs[0])?.meta.config,
    };
    let has_supervised = trained.iter().any(|c| c.method == "supervised")
        || plan
            .runs
            .iter()
            .any(|r| checkpoint::load(r).is_ok_and(|c| c.meta.config.method == "supervised"));
    if plan.supervised && !has_supervised {
        trained.push({
            let mut c = first.clone();
            c.method = "supervised".into();
            c
        });
    }
    Ok(Runs {
        to_train: trained,
        first,
    })
}

/// Evaluates every row of `plan` once its runs are trained (`runs`): the baselines first,
/// then the runs, then the methods trained here. Writes compare.md and compare.csv into
/// `plan.out`.
pub fn evaluate(plan: &Plan, runs: &Runs, device: Device) -> Result<Vec<Row>> {
    let mut run_dirs = plan.runs.clone();
    run_dirs.extend(runs.to_train.iter().map(|c| plan.run_dir(c)));
    // The eval keys of the overrides (probe_*, seg_*) apply to every row.
    let eval_sets = plan.eval_sets();
    let first = runs.first.with_overrides(&eval_sets)?;
    let mut rows = Vec::new();
    if !plan.baselines.is_empty() {
        let ds = data::load(&first.data, first.train.seed)?;
        ds.require_labels()?;
        for &b in &plan.baselines {
            let (scores, parameters) = b.evaluate(&first, &ds, device)?;
            let seg = match b {
                _ if !plan.segmentation => None,
                Baseline::Raw => Some(SegCells::default()),
                Baseline::Random => {
                    let subject = Subject::random(
                        &first.encoder,
                        first.train.seed,
                        ds.train.shape[0] as i64,
                        device,
                    );
                    let out = plan.out.join("random-init");
                    Some(SegCells::of(&segment::ensure(
                        &subject,
                        &first.eval_view(),
                        &out,
                        device,
                        plan.quiet,
                    )?))
                }
            };
            // The random encoder's fine-tuning (`compare --finetune`) lives in random-init/.
            let finetune = match b {
                Baseline::Random => finetune::read(&plan.out.join("random-init"))?,
                Baseline::Raw => BTreeMap::new(),
            };
            rows.push(Row {
                method: b.label(first.encoder.kind),
                scores,
                pretrain_seconds: None,
                parameters,
                segmentation: seg,
                finetune,
            });
        }
    }
    for dir in &run_dirs {
        let run = LoadedRun::load(dir, None, &eval_sets, device)?;
        run.ds.require_labels()?;
        eprintln!("compare: evaluating {} ({})", run.cfg.method, dir.display());
        let scores = super::run_features(&run, device)?
            .score(run.ds.num_classes as i64, &run.cfg.eval_view());
        let mut row = Row {
            method: run.cfg.method.clone(),
            scores,
            pretrain_seconds: Some(run.meta.wall_seconds),
            parameters: run.encoder_parameters(),
            segmentation: None,
            finetune: finetune::read(dir)?,
        };
        if plan.segmentation {
            let (subject, cfg) = Subject::from_loaded(run);
            row.segmentation = Some(SegCells::of(&segment::ensure(
                &subject,
                &cfg.eval_view(),
                dir,
                device,
                plan.quiet,
            )?));
        }
        rows.push(row);
    }
    write(&plan.out, &rows)?;
    Ok(rows)
}

#[derive(Debug, Clone)]
pub struct Row {
    pub method: String,
    pub scores: Scores,
    /// Pretraining wall time; None for baselines that are not trained.
    pub pretrain_seconds: Option<f64>,
    /// Encoder parameters; 0 for raw pixels.
    pub parameters: i64,
    /// Segmentation results, when asked for.
    pub segmentation: Option<SegCells>,
    /// Fine-tuning results by fraction of the labels (`1%`), from the row's finetune.json.
    pub finetune: BTreeMap<String, finetune::Outcome>,
}

/// A row's segmentation results: (mean IoU, wall seconds of training and scoring) per
/// protocol; None where there is none (raw pixels).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegCells {
    pub frozen: Option<(f64, f64)>,
    pub finetune: Option<(f64, f64)>,
}

impl SegCells {
    pub fn of(record: &segment::Record) -> SegCells {
        let get = |p| {
            record
                .results
                .get(&p)
                .map(|o: &segment::Outcome| (o.mean_iou, o.train_seconds + o.eval_seconds))
        };
        SegCells {
            frozen: get(Protocol::Frozen),
            finetune: get(Protocol::Finetune),
        }
    }
}

const HEADER: [&str; 6] = [
    "method",
    "linear top-1 %",
    "linear top-5 %",
    "kNN top-1 %",
    "pretrain s",
    "parameters",
];

const SEG_HEADER: [&str; 4] = [
    "seg frozen mIoU %",
    "seg finetune mIoU %",
    "seg frozen s",
    "seg finetune s",
];

/// The column names: the segmentation columns when any row has them.
/// The fractions of the labels some row was fine-tuned on, smallest first.
fn finetune_names(rows: &[Row]) -> Vec<String> {
    let mut names: Vec<String> = rows
        .iter()
        .flat_map(|r| r.finetune.keys().cloned())
        .collect();
    names.sort_by(|a, b| {
        let f = |n: &str| finetune::parse_labels(n).unwrap_or(f64::MAX);
        f(a).total_cmp(&f(b))
    });
    names.dedup();
    names
}

fn header(rows: &[Row]) -> Vec<String> {
    let mut h: Vec<String> = HEADER.iter().map(|s| s.to_string()).collect();
    if rows.iter().any(|r| r.segmentation.is_some()) {
        h.extend(SEG_HEADER.iter().map(|s| s.to_string()));
    }
    h.extend(
        finetune_names(rows)
            .iter()
            .map(|n| format!("fine-tuned {n} top-1 %")),
    );
    h
}

fn cells(r: &Row, with_seg: bool, finetune: &[String]) -> Vec<String> {
    let mut c = vec![
        r.method.clone(),
        format!("{:.2}", 100.0 * r.scores.linear_top1),
        format!("{:.2}", 100.0 * r.scores.linear_top5),
        format!("{:.2}", 100.0 * r.scores.knn_top1),
        r.pretrain_seconds
            .map_or("-".to_string(), |s| format!("{s:.0}")),
        r.parameters.to_string(),
    ];
    if with_seg {
        let seg = r.segmentation.clone().unwrap_or_default();
        let dash = || "-".to_string();
        c.extend([
            seg.frozen
                .map_or_else(dash, |(m, _)| format!("{:.2}", 100.0 * m)),
            seg.finetune
                .map_or_else(dash, |(m, _)| format!("{:.2}", 100.0 * m)),
            seg.frozen.map_or_else(dash, |(_, s)| format!("{s:.0}")),
            seg.finetune.map_or_else(dash, |(_, s)| format!("{s:.0}")),
        ]);
    }
    c.extend(finetune.iter().map(|n| {
        r.finetune
            .get(n)
            .map_or("-".to_string(), |o| format!("{:.2}", 100.0 * o.top1))
    }));
    c
}

/// The table's columns: whether it has the segmentation ones, and its fine-tuning ones.
fn columns(rows: &[Row]) -> (bool, Vec<String>) {
    (
        rows.iter().any(|r| r.segmentation.is_some()),
        finetune_names(rows),
    )
}

pub fn markdown(rows: &[Row]) -> String {
    let h = header(rows);
    let (seg, ft) = columns(rows);
    let mut s = format!("| {} |\n|{}\n", h.join(" | "), "---|".repeat(h.len()));
    for r in rows {
        let _ = writeln!(s, "| {} |", cells(r, seg, &ft).join(" | "));
    }
    s
}

pub fn csv(rows: &[Row]) -> String {
    let h = header(rows);
    let (seg, ft) = columns(rows);
    let mut s = h.join(",") + "\n";
    for r in rows {
        let c = cells(r, seg, &ft);
        let quoted: Vec<String> = c
            .iter()
            .map(|x| {
                if x.contains([',', '"']) {
                    format!("\"{}\"", x.replace('"', "\"\""))
                } else {
                    x.clone()
                }
            })
            .collect();
        s += &(quoted.join(",") + "\n");
    }
    s
}

/// Writes `compare.md` and `compare.csv` into `dir`.
pub fn write(dir: &Path, rows: &[Row]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in [("compare.md", markdown(rows)), ("compare.csv", csv(rows))] {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_hold_every_row() {
        let s = Scores {
            linear_top1: 0.8512,
            linear_top5: 0.99,
            knn_top1: 0.8,
            feature_dim: 128,
        };
        let rows = vec![
            Row {
                method: "raw pixels".into(),
                scores: s.clone(),
                pretrain_seconds: None,
                parameters: 0,
                segmentation: None,
                finetune: BTreeMap::new(),
            },
            Row {
                method: "simclr, \"v1\"".into(),
                scores: s,
                pretrain_seconds: Some(61.4),
                parameters: 1234,
                segmentation: None,
                finetune: BTreeMap::new(),
            },
        ];
        let md = markdown(&rows);
        assert!(md.starts_with("| method | linear top-1 % |"), "{md}");
        assert!(
            md.contains("| raw pixels | 85.12 | 99.00 | 80.00 | - | 0 |"),
            "{md}"
        );
        let c = csv(&rows);
        assert_eq!(
            c.lines().nth(2).unwrap(),
            "\"simclr, \"\"v1\"\"\",85.12,99.00,80.00,61,1234"
        );
        // Segmentation columns appear when a row has them; missing results are "-".
        let mut rows = rows;
        rows[0].segmentation = Some(SegCells::default());
        rows[1].segmentation = Some(SegCells {
            frozen: Some((0.41234, 95.2)),
            finetune: None,
        });
        let md = markdown(&rows);
        assert!(md.contains("| parameters | seg frozen mIoU % | seg finetune mIoU % | seg frozen s | seg finetune s |"), "{md}");
        assert!(
            md.contains("| raw pixels | 85.12 | 99.00 | 80.00 | - | 0 | - | - | - | - |"),
            "{md}"
        );
        assert!(
            csv(&rows).ends_with(",61,1234,41.23,-,95,-\n"),
            "{}",
            csv(&rows)
        );
        // Fine-tuning columns, one per fraction some row has, smallest first.
        let outcome = |top1| finetune::Outcome {
            images: 10,
            top1,
            top5: 0.9,
            epochs: 3,
            seconds: 1.0,
            run: "r".into(),
        };
        rows[1].finetune =
            BTreeMap::from([("10%".into(), outcome(0.4321)), ("1%".into(), outcome(0.2))]);
        let md = markdown(&rows);
        assert!(
            md.contains("| seg finetune s | fine-tuned 1% top-1 % | fine-tuned 10% top-1 % |"),
            "{md}"
        );
        assert!(md.contains("| 95 | - | 20.00 | 43.21 |"), "{md}");
        assert!(md.contains("| - | - | - | - | - | - |"), "{md}");
    }
}
