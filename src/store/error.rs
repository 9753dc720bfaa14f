//! Store errors: each says what is wrong and, for opening errors, what to do.

use std::path::PathBuf;

impl StoreError {
    /// Returns whether this is a failure of the storage itself (I/O, damaged data), as opposed to a
    /// store that is locked or too new: what `/readyz` and `status` report.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            Self::Sled(_)
                | Self::Unavailable { .. }
                | Self::Corrupt { .. }
                | Self::Decode { .. }
                | Self::Format(_)
                | Self::Key(_)
        )
    }

    /// Returns whether the message already names the store directory (the errors of opening it), so
    /// that a caller adds no context repeating it.
    pub fn names_the_store(&self) -> bool {
        matches!(
            self,
            Self::Locked { .. }
                | Self::NewerFormat { .. }
                | Self::Corrupt { .. }
                | Self::Unavailable { .. }
                | Self::Open { .. }
        )
    }
}

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the store open.
    #[error(
        "the store {} is locked by another process (another crmsync is using it); stop that process or use another daemon.data_dir",
        path.display()
    )]
    Locked {
        /// Store directory.
        path: PathBuf,
    },
    /// The store was written by a newer crmsync.
    #[error("the store {} has format version {found}, newer than this crmsync understands ({supported}); upgrade crmsync", path.display())]
    NewerFormat {
        /// Store directory.
        path: PathBuf,
        /// Version on disk.
        found: u32,
        /// Version this binary writes.
        supported: u32,
    },
    /// The files are damaged.
    #[error(
        "the store {} is corrupt ({detail}); restore it from a backup, or move it aside and start again to resync everything from the CRMs",
        path.display()
    )]
    Corrupt {
        /// Store directory.
        path: PathBuf,
        /// What sled reported.
        detail: String,
    },
    /// The store is closed after a storage failure and could not be opened again yet (it is retried
    /// before each write).
    #[error("the store {} is unavailable until it can be reopened: {detail}", path.display())]
    Unavailable {
        /// Store directory.
        path: PathBuf,
        /// The last storage failure.
        detail: String,
    },
    /// The directory cannot be used.
    #[error("cannot open the store {}", path.display())]
    Open {
        /// Store directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// sled failed during an operation.
    #[error("store operation failed")]
    Sled(#[from] sled::Error),
    /// A stored value does not decode.
    #[error("stored {what} does not decode")]
    Decode {
        /// What.
        what: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A stored value does not decode (or a value cannot be encoded).
    #[error(transparent)]
    Format(#[from] super::format::FormatError),
    /// A credential could not be sealed.
    #[error(transparent)]
    Seal(#[from] super::sealed::SealError),
    /// A key does not decode.
    #[error(transparent)]
    Key(#[from] super::keys::KeyError),
    /// An internal invariant failed.
    #[error("internal store error: {0}")]
    Internal(String),
}
