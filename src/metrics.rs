//! `metrics.jsonl`, the log the training loop appends to: one JSON object per logged step
//! (`"kind": "step"`) and per epoch (`"kind": "epoch"`), written here one whole line at a
//! time and read back for the loss plot and the run's summary. A kill can cut only the
//! last line: the reader skips it with a note, and a resumed run drops it before appending.
//! A leaf: it imports nothing from the rest of selfsup but the fault points.

use crate::faults;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

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
    /// The line printed after pretraining `what` into `out`. A loss that is not a number
    /// means no step ran in this invocation (a step's loss that is not finite stops the
    /// run): a resumed run that had already finished.
    pub fn describe(&self, what: &str, out: &Path) -> String {
        if self.final_loss.is_nan() {
            return format!(
                "{what}: the run in {} had already finished ({} epochs, {} steps); nothing left to train",
                out.display(),
                self.epochs,
                self.steps
            );
        }
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

/// The records of a run, by step and by epoch. A step or epoch logged twice (a killed run
/// re-runs the steps after its last checkpoint on `--resume`) keeps its last record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub steps: Vec<StepRecord>,
    pub epochs: Vec<EpochRecord>,
    /// What was skipped: a last line cut short by a kill in mid-write.
    pub notes: Vec<String>,
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
    /// Parses the text of a metrics log. Errors name the line. A last line that is not
    /// JSON and lacks its newline is a record cut by a kill (or still being written): it is
    /// skipped with a note.
    pub fn parse(text: &str) -> Result<Metrics> {
        let (mut steps, mut epochs, mut notes) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
        let n_lines = text.lines().count();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed: Result<()> = (|| {
                let v: Value = match serde_json::from_str(line) {
                    Ok(v) => v,
                    Err(_) if i + 1 == n_lines && !text.ends_with('\n') => {
                        notes.push(format!(
                            "line {}: a record cut short (by a kill in mid-write?), ignored",
                            i + 1
                        ));
                        return Ok(());
                    }
                    Err(e) => return Err(e).context("not JSON"),
                };
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
            notes,
        })
    }

    /// Reads the log at `path`; errors (and notes) name the file and the line, and a log
    /// without a single loss record is an error too.
    pub fn read(path: &Path) -> Result<Metrics> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut m = Metrics::parse(&text).with_context(|| format!("{}", path.display()))?;
        if m.steps.is_empty() && m.epochs.is_empty() {
            bail!("{} holds no step or epoch records", path.display());
        }
        for n in &mut m.notes {
            *n = format!("{}: {n}", path.display());
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

/// The log a run appends to. Each record is one line written by a single `write`, so a
/// kill leaves at most the last line cut; records are written before the checkpoint that
/// covers their step, so a record cut (or lost) by a kill is written again on resume.
pub struct Log {
    file: File,
}

impl Log {
    /// Opens the log at `path`: emptied for a new run (`fresh`: a log without a checkpoint
    /// belongs to nothing that can be resumed); otherwise appended to, after ending the
    /// last line: a cut record is dropped (returned as a note), a whole one without its
    /// newline gets it.
    pub fn open(path: &Path, fresh: bool) -> Result<(Log, Option<String>)> {
        let at = || format!("cannot open {}", path.display());
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .with_context(at)?;
        if fresh {
            file.set_len(0).with_context(at)?;
            return Ok((Log { file }, None));
        }
        let note = end_last_line(&mut file).with_context(at)?.map(|cut| {
            format!(
                "{}: dropped a record cut short by a kill ({cut} bytes); it is logged again",
                path.display()
            )
        });
        Ok((Log { file }, note))
    }

    /// Appends `record` as one line.
    pub fn record(&mut self, record: &Value) -> Result<()> {
        let line = format!("{record}\n");
        faults::write_all(&mut self.file, line.as_bytes(), "metrics-line")
            .context("cannot append to metrics.jsonl")
    }

    /// Makes the records written so far durable (before a checkpoint that covers them).
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().context("cannot sync metrics.jsonl")
    }
}

/// Ends the last line of the log `file` (opened to read and append): a tail after the last
/// newline that is not JSON is cut away (its length is returned), a JSON one gets its
/// newline.
fn end_last_line(file: &mut File) -> std::io::Result<Option<u64>> {
    let mut text = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut text)?;
    let start = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let last = &text[start..];
    if last.is_empty() {
        return Ok(None);
    }
    if serde_json::from_slice::<Value>(last).is_ok() {
        std::io::Write::write_all(file, b"\n")?;
        return Ok(None);
    }
    file.set_len(start as u64)?;
    Ok(Some(last.len() as u64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_summary_says_when_nothing_was_left_to_train() {
        let mut s = super::Summary {
            epochs: 3,
            steps: 234,
            final_loss: 3.383414,
            images_per_sec: 67.2,
            wall_seconds: 893.6,
        };
        let out = std::path::Path::new("runs/x");
        assert_eq!(
            s.describe("simclr", out),
            "pretrained simclr: 3 epochs, 234 steps, final loss 3.38341, 67 images/s, wall 893.6s -> runs/x"
        );
        s.final_loss = f64::NAN;
        assert_eq!(
            s.describe("simclr", out),
            "simclr: the run in runs/x had already finished (3 epochs, 234 steps); nothing left to train"
        );
    }

    use super::*;
    use crate::rundir::RunDir;

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
        let p = dir.path().join(RunDir::METRICS);
        let e = format!("{:#}", Metrics::read(&p).unwrap_err());
        assert!(
            e.contains("cannot read") && e.contains("metrics.jsonl"),
            "{e}"
        );
        // Not JSON, and not a cut last line (it has its newline).
        std::fs::write(
            &p,
            "{\"kind\":\"step\",\"step\":1,\"loss\":1,\"lr\":0.1}\n{\"kind\":\"step\",\"st\n",
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

    const STEP_1: &str = r#"{"kind":"step","epoch":1,"step":1,"loss":2.0,"lr":0.001}"#;

    #[test]
    fn a_cut_last_line_is_skipped_with_a_note_naming_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(RunDir::METRICS);
        std::fs::write(&p, format!("{LOG}{}", &STEP_1[..30])).unwrap();
        let m = Metrics::read(&p).unwrap();
        let whole = Metrics::parse(LOG).unwrap();
        assert_eq!((m.steps, m.epochs), (whole.steps, whole.epochs));
        assert_eq!(m.notes.len(), 1);
        assert!(
            m.notes[0].contains("metrics.jsonl: line 9: a record cut short"),
            "{:?}",
            m.notes
        );
        assert!(whole.notes.is_empty());
    }

    /// The text of the log at `p` after `Log::open(p, fresh)` and one record, and the note.
    fn reopened(p: &Path, before: &str, fresh: bool) -> (String, Option<String>) {
        std::fs::write(p, before).unwrap();
        let (mut log, note) = Log::open(p, fresh).unwrap();
        log.record(&serde_json::from_str(STEP_1).unwrap()).unwrap();
        log.sync().unwrap();
        (std::fs::read_to_string(p).unwrap(), note)
    }

    #[test]
    fn reopening_the_log_ends_its_last_line_and_a_new_run_empties_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(RunDir::METRICS);
        // As the writer spells the record (serde_json orders the keys).
        let line = format!("{}\n", serde_json::from_str::<Value>(STEP_1).unwrap());
        // A whole log is appended to.
        let (text, note) = reopened(&p, LOG, false);
        assert_eq!((text, note), (format!("{LOG}{line}"), None));
        // A cut record is dropped, with a note.
        let (text, note) = reopened(&p, &format!("{LOG}{}", &STEP_1[..20]), false);
        assert_eq!(text, format!("{LOG}{line}"));
        assert!(
            note.unwrap()
                .contains("dropped a record cut short by a kill (20 bytes)")
        );
        let (text, _) = reopened(&p, &STEP_1[..20], false);
        assert_eq!(text, line);
        // A whole record without its newline gets it.
        let (text, note) = reopened(&p, STEP_1, false);
        assert_eq!((text, note), (format!("{STEP_1}\n{line}"), None));
        // A new run starts an empty log.
        let (text, note) = reopened(&p, LOG, true);
        assert_eq!((text, note), (line.clone(), None));
        // A missing log is created.
        std::fs::remove_file(&p).unwrap();
        Log::open(&p, false).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "");
    }
}
