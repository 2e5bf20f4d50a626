//! The one error type of `core`, with a stable machine code per variant.
//!
//! Messages describe *what* is wrong with the input in terms of its structure (sizes, formats,
//! tags by number) and never quote a value read from a file: no patient name, identifier or
//! date can reach an error message, a log line or an HTTP response through this type.

/// Everything that can go wrong between input bytes and a prediction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is empty.
    #[error("the input is empty")]
    Empty,
    /// The input is larger than the configured limit.
    #[error("the input is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// Size of the input in bytes.
        size: usize,
        /// The limit in bytes (exclusive).
        limit: usize,
    },
    /// The content is neither PNG, JPEG nor DICOM (judged by magic bytes, not by name).
    #[error("unsupported format: expected PNG, JPEG or DICOM (detected from the content)")]
    UnsupportedFormat,
    /// An image side is outside the accepted range.
    #[error("the image is {width}x{height} pixels; each side must be between {min} and {max}")]
    Dimensions {
        /// Width in pixels.
        width: u64,
        /// Height in pixels.
        height: u64,
        /// Smallest accepted side.
        min: u32,
        /// Largest accepted side.
        max: u32,
    },
    /// The declared sample type is not one of uint8, uint16, float32, float64.
    #[error("unsupported data type {found:?}: expected uint8, uint16, float32 or float64")]
    DataType {
        /// The type that was declared (a type name, never pixel data).
        found: String,
    },
    /// A sample is outside the range of its data type (uint8 0..255, uint16 0..65535, float 0..1).
    #[error("sample {index} is out of range for {dtype}: expected {expected}")]
    PixelRange {
        /// Index of the first offending sample.
        index: usize,
        /// The data type the sample was read as.
        dtype: &'static str,
        /// The accepted range, in words.
        expected: &'static str,
    },
    /// A sample is NaN or infinite.
    #[error("sample {index} is not a finite number")]
    NonFinite {
        /// Index of the first offending sample.
        index: usize,
    },
    /// `data.len() != width * height * channels`.
    #[error("data has {found} samples; width*height*channels = {expected}")]
    Shape {
        /// Samples expected from the declared shape.
        expected: u64,
        /// Samples present.
        found: u64,
    },
    /// The channel count is not 1 or 3.
    #[error("{found} channels: expected 1 (grayscale) or 3 (RGB)")]
    Channels {
        /// The channel count given.
        found: u64,
    },
    /// A PNG or JPEG could not be decoded.
    #[error("the {format} image could not be decoded: {reason}")]
    Decode {
        /// `png` or `jpeg`.
        format: &'static str,
        /// What the decoder reported (structure only; image codecs carry no patient data).
        reason: String,
    },
    /// A DICOM file could not be parsed or its pixel data could not be decoded.
    #[error("the DICOM file could not be read: {reason}")]
    Dicom {
        /// A fixed description of the failing stage (never a value from the file).
        reason: &'static str,
    },
    /// The pixel data is encoded with a transfer syntax this build cannot decode.
    #[error("transfer syntax {uid} ({name}) cannot be decoded {target}")]
    UnsupportedTransferSyntax {
        /// Transfer syntax UID (a standard identifier, not patient data).
        uid: String,
        /// Its name.
        name: String,
        /// `"by this build"` or `"on this target"`.
        target: &'static str,
    },
    /// An attribute the decoder needs is missing or malformed.
    #[error("DICOM attribute {keyword} ({tag}) is missing or invalid")]
    DicomAttribute {
        /// The attribute keyword, e.g. `Rows`.
        keyword: &'static str,
        /// The tag, e.g. `(0028,0010)`.
        tag: &'static str,
    },
    /// The DICOM pixel layout is valid but not supported.
    #[error("unsupported DICOM pixel layout: {reason}")]
    UnsupportedPixelLayout {
        /// What is unsupported.
        reason: &'static str,
    },
    /// The requested frame does not exist.
    #[error("frame {frame} requested, the file has {frames}")]
    FrameOutOfRange {
        /// Requested frame (0-based).
        frame: u32,
        /// Frames in the file.
        frames: u32,
    },
    /// A model manifest is malformed or inconsistent with its model.
    #[error("model manifest is invalid: {reason}")]
    Manifest {
        /// What is wrong.
        reason: String,
    },
    /// The model bytes do not match the manifest's sha256.
    #[error("model file checksum mismatch: manifest says {expected}, file is {actual}")]
    ModelChecksum {
        /// sha256 in the manifest.
        expected: String,
        /// sha256 of the bytes.
        actual: String,
    },
    /// tract could not load or optimise the model.
    #[error("the model could not be loaded: {reason}")]
    ModelLoad {
        /// tract's explanation.
        reason: String,
    },
    /// No model with this id is registered.
    #[error("no model with id {id:?}")]
    ModelNotFound {
        /// The id asked for.
        id: String,
    },
    /// Running the model failed.
    #[error("inference failed: {reason}")]
    Inference {
        /// tract's explanation.
        reason: String,
    },
    /// An unknown de-identification option.
    #[error("unknown de-identification option {name:?}")]
    DeidOption {
        /// The option name given.
        name: String,
    },
    /// Clean Pixel Data is required but no text detector was provided.
    #[error("this file needs Clean Pixel Data but no text detector is loaded")]
    DetectorMissing,
    /// The de-identification key is too short.
    #[error("the de-identification key must be at least 16 bytes")]
    DeidKey,
    /// The de-identified object could not be written.
    #[error("the de-identified DICOM file could not be written: {reason}")]
    DicomWrite {
        /// A fixed description.
        reason: &'static str,
    },
    /// The JSON input is malformed.
    #[error("invalid JSON input: {reason}")]
    Json {
        /// serde's explanation (positions and types only).
        reason: String,
    },
}

