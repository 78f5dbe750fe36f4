//! One flat configuration with defaults (nanoGPT style). A run is described entirely by
//! `Config`: it is read from an optional TOML file, then `--set key=value` overrides are
//! applied, then it is validated. The checkpoint carries it so a model can be rebuilt.
//!
//! Users write flat keys (`lr = 0.1`); the code sees them in sections (`cfg.train.lr`),
//! each a typed view that one part of the code takes: `DataKeys` (data), `EncoderSpec`
//! (nets), `TrainSpec` (the loop), `AugSpec` and `MethodKeys` (methods), `ProbeSpec` and
//! `SegSpec` (evaluation). Every key is declared once, with its default and doc, in `keys.rs`.

pub mod check;
mod choices;
mod keys;

pub use choices::*;
pub use keys::*;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::LazyLock;

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Config {
    /// Pretraining method, a name from `selfsup methods`.
    pub method: String,
    pub data: DataKeys,
    pub encoder: EncoderSpec,
    pub train: TrainSpec,
    pub aug: AugSpec,
    pub keys: MethodKeys,
    pub probe: ProbeSpec,
    pub finetune: FinetuneSpec,
    pub seg: SegSpec,
}

/// What the evaluation reads of a config: the probe's and the segmentation's keys, the
/// precision of the forward passes, the seed, and the momentum of segmentation's SGD.
#[derive(Clone, Copy, Debug)]
pub struct EvalView<'a> {
    pub probe: &'a ProbeSpec,
    pub seg: &'a SegSpec,
    pub precision: Precision,
    pub seed: u64,
    pub momentum: f64,
}

/// A method's view of the config: what `MethodSpec::build` and `validate` read.
#[derive(Debug, Clone, Copy)]
pub struct MethodConfig<'a> {
    pub encoder: &'a EncoderSpec,
    pub aug: &'a AugSpec,
    pub keys: &'a MethodKeys,
    /// The fine-tuning method's views.
    pub finetune: &'a FinetuneSpec,
    /// The global batch (MoCo's BatchNorm groups and SwAV's queue are fitted to it).
    pub batch_size: usize,
}

impl Config {
    /// A ViT small enough for tests on 8x8 images (patch 2, one block of width 8), and
    /// MAE's decoder to match.
    pub fn with_tiny_vit(mut self) -> Config {
        let e = &mut self.encoder;
        e.kind = EncoderKind::Vit;
        (
            e.vit_patch,
            e.vit_depth,
            e.vit_width,
            e.vit_heads,
            e.vit_image_size,
        ) = (2, 1, 8, 2, 8);
        let k = &mut self.keys;
        (
            k.mae_decoder_width,
            k.mae_decoder_depth,
            k.mae_decoder_heads,
        ) = (8, 1, 2);
        self
    }

    pub fn method_view(&self) -> MethodConfig<'_> {
        MethodConfig {
            encoder: &self.encoder,
            aug: &self.aug,
            keys: &self.keys,
            finetune: &self.finetune,
            batch_size: self.train.batch_size,
        }
    }

    pub fn eval_view(&self) -> EvalView<'_> {
        EvalView {
            probe: &self.probe,
            seg: &self.seg,
            precision: self.train.precision,
            seed: self.train.seed,
            momentum: self.train.momentum,
        }
    }
}

/// The TOML names of a section's keys, in declaration order.
fn names_of<T: Serialize + Default>() -> Vec<&'static str> {
    let table = toml::Table::try_from(T::default()).expect("a config section serializes");
    table
        .keys()
        .map(|k| &*Box::leak(k.clone().into_boxed_str()))
        .collect()
}

/// The keys every run reads, whatever its method: data, encoder and training loop, and
/// the `EVAL_KEYS`. Each method names the other keys it reads in its `MethodSpec`.
pub static GENERAL_KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let mut keys = vec!["method"];
    keys.extend(names_of::<DataKeys>());
    keys.extend(names_of::<EncoderSpec>());
    keys.extend(names_of::<TrainSpec>());
    keys.retain(|k| *k != "precision");
    keys
});

