//! `selfsup report --run R`: evaluates a run as `selfsup eval --run` does and writes into
//! its folder `eval.json` (the record `eval --run` writes), `loss.png`, `embedding.png` (a t-SNE map of test
//! embeddings), `neighbors.png`, and `index.html`, one static page showing all of them,
//! with the segmentation results and `segmentation.png` when `selfsup segment` left them.

use crate::config::{EncoderKind, ProbeSpec};
use crate::data::{self, numbered_names};
use crate::eval::{self, Scores, neighbors, segment, tsne};
use crate::methods::Method;
use crate::metrics::{self, Summary};
use crate::run::{LoadedRun, Model, RunDir};
use crate::{nets, plots};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::fmt::Write;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The pictures of a finished `pretrain` (drawn by the command, not by the training loop):
/// `loss.png` from the run's `metrics.jsonl` and, when every epoch is done, `examples.png`
/// of the method at work on `first_images`. Drawing is a by-product: a failure to draw the
/// curve is a warning, not an error.
pub fn pretraining_pictures(
    run: &RunDir,
    model: &Model,
    data_name: &str,
    first_images: &data::Split,
    finished: bool,
    device: Device,
) -> Result<()> {
    if finished {
        save_examples(
            model.method.as_ref(),
            first_images,
            &run.file(RunDir::EXAMPLES),
            device,
        )?;
    }
    match write_loss_plot(run.path(), model.spec.name, data_name) {
        Ok(m) => m.notes.iter().for_each(|n| eprintln!("note: {n}")),
        Err(e) => eprintln!("warning: {e:#}"),
    }
    Ok(())
}

/// Draws `loss.png` in the run folder `run` from its `metrics.jsonl`; returns the metrics.
pub fn write_loss_plot(run: &Path, method: &str, data: &str) -> Result<metrics::Metrics> {
    let m = metrics::Metrics::read(&run.join(RunDir::METRICS))?;
    let title = format!("{method} on {data}: pretraining");
    plots::loss_plot(&m, &title, &run.join(RunDir::LOSS_PLOT))?;
    Ok(m)
}

