//! Payload schemas: where they come from and how they become Arrow columns.
//!
//! The registry (for now a directory of `.proto` files compiled at start-up
//! with protox) resolves the configured message; [`MessagePlan`] flattens it
//! for the hot path and [`Decoder`] decodes payloads straight into
//! [`Column`]s. This module never does I/O after start-up.

mod column;
mod confluent;
mod decode;
mod evolve;
mod json;
mod plan;

use std::path::{Path, PathBuf};

use prost_reflect::{DescriptorPool, MessageDescriptor};

pub use column::{Column, UTC};
pub use confluent::{ConfluentRegistry, RegistryError};
pub use decode::{DecodeError, Decoder};
pub use evolve::check_compatible;
pub use json::json_to_protobuf;
pub use plan::MessagePlan;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema directory {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("no .proto files found under {0}")]
    Empty(PathBuf),
    #[error("cannot compile .proto files under {dir}: {message}")]
    Compile { dir: PathBuf, message: String },
    #[error("message `{name}` is not defined in {dir} (known: {known})")]
    UnknownMessage {
        name: String,
        dir: PathBuf,
        known: String,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// A directory of `.proto` files, compiled once.
#[derive(Debug)]
pub struct LocalRegistry {
    dir: PathBuf,
    pool: DescriptorPool,
}

impl LocalRegistry {
    /// Compiles every `.proto` file under `dir` (imports resolve relative to
    /// `dir`; the well-known types are built in).
    pub fn open(dir: &Path) -> Result<LocalRegistry, SchemaError> {
        let mut files = Vec::new();
        collect_protos(dir, dir, &mut files)?;
        if files.is_empty() {
            return Err(SchemaError::Empty(dir.to_owned()));
        }
        files.sort();
        let compile_error = |e: protox::Error| SchemaError::Compile {
            dir: dir.to_owned(),
            message: e.to_string(),
        };
        let mut compiler = protox::Compiler::new([dir]).map_err(compile_error)?;
        compiler.include_imports(true);
        compiler.open_files(&files).map_err(compile_error)?;
        Ok(LocalRegistry {
            dir: dir.to_owned(),
            pool: compiler.descriptor_pool(),
        })
    }

    pub fn message(&self, name: &str) -> Result<MessageDescriptor, SchemaError> {
        self.pool.get_message_by_name(name).ok_or_else(|| {
            let mut known: Vec<_> = self
                .pool
                .all_messages()
                .map(|m| m.full_name().to_owned())
                .filter(|n| !n.starts_with("google.protobuf."))
                .collect();
            known.sort();
            SchemaError::UnknownMessage {
                name: name.to_owned(),
                dir: self.dir.clone(),
                known: known.join(", "),
            }
        })
    }

    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }
}

fn collect_protos(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), SchemaError> {
    let read_error = |source| SchemaError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.is_dir() {
            collect_protos(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path.strip_prefix(root).unwrap_or(&path).to_owned());
        }
    }
    Ok(())
}