/// Keys that may change when a saved run is evaluated (`eval --run`, `report`). `precision`
/// is read by training too; evaluation takes the run's unless told otherwise.
pub static EVAL_KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let mut keys = vec!["precision"];
    keys.extend(names_of::<ProbeSpec>());
    keys.extend(names_of::<FinetuneSpec>());
    keys.extend(names_of::<SegSpec>());
    keys
});

/// Whether every run reads `key` (one of `GENERAL_KEYS` or `EVAL_KEYS`).
pub fn is_general(key: &str) -> bool {
    GENERAL_KEYS.contains(&key) || EVAL_KEYS.contains(&key)
}

impl Config {
    /// The flat table of every key, in declaration order.
    fn to_table(&self) -> toml::Table {
        let mut table = toml::Table::new();
        table.insert("method".into(), self.method.clone().into());
        let sections = [
            toml::Table::try_from(&self.data),
            toml::Table::try_from(&self.encoder),
            toml::Table::try_from(&self.train),
            toml::Table::try_from(&self.aug),
            toml::Table::try_from(&self.keys),
            toml::Table::try_from(&self.probe),
            toml::Table::try_from(&self.finetune),
            toml::Table::try_from(&self.seg),
        ];
        for section in sections {
            table.extend(section.expect("a config section serializes"));
        }
        table
    }

    /// The config of a flat table; a missing key takes its default, an unknown one is an error.
    fn from_table(mut table: toml::Table) -> Result<Config, String> {
        let method = match table.remove("method") {
            None => String::new(),
            Some(toml::Value::String(s)) => s,
            Some(v) => {
                return Err(format!(
                    "invalid type: {}, expected a string for key `method`",
                    v.type_str()
                ));
            }
        };
        fn take<T: Serialize + Default + serde::de::DeserializeOwned>(
            table: &mut toml::Table,
        ) -> Result<T, String> {
            let mine: toml::Table = names_of::<T>()
                .into_iter()
                .filter_map(|k| table.remove_entry(k))
                .collect();
            T::deserialize(toml::Value::Table(mine)).map_err(|e| e.message().to_string())
        }
        let cfg = Config {
            method,
            data: take(&mut table)?,
            encoder: take(&mut table)?,
            train: take(&mut table)?,
            aug: take(&mut table)?,
            keys: take(&mut table)?,
            probe: take(&mut table)?,
            finetune: take(&mut table)?,
            seg: take(&mut table)?,
        };
        if let Some(key) = table.keys().next() {
            return Err(format!(
                "unknown field `{key}`; `selfsup config` lists every key"
            ));
        }
        Ok(cfg)
    }
}

impl Serialize for Config {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_table().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Config, D::Error> {
        let table = toml::Table::deserialize(d)?;
        Config::from_table(table).map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// Reads a TOML file; also returns the keys it sets.
    fn read_toml_file(path: &Path) -> Result<(Config, Vec<String>)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let keys = toml::from_str::<toml::Table>(&text)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        let cfg = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok((cfg, keys))
    }

    /// The config of a command line: `base`, or the `file` when one is given, then the
    /// `key=value` overrides. Returns it with the keys that the file and the overrides set
    /// (the keys the user chose, as opposed to defaults), in that order.
    pub fn assemble(
        base: Config,
        file: Option<&Path>,
        sets: &[String],
    ) -> Result<(Config, Vec<String>)> {
        let (base, mut given) = match file {
            Some(p) => Config::read_toml_file(p)?,
            None => (base, Vec::new()),
        };
        let cfg = base.with_overrides(sets)?;
        given.extend(
            sets.iter()
                .filter_map(|s| s.split_once('='))
                .map(|(k, _)| k.trim().to_string()),
        );
        Ok((cfg, given))
    }