/// Saves `method.examples` of the first 8 images of `split` as a PNG at `path` (nothing when
/// the method has nothing to show), scaled up by an integer factor to at least 256 pixels high.
pub fn save_examples(
    method: &dyn Method,
    split: &data::Split,
    path: &Path,
    device: Device,
) -> Result<()> {
    let n = split.len().min(8);
    let [c, h, w] = split.shape.map(|d| d as i64);
    let mut bytes = Vec::with_capacity(n * split.image_len());
    for i in 0..n {
        bytes.extend_from_slice(&split.fixed(i)?);
    }
    let images = Tensor::from_slice(&bytes)
        .view([n as i64, c, h, w])
        .to_kind(Kind::Float)
        .to_device(device)
        / 255.0;
    let Some(pic) = tch::no_grad(|| method.examples(&images)) else {
        return Ok(());
    };
    let s = pic.size(); // [C, H', W']
    let scale = (256 + s[1] - 1) / s[1];
    let big = pic
        .unsqueeze(0)
        .upsample_nearest2d([s[1] * scale, s[2] * scale], None, None)
        .squeeze_dim(0);
    let bytes = (big.clamp(0.0, 1.0) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .to_device(Device::Cpu);
    tch::vision::image::save(&bytes, path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// What goes into a report besides the run itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// Test images in the t-SNE map (a random sample chosen with `seed`).
    pub points: usize,
    /// Rows (queries) and columns (neighbours) of the neighbour picture.
    pub queries: usize,
    pub k: usize,
    pub seed: u64,
}

/// What `write` found.
pub struct Report {
    pub scores: Scores,
    /// Feature extraction and scoring.
    pub eval_seconds: f64,
    pub neighbors: neighbors::Found,
    pub embedded_points: usize,
    pub tsne_seconds: f64,
    /// The pretraining summary from `metrics.jsonl`, when an epoch was logged.
    pub summary: Option<Summary>,
    /// Parts that could not be made (the report is written without them).
    pub warnings: Vec<String>,
}

/// `selfsup report`: evaluates the run in `dir` (with eval-key overrides `sets`), writes
/// its report with a t-SNE map of `points` test images, and returns what to print.
pub fn for_run(dir: &Path, points: usize, sets: &[String], device: Device) -> Result<String> {
    if !(1..=10_000).contains(&points) {
        bail!("--points {points}: must be in 1..=10000 (t-SNE takes O(N²) memory and time)");
    }
    let r = LoadedRun::load(dir, None, sets, device)?;
    let opts = Options {
        points,
        queries: 8,
        k: 8,
        seed: r.cfg.train.seed,
    };
    let rep = write(&r, &opts, device)?;
    let mut text = eval::describe(&r.label(), &r.ds, &rep.scores, rep.eval_seconds);
    let n = &rep.neighbors;
    write!(
        text,
        "\n  neighbours     {}/{} share the query's label\n  t-SNE map of {} test images ({:.1}s)\n",
        n.same_label, n.total, rep.embedded_points, rep.tsne_seconds
    )?;
    if let Some(s) = &rep.summary {
        writeln!(text, "  {}", s.describe(&r.cfg.method, dir))?;
    }
    for w in &rep.warnings {
        eprintln!("warning: {w}");
    }
    writeln!(text, "report -> {}", dir.join(RunDir::REPORT).display())?;
    Ok(text)
}

/// Evaluates the loaded run `r` and writes the report files into its folder.
pub fn write(r: &LoadedRun, opts: &Options, device: Device) -> Result<Report> {
    let (run, cfg, meta, ds, model) = (r.dir.path(), &r.cfg, &r.meta, &r.ds, &r.model);
    ds.require_labels()?;
    let t0 = Instant::now();
    // One pass of the encoder serves the scores, the neighbours and the map.
    let features = eval::run_features(r, device)?;
    let scores = features.score(ds.num_classes as i64, &cfg.eval_view());
    let eval_seconds = t0.elapsed().as_secs_f64();
    let found = neighbors::write_picture(
        &ds.train,
        &ds.test,
        &features.train.0,
        &features.test.0,
        opts.queries,
        opts.k,
        opts.seed,
        &run.join(RunDir::NEIGHBORS),
    )?;

    let t0 = Instant::now();
    let sample = neighbors::choose_queries(ds.test.len(), opts.points, opts.seed);
    let idx = Tensor::from_slice(&sample.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let embedded = features
        .test
        .0
        .index_select(0, &idx.to_device(features.test.0.device()));
    let tsne_opts = tsne::TsneOptions::default();
    let map = tsne::embedding_map(&embedded, &tsne_opts);
    let points: Vec<[f32; 2]> = Vec::<Vec<f32>>::try_from(map.to_kind(Kind::Float))?
        .into_iter()
        .map(|r| [r[0], r[1]])
        .collect();
    let labels: Vec<i64> = sample.iter().map(|&i| ds.test.labels[i]).collect();
    let names = if ds.class_names.len() >= ds.num_classes {
        ds.class_names.clone()
    } else {
        numbered_names(ds.num_classes)
    };
    let title = format!(
        "{}: t-SNE of {} {} test embeddings (perplexity {})",
        cfg.method,
        points.len(),
        ds.name,
        tsne_opts.perplexity
    );
    plots::embedding_plot(
        &points,
        &labels,
        &names,
        &title,
        &run.join(RunDir::EMBEDDING),
    )?;
    let tsne_seconds = t0.elapsed().as_secs_f64();

    let mut warnings = Vec::new();
    let summary = match write_loss_plot(run, &cfg.method, &ds.name) {
        Ok(m) => {
            warnings.extend(m.notes.iter().cloned());
            m.summary()
        }
        Err(e) => {
            warnings.push(format!("no loss plot: {e:#}"));
            None
        }
    };

    let parameters = nets::parameter_count(&model.vs, "encoder.");
    let mut record = eval::run_json(&cfg.method, &cfg.data.source, meta, parameters, &scores);
    record["pretraining"] = summary
        .as_ref()
        .map_or(serde_json::Value::Null, summary_json);
    record["neighbors"] =
        json!({"k": opts.k, "same_label": found.same_label, "total": found.total});
    record["embedding"] = json!({"points": points.len(), "perplexity": tsne_opts.perplexity});
    let p = run.join(RunDir::EVAL);
    std::fs::write(&p, serde_json::to_string_pretty(&record)?)
        .with_context(|| format!("cannot write {}", p.display()))?;

    let config = std::fs::read_to_string(run.join(RunDir::CONFIG))
        .or_else(|_| toml::to_string(&meta.config))
        .unwrap_or_default();
    let mut images = Vec::new();
    if summary.is_some() || run.join(RunDir::LOSS_PLOT).is_file() {
        images.push((
            RunDir::LOSS_PLOT,
            "Pretraining loss and learning rate".to_string(),
        ));
    }
    images.push((RunDir::EMBEDDING, title));
    images.push((
        RunDir::NEIGHBORS,
        format!(
            "Nearest training images of {} test images (cosine): query framed blue, same label green, other red; {}/{} share the query's label",
            found.queries.len(),
            found.same_label,
            found.total
        ),
    ));
    let mut metrics = metric_rows(
        &scores,
        &cfg.probe,
        cfg.encoder.kind,
        parameters,
        eval_seconds,
    );
    // Segmentation is trained by `selfsup segment`; the report shows a result that exists.
    // Fine-tuning is run by `selfsup finetune`; the report shows the results it recorded.
    match eval::finetune::read(run) {
        Ok(all) => metrics.extend(all.iter().map(|(name, o)| {
            (
                format!(
                    "fine-tuned on {name} of the labels ({} images, {} epochs): test top-1 / top-5",
                    o.images, o.epochs
                ),
                format!("{} / {}", pct(o.top1), pct(o.top5)),
            )
        })),
        Err(e) => warnings.push(format!("{e:#}")),
    }
    match segment::Record::read(run) {
        Ok(rec) if !rec.results.is_empty() => {
            metrics.extend(segmentation_rows(&rec));
            if run.join(RunDir::SEGMENTATION).is_file() {
                images.push((
                    RunDir::SEGMENTATION,
                    format!(
                        "Segmentation of test images by {}: image, true mask, and the masks each protocol predicted",
                        rec.label
                    ),
                ));
            }
        }
        Ok(_) => {}
        Err(e) => warnings.push(format!("no segmentation results: {e:#}")),
    }
    let page = Page {
        title: format!("{} on {}", cfg.method, ds.name),
        metrics,
        pretraining: summary.as_ref().map(summary_rows).unwrap_or_default(),
        images,
        notes: warnings.clone(),
        config,
    };
    let p = run.join(RunDir::REPORT);
    std::fs::write(&p, html(&page)).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(Report {
        scores,
        eval_seconds,
        neighbors: found,
        embedded_points: points.len(),
        tsne_seconds,
        summary,
        warnings,
    })
}

fn summary_json(s: &Summary) -> serde_json::Value {
    json!({"epochs": s.epochs, "steps": s.steps, "final_loss": s.final_loss,
           "images_per_sec": s.images_per_sec, "wall_seconds": s.wall_seconds})
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

fn metric_rows(
    s: &Scores,
    probe: &ProbeSpec,
    encoder: EncoderKind,
    parameters: i64,
    secs: f64,
) -> Vec<(String, String)> {
    vec![
        ("linear probe top-1".into(), pct(s.linear_top1)),
        ("linear probe top-5".into(), pct(s.linear_top5)),
        (
            format!(
                "kNN top-1 (k = {}, T = {})",
                probe.knn_k, probe.knn_temperature
            ),
            pct(s.knn_top1),
        ),
        ("feature dimension".into(), s.feature_dim.to_string()),
        (format!("{encoder} parameters"), parameters.to_string()),
        ("evaluation time".into(), format!("{secs:.1} s")),
    ]
}

/// The mean IoU and pixel accuracy of each segmentation protocol, with its data and head.
fn segmentation_rows(rec: &segment::Record) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for (p, o) in &rec.results {
        let what = format!(
            "{}, {} head, {}",
            o.settings.data,
            o.settings.head,
            p.as_str()
        );
        rows.push((format!("segmentation mIoU ({what})"), pct(o.mean_iou)));
        rows.push((
            format!("segmentation pixel accuracy ({what})"),
            pct(o.pixel_accuracy),
        ));
    }
    rows
}

fn summary_rows(s: &Summary) -> Vec<(String, String)> {
    vec![
        ("epochs".into(), s.epochs.to_string()),
        ("steps".into(), s.steps.to_string()),
        ("final loss".into(), format!("{:.5}", s.final_loss)),
        (
            "throughput".into(),
            format!("{:.0} images/s", s.images_per_sec),
        ),
        ("wall time".into(), format!("{:.1} s", s.wall_seconds)),
    ]
}

/// The content of `index.html`; every string is escaped when written.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub title: String,
    /// Final metrics, (name, value).
    pub metrics: Vec<(String, String)>,
    /// The pretraining summary, (name, value); empty when none was logged.
    pub pretraining: Vec<(String, String)>,
    /// Images in the run folder, (file name, caption).
    pub images: Vec<(&'static str, String)>,
    pub notes: Vec<String>,
    /// The run's config.toml.
    pub config: String,
}

/// `s` with `&`, `<`, `>`, `"` and `'` escaped for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn table(out: &mut String, rows: &[(String, String)]) {
    out.push_str("<table>\n");
    for (k, v) in rows {
        let _ = writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    }
    out.push_str("</table>\n");
}

/// A static page: metrics, pretraining summary, images (relative links), config.
pub fn html(page: &Page) -> String {
    let title = escape(&page.title);
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>selfsup report: {title}</title>\n<style>\n\
         body {{ font-family: sans-serif; max-width: 1040px; margin: 2em auto; padding: 0 1em; color: #222; }}\n\
         table {{ border-collapse: collapse; margin-bottom: 1em; }}\n\
         th, td {{ border: 1px solid #ccc; padding: 4px 12px; }}\n\
         th {{ text-align: left; font-weight: normal; background: #f6f6f6; }}\n\
         td {{ text-align: right; font-variant-numeric: tabular-nums; }}\n\
         figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #ddd; }}\n\
         pre {{ background: #f6f6f6; padding: 1em; overflow: auto; }}\n\
         .note {{ color: #a40; }}\n</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
    );
    for n in &page.notes {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(n));
    }
    out.push_str("<h2>Evaluation</h2>\n");
    table(&mut out, &page.metrics);
    out.push_str("<h2>Pretraining</h2>\n");
    if page.pretraining.is_empty() {
        out.push_str("<p>No finished epoch was logged.</p>\n");
    } else {
        table(&mut out, &page.pretraining);
    }
    for (file, caption) in &page.images {
        let _ = writeln!(
            out,
            "<figure><img src=\"{}\" alt=\"{c}\"><figcaption>{c}</figcaption></figure>",
            escape(file),
            c = escape(caption)
        );
    }
    let _ = write!(
        out,
        "<h2>Config</h2>\n<pre>{}</pre>\n</body>\n</html>\n",
        escape(&page.config)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tests::{quiet, tiny_config, tiny_dataset};

    #[test]
    fn html_shows_metrics_and_images_and_escapes_the_config() {
        let page = Page {
            title: "simclr on <data>".into(),
            metrics: vec![("linear probe top-1".into(), "85.12%".into())],
            pretraining: vec![("final loss".into(), "0.12345".into())],
            images: vec![
                ("loss.png", "loss & lr".into()),
                ("embedding.png", "map".into()),
            ],
            notes: vec![],
            config: "data = \"folder:/x/<a>&b\"\nmethod = \"simclr\"\n".into(),
        };
        let h = html(&page);
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert!(
            h.contains("<tr><th>linear probe top-1</th><td>85.12%</td></tr>"),
            "{h}"
        );
        assert!(h.contains("<td>0.12345</td>"));
        assert!(
            h.contains("<img src=\"loss.png\" alt=\"loss &amp; lr\">"),
            "{h}"
        );
        assert!(h.contains("<img src=\"embedding.png\""));
        assert!(
            h.contains("data = &quot;folder:/x/&lt;a&gt;&amp;b&quot;"),
            "{h}"
        );
        assert!(!h.contains("<a>") && !h.contains("<data>"));
        assert!(h.contains("<h1>simclr on &lt;data&gt;</h1>"));
        let empty = html(&Page::default());
        assert!(empty.contains("No finished epoch"));
    }

    #[test]
    fn report_writes_every_file_of_a_tiny_run() {
        let _rng = crate::torch_rng_lock();
        let dir = tempfile::tempdir().unwrap();
        let ds = tiny_dataset();
        let cfg = {
            let mut c = tiny_config("autoencoder");
            c.train.epochs = 2;
            c.probe.knn_k = 5;
            c.probe.probe_epochs = 3;
            c.data.source = "tiny <&>".into();
            c
        };
        crate::train::pretrain(&cfg, &ds, dir.path(), &quiet(), Device::Cpu).unwrap();
        let ck = crate::run::checkpoint::load(dir.path()).unwrap();
        let model = Model::build(&cfg, &crate::run::data_info(&ds), Device::Cpu).unwrap();
        crate::run::checkpoint::load_into(&model.vs, &ck.model).unwrap();
        let o = Options {
            points: 20,
            queries: 3,
            k: 4,
            seed: 0,
        };
        let loaded = LoadedRun {
            dir: RunDir::new(dir.path()),
            cfg,
            meta: ck.meta,
            ds,
            model,
            checkpoint: None,
        };
        let r = write(&loaded, &o, Device::Cpu).unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.embedded_points, 20);
        assert_eq!(r.neighbors.total, 12);
        assert_eq!(r.summary.as_ref().unwrap().epochs, 2);
        use crate::plots::tests::check_png;
        check_png(&dir.path().join(RunDir::LOSS_PLOT), plots::LOSS_SIZE);
        check_png(&dir.path().join(RunDir::EMBEDDING), plots::EMBEDDING_SIZE);
        assert!(dir.path().join(RunDir::NEIGHBORS).is_file());
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(RunDir::EVAL)).unwrap())
                .unwrap();
        assert_eq!(
            m["scores"]["linear_top1"].as_f64().unwrap(),
            r.scores.linear_top1
        );
        assert_eq!(m["pretraining"]["steps"], 12);
        let h = std::fs::read_to_string(dir.path().join(RunDir::REPORT)).unwrap();
        for needle in [
            "src=\"loss.png\"",
            "src=\"embedding.png\"",
            "src=\"neighbors.png\"",
            &pct(r.scores.linear_top1),
            &pct(r.scores.knn_top1),
            "data = &quot;tiny &lt;&amp;&gt;&quot;",
        ] {
            assert!(h.contains(needle), "{needle} not in {h}");
        }
    }
}
