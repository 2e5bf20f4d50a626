//! Model manifests: `models/<id>/model.toml` next to `models/<id>/model.onnx`.
//!
//! ```
//! let m = medinfer_core::ModelManifest::from_toml(r#"
//!     id = "demo"
//!     version = "1.0.0"
//!     status = "development"
//!     [input]
//!     name = "input"
//!     shape = ["N", 3, 224, 224]
//!     [output]
//!     activation = "softmax"
//!     labels = ["normal", "abnormal"]
//! "#).unwrap();
//! assert_eq!(m.input.height(), 224);
//! assert_eq!(m.preprocess.mean, [0.0, 0.0, 0.0]);
//! ```

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Lifecycle status of a model version (the seed's ModelVersion.status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelStatus {
    /// Cleared for clinical use by its owner.
    Production,
    /// Under validation.
    Validation,
    /// Development only.
    Development,
}

/// Tensor layout of the image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    /// `[N, C, H, W]` (PyTorch).
    #[default]
    Nchw,
    /// `[N, H, W, C]` (TensorFlow).
    Nhwc,
}

/// Activation applied to the raw model output before reporting scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Independent probabilities per label (multi-label).
    Sigmoid,
    /// One distribution over the labels (multi-class).
    Softmax,
    /// The graph already ends in its activation (e.g. a Sigmoid node): use outputs as they are.
    Identity,
}

/// One dimension of the declared input shape: a number or a symbol such as `"N"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(u32),
    /// A symbolic size (the batch).
    Symbol(String),
}

/// The model's image input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Input tensor name in the ONNX graph.
    pub name: String,
    /// Shape, batch first, e.g. `["N", 3, 224, 224]`.
    pub shape: Vec<Dim>,
    /// Layout of the non-batch dimensions.
    #[serde(default)]
    pub layout: Layout,
}

impl InputSpec {
    fn fixed(&self, i: usize) -> u32 {
        match self.shape.get(i) {
            Some(Dim::Fixed(v)) => *v,
            _ => 0,
        }
    }
    /// Channels expected (1 or 3).
    pub fn channels(&self) -> u32 {
        self.fixed(if self.layout == Layout::Nchw { 1 } else { 3 })
    }
    /// Height expected.
    pub fn height(&self) -> u32 {
        self.fixed(if self.layout == Layout::Nchw { 2 } else { 1 })
    }
    /// Width expected.
    pub fn width(&self) -> u32 {
        self.fixed(if self.layout == Layout::Nchw { 3 } else { 2 })
    }
}

/// How an image becomes the input tensor: resize → channels → `(x * scale - mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Preprocess {
    /// Multiplier applied to 0..=1 samples before mean/std (1.0 keeps 0..1, 255.0 gives 0..255).
    pub scale: f32,
    /// Per-channel mean subtracted after scaling (ImageNet: 0.485, 0.456, 0.406).
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by (ImageNet: 0.229, 0.224, 0.225).
    pub std: [f32; 3],
    /// `stretch` resizes to the input size ignoring aspect; `letterbox` keeps the aspect ratio
    /// and pads with black.
    pub resize: ResizeMode,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess { scale: 1.0, mean: [0.0; 3], std: [1.0; 3], resize: ResizeMode::Stretch }
    }
}

/// Resize policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Resize both sides to the model's size.
    #[default]
    Stretch,
    /// Keep the aspect ratio, pad with zeros.
    Letterbox,
}

/// The model's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// Output tensor name (informational; the first output is used).
    #[serde(default)]
    pub name: Option<String>,
    /// Activation applied to the output.
    pub activation: Activation,
    /// One label per output class, in output order.
    pub labels: Vec<String>,
}

/// A model manifest (`model.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// Stable identifier used in the API (`model_id`).
    pub id: String,
    /// Version string.
    pub version: String,
    /// production | validation | development.
    pub status: ModelStatus,
    /// Human-readable name.
    #[serde(default)]
    pub name: Option<String>,
    /// What the model does, and what it must not be used for.
    #[serde(default)]
    pub description: Option<String>,
    /// A warning every user interface shows next to this model's predictions.
    #[serde(default)]
    pub disclaimer: Option<String>,
    /// ONNX file name relative to the manifest (default `model.onnx`).
    #[serde(default = "default_file")]
    pub file: String,
    /// Expected sha256 of the ONNX file (hex); checked when the model is loaded.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The image input.
    pub input: InputSpec,
    /// Preprocessing.
    #[serde(default)]
    pub preprocess: Preprocess,
    /// The output.
    pub output: OutputSpec,
}

fn default_file() -> String {
    "model.onnx".into()
}

impl ModelManifest {
    /// Parses and checks a manifest.
    pub fn from_toml(text: &str) -> Result<ModelManifest> {
        let m: ModelManifest = toml::from_str(text)
            .map_err(|e| Error::Manifest { reason: e.message().to_string() })?;
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<()> {
        let bad = |reason: &str| Err(Error::Manifest { reason: reason.to_string() });
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !id_ok {
            return bad("id must be 1..=64 characters of [A-Za-z0-9._-]");
        }
        if self.input.shape.len() != 4 {
            return bad("input.shape must have 4 dimensions (batch first)");
        }
        if !matches!(self.input.channels(), 1 | 3) {
            return bad("input channels must be 1 or 3");
        }
        if self.input.height() == 0 || self.input.width() == 0 {
            return bad("input height and width must be fixed positive numbers");
        }
        if self.output.labels.is_empty() {
            return bad("output.labels must not be empty");
        }
        if self.preprocess.std.iter().any(|s| !s.is_normal() || *s < 0.0) {
            return bad("preprocess.std must be positive");
        }
        if let Some(sha) = &self.sha256
            && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return bad("sha256 must be 64 hex digits");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
        id = "m"
        version = "1"
        status = "validation"
        [input]
        name = "x"
        shape = ["N", 224, 224, 1]
        layout = "NHWC"
        [output]
        activation = "sigmoid"
        labels = ["a"]
    "#;

    #[test]
    fn nhwc_dimensions() {
        let m = ModelManifest::from_toml(OK).unwrap();
        assert_eq!((m.input.channels(), m.input.height(), m.input.width()), (1, 224, 224));
    }

    #[test]
    fn bad_manifests_are_refused() {
        for (from, to) in [
            ("id = \"m\"", "id = \"a/b\""),
            ("labels = [\"a\"]", "labels = []"),
            ("status = \"validation\"", "status = \"beta\""),
            ("shape = [\"N\", 224, 224, 1]", "shape = [\"N\", 224, 224]"),
            ("shape = [\"N\", 224, 224, 1]", "shape = [\"N\", 224, 224, 2]"),
        ] {
            let text = OK.replace(from, to);
            assert_eq!(
                ModelManifest::from_toml(&text).unwrap_err().code(),
                "model.manifest_invalid",
                "{to}"
            );
        }
    }
}
