//! The config's choices (enums spelled once, as they are written in a config) and
//! `checkpoint_every`.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A config choice: an enum whose variants are written in the TOML as the given
/// kebab-case strings, spelled once here. A bad value is a serde error that lists the
/// allowed ones ("unknown variant `lion`, expected one of `sgd`, `adam`, `adamw`").
macro_rules! choice {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }
        impl $name {
            /// Every choice, in the order they are documented.
            pub const ALL: &[$name] = &[$($name::$variant),+];
            /// The name as written in a config.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // `pad`, not `write_str`: a width (`{:<9}` in a table) applies.
                f.pad(self.as_str())
            }
        }
    };
}

choice!(
    /// The encoder network.
    EncoderKind {
        /// Small CNN for 28x28-ish inputs (`cnn_widths`, `cnn_pool`).
        Cnn = "cnn",
        /// CIFAR-style ResNet-18 (`resnet_width`).
        Resnet18 = "resnet18",
        /// Small Vision Transformer with timm's names (`vit_*`).
        Vit = "vit",
    }
);
choice!(
    OptimizerKind {
        /// SGD with momentum.
        Sgd = "sgd",
        /// Adam with L2 weight decay.
        Adam = "adam",
        /// Adam with decoupled weight decay.
        AdamW = "adamw",
    }
);
choice!(
    /// Denoising autoencoder corruption.
    Noise {
        Gaussian = "gaussian",
        Masking = "masking",
    }
);
choice!(
    /// CPC's context network.
    CpcContext {
        MaskedConv = "masked-conv",
        Gru = "gru",
    }
);
choice!(
    Cifar100Labels {
        Fine = "fine",
        Coarse = "coarse",
    }
);
choice!(
    /// What loading an image folder does with an image it cannot decode.
    BadImages {
        Error = "error",
        Skip = "skip",
    }
);
choice!(
    /// The context encoder's hole.
    CeMask {
        Center = "center",
        RandomBlocks = "random-blocks",
        RandomRegion = "random-region",
    }
);
choice!(
    /// The arithmetic of forward passes (`precision`).
    Precision {
        /// float32 throughout.
        Fp32 = "fp32",
        /// bfloat16 autocast for the forward pass; float32 weights, optimizer and losses.
        Bf16 = "bf16",
    }
);
choice!(
    /// The segmentation head.
    SegHead {
        /// A 1x1 convolution on the last feature map.
        Linear = "linear",
        /// 1x1 convolutions on every stage's map, their upsampled logits summed.
        Fcn = "fcn",
    }
);
choice!(
    ColorizationLoss {
        /// Cross-entropy over quantized ab bins, with class rebalancing.
        Classify = "classify",
        /// L2 on ab.
        Regress = "regress",
    }
);

/// When the training loop writes a checkpoint within an epoch (it always writes one at an
/// epoch's end). Written as a number of steps (`500`), a time with its unit (`"90s"`,
/// `"10m"`, `"1.5h"`) or `"epoch"`.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(try_from = "CheckpointEverySpelled")]
pub enum CheckpointEvery {
    /// After every step that is a multiple of this (counted over the whole run).
    Steps(usize),
    /// Once this much time has passed since the last checkpoint (or the start).
    Time(Duration),
    /// Only at epoch ends.
    Epoch,
}

const CHECKPOINT_EVERY_FORMS: &str =
    "a number of steps (500), a time (\"90s\", \"10m\", \"2h\") or \"epoch\"";

/// `checkpoint_every` as a config spells it: an integer, a string, or something else (an
/// error naming the key, rather than serde's "did not match any variant").
#[derive(Deserialize)]
#[serde(untagged)]
enum CheckpointEverySpelled {
    Steps(i64),
    Text(String),
    Other(serde::de::IgnoredAny),
}

impl std::str::FromStr for CheckpointEvery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("option checkpoint_every = {s:?}: expected {CHECKPOINT_EVERY_FORMS}");
        let s = s.trim();
        if s == "epoch" {
            return Ok(CheckpointEvery::Epoch);
        }
        if let Ok(n) = s.parse::<i64>() {
            return CheckpointEvery::try_from(CheckpointEverySpelled::Steps(n));
        }
        let secs = parse_seconds(s).ok_or_else(bad)?;
        match Duration::try_from_secs_f64(secs) {
            Ok(d) if !d.is_zero() => Ok(CheckpointEvery::Time(d)),
            _ => Err(format!(
                "option checkpoint_every = {s:?}: the time must be positive"
            )),
        }
    }
}

/// The seconds of a time written `90s`, `1.5m` or `2h` (seconds, minutes, hours; maybe
/// negative); None when it is not written so.
pub fn parse_seconds(s: &str) -> Option<f64> {
    let s = s.trim();
    let unit = match s.chars().last()? {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        _ => return None,
    };
    let n: f64 = s[..s.len() - 1].trim().parse().ok()?;
    Some(n * unit)
}

impl TryFrom<CheckpointEverySpelled> for CheckpointEvery {
    type Error = String;
    fn try_from(v: CheckpointEverySpelled) -> Result<Self, String> {
        match v {
            CheckpointEverySpelled::Steps(n) if n >= 1 => Ok(CheckpointEvery::Steps(n as usize)),
            CheckpointEverySpelled::Steps(n) => Err(format!(
                "option checkpoint_every = {n}: a number of steps must be at least 1 (\"epoch\" checkpoints only at epoch ends)"
            )),
            CheckpointEverySpelled::Text(s) => s.parse(),
            CheckpointEverySpelled::Other(_) => Err(format!(
                "option checkpoint_every: expected {CHECKPOINT_EVERY_FORMS}"
            )),
        }
    }
}

/// As it is written in a config: `500`, `"10m"`, `"epoch"`; parses back to the same value.
impl std::fmt::Display for CheckpointEvery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            CheckpointEvery::Steps(n) => write!(f, "{n}"),
            CheckpointEvery::Epoch => f.write_str("epoch"),
            CheckpointEvery::Time(d) => {
                let s = d.as_secs_f64();
                match d.as_secs() {
                    t if d.subsec_nanos() == 0 && t % 3600 == 0 => write!(f, "{}h", t / 3600),
                    t if d.subsec_nanos() == 0 && t % 60 == 0 => write!(f, "{}m", t / 60),
                    _ => write!(f, "{s}s"),
                }
            }
        }
    }
}

impl Serialize for CheckpointEvery {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            CheckpointEvery::Steps(n) => s.serialize_u64(n as u64),
            _ => s.serialize_str(&self.to_string()),
        }
    }
}