    /// Every key, in declaration order.
    pub fn keys() -> Vec<String> {
        Config::default().to_table().keys().cloned().collect()
    }

    /// Applies `key=value` overrides. The value is read as a TOML value (`0.1`, `[32, 64]`,
    /// `true`), and as a plain string when it is not one (`optimizer=sgd`).
    pub fn with_overrides(&self, sets: &[String]) -> Result<Config> {
        let mut table = self.to_table();
        for set in sets {
            let Some((key, value)) = set.split_once('=') else {
                bail!("--set '{set}': expected key=value");
            };
            let key = key.trim();
            if !table.contains_key(key) {
                let keys: Vec<&String> = table.keys().collect();
                bail!("--set '{set}': unknown key '{key}'; known keys: {keys:?}");
            }
            let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
                Ok(t) => t["v"].clone(),
                Err(_) => toml::Value::String(value.to_string()),
            };
            table.insert(key.to_string(), parsed);
            Config::deserialize(toml::Value::Table(table.clone()))
                .map_err(|e| anyhow::anyhow!("--set '{set}': {}", e.message()))?;
        }
        Ok(Config::deserialize(toml::Value::Table(table))?)
    }

    /// The config as TOML, with only the `keys` (in declaration order).
    pub fn to_toml_with(&self, keys: &[&str]) -> Result<String> {
        let mut table = self.to_table();
        table.retain(|k, _| keys.contains(&k));
        Ok(toml::to_string(&table)?)
    }

    /// Checks the general options (`GENERAL_KEYS`) and the evaluation's; each method checks
    /// its own keys (`methods::MethodSpec::validate`).
    pub fn validate(&self) -> Result<()> {
        self.data.validate()?;
        self.encoder.validate()?;
        self.train.validate()?;
        self.probe.validate()?;
        self.finetune.validate()?;
        self.seg.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[test]
    fn overrides_parse_numbers_lists_and_strings() {
        let c = Config::default()
            .with_overrides(&[
                "lr=0.5".into(),
                "cnn_widths=[8, 16]".into(),
                "optimizer=sgd".into(),
            ])
            .unwrap();
        assert_eq!(c.train.lr, 0.5);
        assert_eq!(c.encoder.cnn_widths, vec![8, 16]);
        assert_eq!(c.train.optimizer, OptimizerKind::Sgd);
        c.validate().unwrap();
    }

    #[test]
    fn bad_overrides_name_the_key() {
        let e = Config::default()
            .with_overrides(&["lrr=0.5".into()])
            .unwrap_err();
        assert!(e.to_string().contains("unknown key 'lrr'"), "{e}");
        let e = Config::default()
            .with_overrides(&["epochs=many".into()])
            .unwrap_err();
        assert!(e.to_string().contains("epochs=many"), "{e}");
        let e = Config::default()
            .with_overrides(&["noequals".into()])
            .unwrap_err();
        assert!(e.to_string().contains("key=value"), "{e}");
        // A bad choice names the key and lists the allowed values, from their one spelling.
        let e = Config::default()
            .with_overrides(&["optimizer=lion".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("optimizer=lion") && e.contains("`sgd`, `adam`, `adamw`"),
            "{e}"
        );
        let e = Config::default()
            .with_overrides(&["cnn_pool=0".into()])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert_eq!(e, "option cnn_pool = 0 must be in 1..=8");
    }

    #[test]
    fn choices_round_trip_through_their_spelling() {
        for e in CeMask::ALL {
            let c = {
                let mut c = Config::default();
                c.keys.ce_mask = *e;
                c
            };
            let back = Config::default()
                .with_overrides(&[format!("ce_mask={}", e.as_str())])
                .unwrap();
            assert_eq!(back, c);
        }
        assert_eq!(OptimizerKind::AdamW.to_string(), "adamw");
        assert_eq!(CpcContext::MaskedConv.to_string(), "masked-conv");
    }

    #[test]
    fn assemble_reports_the_keys_the_user_chose() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "lr = 0.1\ntemperature = 0.3\n").unwrap();
        let (c, given) =
            Config::assemble(Config::default(), Some(&f), &["epochs=3".into()]).unwrap();
        assert_eq!(
            (c.train.lr, c.keys.temperature, c.train.epochs),
            (0.1, 0.3, 3)
        );
        assert_eq!(given, vec!["lr", "temperature", "epochs"]);
        let (c, given) = Config::assemble(Config::default(), None, &[]).unwrap();
        assert_eq!((c, given.len()), (Config::default(), 0));
    }

    #[test]
    fn general_and_eval_keys_are_config_keys() {
        let keys = Config::keys();
        for k in GENERAL_KEYS.iter().chain(EVAL_KEYS.iter()) {
            assert!(keys.iter().any(|x| x == k), "{k} is not a config key");
        }
        let t = Config::default().to_toml_with(&["lr", "method"]).unwrap();
        assert_eq!(t, "method = \"\"\nlr = 0.002\n");
    }

    #[test]
    fn checkpoint_every_takes_steps_times_or_epoch_and_names_bad_values() {
        let every = |v: &str| {
            Config::default()
                .with_overrides(&[format!("checkpoint_every={v}")])
                .map(|c| c.train.checkpoint_every)
        };
        let min = |m: u64| CheckpointEvery::Time(Duration::from_secs(60 * m));
        assert_eq!(Config::default().train.checkpoint_every, min(10));
        assert_eq!(every("500").unwrap(), CheckpointEvery::Steps(500));
        assert_eq!(every("\"500\"").unwrap(), CheckpointEvery::Steps(500));
        assert_eq!(every("10m").unwrap(), min(10));
        assert_eq!(every("1.5h").unwrap(), min(90));
        assert_eq!(
            every("90s").unwrap(),
            CheckpointEvery::Time(Duration::from_secs(90))
        );
        assert_eq!(every("epoch").unwrap(), CheckpointEvery::Epoch);
        for (bad, says) in [
            ("0", "at least 1"),
            ("-3", "at least 1"),
            ("10x", "expected a number of steps"),
            ("5ms", "expected a number of steps"),
            ("0m", "must be positive"),
            ("-2h", "must be positive"),
            ("1.5", "expected a number of steps"),
            ("[1]", "expected a number of steps"),
        ] {
            let e = every(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("checkpoint_every={bad}")) && e.contains(says),
                "{bad}: {e}"
            );
        }
        // Written back as it is spelled, in TOML and in the checkpoint's JSON.
        for (v, text) in [
            (CheckpointEvery::Steps(7), "7"),
            (min(10), "\"10m\""),
            (min(120), "\"2h\""),
            (
                CheckpointEvery::Time(Duration::from_millis(2500)),
                "\"2.5s\"",
            ),
            (CheckpointEvery::Epoch, "\"epoch\""),
        ] {
            let c = {
                let mut c = Config::default();
                c.train.checkpoint_every = v;
                c
            };
            let toml = c.to_toml_with(&["checkpoint_every"]).unwrap();
            assert_eq!(toml, format!("checkpoint_every = {text}\n"));
            assert_eq!(toml::from_str::<Config>(&toml).unwrap(), c);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), c);
        }
    }

    #[test]
    fn toml_round_trip_keeps_the_config() {
        let c = {
            let mut c = Config::default();
            c.train.lr = 0.25;
            c.method = "autoencoder".into();
            c
        };
        let text = toml::to_string(&c).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn every_preset_parses_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("presets");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let (cfg, given) = Config::assemble(Config::default(), Some(&path), &[])
                .unwrap_or_else(|e| panic!("{e:#}"));
            // Valid, and every key it sets is read by its method.
            let warnings = crate::methods::check_config(&cfg, &given)
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert!(warnings.is_empty(), "{}: {warnings:?}", path.display());
            n += 1;
        }
        assert!(n >= 5, "{n} presets");
    }
}