impl Error {
    /// The stable, dotted machine code of this error, e.g. `input.dimensions`.
    ///
    /// Codes never change once published; clients may match on them.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Empty => "input.empty",
            Error::TooLarge { .. } => "input.too_large",
            Error::UnsupportedFormat => "input.unsupported_format",
            Error::Dimensions { .. } => "input.dimensions",
            Error::DataType { .. } => "input.dtype",
            Error::PixelRange { .. } => "input.pixel_range",
            Error::NonFinite { .. } => "input.non_finite",
            Error::Shape { .. } => "input.shape",
            Error::Channels { .. } => "input.channels",
            Error::Decode { format: "png", .. } => "decode.png",
            Error::Decode { .. } => "decode.jpeg",
            Error::Dicom { .. } => "decode.dicom",
            Error::UnsupportedTransferSyntax { .. } => "dicom.unsupported_transfer_syntax",
            Error::DicomAttribute { .. } => "dicom.attribute",
            Error::UnsupportedPixelLayout { .. } => "dicom.unsupported_pixel_layout",
            Error::FrameOutOfRange { .. } => "dicom.frame_out_of_range",
            Error::Manifest { .. } => "model.manifest_invalid",
            Error::ModelChecksum { .. } => "model.checksum_mismatch",
            Error::ModelLoad { .. } => "model.load_failed",
            Error::ModelNotFound { .. } => "model.not_found",
            Error::Inference { .. } => "inference.failed",
            Error::Json { .. } => "input.invalid_json",
            Error::DeidOption { .. } => "deid.unknown_option",
            Error::DeidKey => "deid.key_too_short",
            Error::DetectorMissing => "deid.detector_missing",
            Error::DicomWrite { .. } => "deid.write_failed",
        }
    }

    /// The input field the error is about, when there is one (`data`, `width`, …).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Error::Dimensions { .. } => Some("width"),
            Error::DataType { .. } => Some("dtype"),
            Error::PixelRange { .. } | Error::NonFinite { .. } | Error::Shape { .. } => {
                Some("data")
            }
            Error::Channels { .. } => Some("channels"),
            Error::ModelNotFound { .. } => Some("model_id"),
            _ => None,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
