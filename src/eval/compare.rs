//! The comparison table of `selfsup compare`: one row per method or baseline, written as
//! Markdown and CSV.

use super::Scores;
use anyhow::{Context, Result};
use std::fmt::Write;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Row {
    pub method: String,
    pub scores: Scores,
    /// Pretraining wall time; None for baselines that are not trained.
    pub pretrain_seconds: Option<f64>,
    /// Encoder parameters; 0 for raw pixels.
    pub parameters: i64,
}

const HEADER: [&str; 6] = [
    "method",
    "linear top-1 %",
    "linear top-5 %",
    "kNN top-1 %",
    "pretrain s",
    "parameters",
];

fn cells(r: &Row) -> [String; 6] {
    [
        r.method.clone(),
        format!("{:.2}", 100.0 * r.scores.linear_top1),
        format!("{:.2}", 100.0 * r.scores.linear_top5),
        format!("{:.2}", 100.0 * r.scores.knn_top1),
        r.pretrain_seconds
            .map_or("-".to_string(), |s| format!("{s:.0}")),
        r.parameters.to_string(),
    ]
}

pub fn markdown(rows: &[Row]) -> String {
    let mut s = format!(
        "| {} |\n|{}\n",
        HEADER.join(" | "),
        "---|".repeat(HEADER.len())
    );
    for r in rows {
        let _ = writeln!(s, "| {} |", cells(r).join(" | "));
    }
    s
}

pub fn csv(rows: &[Row]) -> String {
    let mut s = HEADER.join(",") + "\n";
    for r in rows {
        let c = cells(r);
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
            },
            Row {
                method: "simclr, \"v1\"".into(),
                scores: s,
                pretrain_seconds: Some(61.4),
                parameters: 1234,
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
    }
}
