//! `metrics.jsonl`, the log the training loop appends to: one JSON object per logged step
//! (`"kind": "step"`) and per epoch (`"kind": "epoch"`), read back here for the loss
//! plot and the run's summary. A leaf: it imports nothing from the rest of selfsup.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The log's name in a run folder.
pub const FILE_NAME: &str = "metrics.jsonl";

/// What a finished pretraining run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    pub epochs: usize,
    pub steps: usize,
    pub final_loss: f64,
    /// Training throughput over this invocation (not counting resumed epochs).
    pub images_per_sec: f64,
    pub wall_seconds: f64,
}

impl Summary {
    /// The line printed after pretraining `what` into `out`.
    pub fn describe(&self, what: &str, out: &Path) -> String {
        format!(
            "pretrained {what}: {} epochs, {} steps, final loss {:.5}, {:.0} images/s, wall {:.1}s -> {}",
            self.epochs,
            self.steps,
            self.final_loss,
            self.images_per_sec,
            self.wall_seconds,
            out.display()
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    pub epoch: u64,
    /// Steps done at the end of the epoch.
    pub step: u64,
    /// Mean training loss over the epoch.
    pub loss: f64,
    pub images_per_sec: f64,
    pub epoch_seconds: f64,
    /// Wall time of the run (over all its invocations) at the end of the epoch.
    pub time: f64,
}

/// The records of a run, by step and by epoch. A step or epoch logged twice (a run
/// interrupted mid-epoch re-runs that epoch on `--resume`) keeps its last record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub steps: Vec<StepRecord>,
    pub epochs: Vec<EpochRecord>,
}

fn field(v: &Value, key: &str) -> Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("no number '{key}'"))
}

fn count(v: &Value, key: &str) -> Result<u64> {
    v.get(key)
        .and_then(Value::as_u64)
        .with_context(|| format!("no count '{key}'"))
}

impl Metrics {
    /// Parses the text of a metrics log. Errors name the line.
    pub fn parse(text: &str) -> Result<Metrics> {
        let (mut steps, mut epochs) = (BTreeMap::new(), BTreeMap::new());
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed: Result<()> = (|| {
                let v: Value = serde_json::from_str(line).context("not JSON")?;
                match v.get("kind").and_then(Value::as_str) {
                    Some("step") => {
                        let step = count(&v, "step")?;
                        let rec = StepRecord {
                            step,
                            loss: field(&v, "loss")?,
                            lr: field(&v, "lr")?,
                        };
                        steps.insert(step, rec);
                    }
                    Some("epoch") => {
                        let epoch = count(&v, "epoch")?;
                        let rec = EpochRecord {
                            epoch,
                            step: count(&v, "step")?,
                            loss: field(&v, "loss")?,
                            images_per_sec: field(&v, "images_per_sec")?,
                            epoch_seconds: field(&v, "epoch_seconds")?,
                            time: field(&v, "time")?,
                        };
                        epochs.insert(epoch, rec);
                    }
                    Some(_) => {}
                    None => bail!("no \"kind\""),
                }
                Ok(())
            })();
            parsed.with_context(|| format!("line {}", i + 1))?;
        }
        Ok(Metrics {
            steps: steps.into_values().collect(),
            epochs: epochs.into_values().collect(),
        })
    }

    /// Reads the log at `path`; errors name the file (and the line), and a log without a
    /// single loss record is an error too.
    pub fn read(path: &Path) -> Result<Metrics> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let m = Metrics::parse(&text).with_context(|| format!("{}", path.display()))?;
        if m.steps.is_empty() && m.epochs.is_empty() {
            bail!("{} holds no step or epoch records", path.display());
        }
        Ok(m)
    }

    /// The pretraining summary of the logged epochs (None before the first epoch ends):
    /// throughput over all the epochs, the loss of the last logged step (else the last
    /// epoch's mean).
    pub fn summary(&self) -> Option<Summary> {
        let last = self.epochs.last()?;
        let seconds: f64 = self.epochs.iter().map(|e| e.epoch_seconds).sum();
        let images: f64 = self
            .epochs
            .iter()
            .map(|e| e.images_per_sec * e.epoch_seconds)
            .sum();
        let final_loss = match self.steps.last() {
            Some(s) if s.step == last.step => s.loss,
            _ => last.loss,
        };
        Some(Summary {
            epochs: last.epoch as usize,
            steps: last.step as usize,
            final_loss,
            images_per_sec: images / seconds.max(1e-9),
            wall_seconds: last.time,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"{"kind":"step","epoch":1,"step":1,"loss":2.0,"lr":0.001,"images_per_sec":10.0,"time":1.0}
{"kind":"step","epoch":1,"step":2,"loss":1.5,"lr":0.002,"images_per_sec":10.0,"time":2.0}
{"kind":"step","epoch":2,"step":3,"loss":1.4,"lr":0.002,"images_per_sec":10.0,"time":3.0}
{"kind":"epoch","epoch":1,"step":2,"loss":1.75,"images_per_sec":100.0,"epoch_seconds":2.0,"time":2.5}

{"kind":"step","epoch":2,"step":3,"loss":1.2,"lr":0.002,"images_per_sec":10.0,"time":3.0}
{"kind":"step","epoch":2,"step":4,"loss":1.0,"lr":0.001,"images_per_sec":10.0,"time":4.0}
{"kind":"epoch","epoch":2,"step":4,"loss":1.1,"images_per_sec":50.0,"epoch_seconds":2.0,"time":5.0}
"#;

    #[test]
    fn parses_records_and_keeps_the_last_of_a_repeated_step() {
        let m = Metrics::parse(LOG).unwrap();
        assert_eq!(m.steps.len(), 4);
        assert_eq!(m.steps[2].loss, 1.2, "the resumed run's record of step 3");
        assert_eq!(m.epochs.len(), 2);
        let s = m.summary().unwrap();
        assert_eq!((s.epochs, s.steps), (2, 4));
        assert_eq!(s.final_loss, 1.0);
        assert_eq!(s.wall_seconds, 5.0);
        assert!((s.images_per_sec - 75.0).abs() < 1e-9);
    }

    #[test]
    fn bad_logs_are_errors_that_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        let e = format!("{:#}", Metrics::read(&p).unwrap_err());
        assert!(
            e.contains("cannot read") && e.contains("metrics.jsonl"),
            "{e}"
        );
        std::fs::write(
            &p,
            "{\"kind\":\"step\",\"step\":1,\"loss\":1,\"lr\":0.1}\n{\"kind\":\"step\",\"st",
        )
        .unwrap();
        let e = format!("{:#}", Metrics::read(&p).unwrap_err());
        assert!(
            e.contains("metrics.jsonl") && e.contains("line 2") && e.contains("not JSON"),
            "{e}"
        );
        std::fs::write(&p, "{\"kind\":\"step\",\"step\":1,\"lr\":0.1}\n").unwrap();
        let e = format!("{:#}", Metrics::read(&p).unwrap_err());
        assert!(e.contains("line 1") && e.contains("'loss'"), "{e}");
        std::fs::write(&p, "\n").unwrap();
        let e = format!("{:#}", Metrics::read(&p).unwrap_err());
        assert!(e.contains("no step or epoch records"), "{e}");
        assert!(Metrics::parse("").unwrap().summary().is_none());
    }
}
