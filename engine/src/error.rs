//! Errors of the engine. [`SpecError`] locates a problem in a pipeline file; [`EngineError`]
//! covers everything that can stop a check or a run.

use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A problem in a pipeline file, located as precisely as the YAML allows.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    /// The pipeline file.
    pub file: Box<Path>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The stage concerned, when known.
    pub stage: Option<String>,
    /// The field of the stage concerned, when known (as the checks name it: `hidden[0]`).
    pub field: Option<Box<str>>,
    /// Where the text came from when it is not the file alone (e.g. `--set` overrides).
    pub origin: Option<String>,
    /// What is wrong (and, where it helps, what to do).
    pub message: String,
}

impl SpecError {
    /// An error in `file` with no location yet.
    pub fn new(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: None,
            stage: None,
            field: None,
            origin: None,
            message: message.into(),
        }
    }

    /// Attribute the error to stage `name`, located in `text`.
    pub fn at_stage(mut self, text: &str, name: &str) -> Self {
        self.stage = Some(name.to_owned());
        if let Some(line) = crate::parse::stage_line(text, name) {
            self.line = Some(line);
        }
        self
    }

    /// Narrow the location to `field` of the stage already set.
    pub fn at_field(mut self, text: &str, field: &str) -> Self {
        self.field = Some(field.into());
        if let Some(stage) = &self.stage
            && let Some(line) = crate::parse::field_line(text, stage, field)
        {
            self.line = Some(line);
        }
        self
    }

    /// Blame the `--set` among `sets` that wrote the stage's field, if one did: its value,
    /// not a line of the file, is what the error is about.
    pub fn blame_set(mut self, sets: &[String]) -> Self {
        let (Some(stage), Some(field)) = (&self.stage, &self.field) else { return self };
        let base = field.split(['[', '.']).next().unwrap_or(field);
        let key = format!("{stage}.{base}=");
        if let Some(set) = sets.iter().rev().find(|s| s.starts_with(&key)) {
            self.origin = Some(format!("--set {set}"));
            self.line = None;
        }
        self
    }

    /// Replace the message.
    pub fn with_message(mut self, message: String) -> Self {
        self.message = message;
        self
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(origin) = &self.origin {
            write!(f, " (with {origin})")?;
        }
        write!(f, ": ")?;
        if let Some(stage) = &self.stage {
            write!(f, "stage `{stage}`: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for SpecError {}

/// Everything that can stop `plflow check` or `plflow run`.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The pipeline file is invalid (boxed: a located error is large, and every `Result`
    /// of the engine carries this enum).
    #[error(transparent)]
    Spec(Box<SpecError>),
    /// A dataset could not be found or read.
    #[error("stage `{stage}`: cannot load the dataset")]
    Dataset {
        /// The stage.
        stage: String,
        /// What the dataset reader reported.
        #[source]
        source: plflow_datasets::DatasetError,
    },
    /// Feature extraction failed or was stopped.
    #[error("stage `{stage}`: feature extraction failed")]
    Extract {
        /// The stage.
        stage: String,
        /// What the extraction reported.
        #[source]
        source: plflow_extract::ExtractError,
    },
    /// Data did not match what the checked plan expected.
    #[error("stage `{stage}`: {message}")]
    DataMismatch {
        /// The stage.
        stage: String,
        /// What is wrong.
        message: String,
    },
    /// A numeric op failed during training or evaluation.
    #[error("stage `{stage}`, layer `{layer}`, epoch {epoch}, step {step}: training stopped")]
    Train {
        /// The stage.
        stage: String,
        /// The layer (graph node) that failed.
        layer: String,
        /// Epoch (1-based; 0 before training).
        epoch: usize,
        /// Step within the epoch.
        step: usize,
        /// What the op reported (shapes, values).
        #[source]
        source: plflow_ops::OpsError,
    },
    /// A model file that cannot be used.
    #[error("{}{}: {message}", .path.display(), .tensor.as_ref().map_or(String::new(), |t| format!(", tensor `{t}`")))]
    Model {
        /// The file or folder.
        path: PathBuf,
        /// The tensor concerned, where one is.
        tensor: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// Reading the pipeline or writing run outputs failed.
    #[error("{}: {action}{}", .path.display(), plflow_datasets::error::io_hint(.source))]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done with it.
        action: &'static str,
        #[source]
        /// The source.
        source: std::io::Error,
    },
}

impl From<SpecError> for EngineError {
    fn from(e: SpecError) -> Self {
        Self::Spec(Box::new(e))
    }
}

impl EngineError {
    /// An I/O error on `path` while doing `action`.
    pub fn io(path: impl Into<PathBuf>, action: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, action, source }
    }
}
