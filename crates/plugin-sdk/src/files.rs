//! [`HostFiles`]: typed access to tether's ready-made host services (`tether.hostserve.v1`).

use futures_util::{Stream, StreamExt};
use std::time::Duration;
use tether_protocol::hostserve::files_client::FilesClient;
use tether_protocol::hostserve::{
    CreateDirRequest, DeleteFileRequest, DirEntry, GetEnvRequest, ReadDirRequest, ReadFileRequest,
    StatRequest, StatResponse, WriteFileChunk,
};
use tether_protocol::{CAPABILITY_METADATA, CallContext};
use tonic::{Code, Request, Status};

use crate::host::HostChannel;

/// A file's contents, chunk by chunk, from [`HostFiles::read_file`].
pub type FileChunks = std::pin::Pin<Box<dyn Stream<Item = Result<Vec<u8>, HostCallError>> + Send>>;

/// Bytes per chunk `write_file` sends.
const WRITE_CHUNK: usize = 64 * 1024;

/// Why a host-service call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HostCallError {
    /// The plugin lacks a capability; `capability` is the one that would allow the call.
    #[error("denied: missing capability `{capability}`: {message}")]
    Denied {
        /// For example `read:config/app.toml`.
        capability: String,
        /// The host's explanation.
        message: String,
    },
    /// The host's confinement refused the call, which no capability would allow: the path
    /// is or passes through a symbolic link, which host services never follow.
    #[error("refused by the host's confinement (no capability allows this): {0}")]
    Confined(String),
    /// The path or name is malformed (absolute, `..`, NUL, not UTF-8, too long, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The file or directory does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The file or directory exists already (`create_dir`).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A limit was reached: write quota, concurrency, message size.
    #[error("limit reached: {0}")]
    Exhausted(String),
    /// `read_file_to_vec`'s cap was exceeded.
    #[error("the file is larger than the {cap}-byte cap given to read_file_to_vec")]
    TooLarge {
        /// The cap.
        cap: usize,
    },
    /// Host services are not connected (see [`crate::HostServicesError`]).
    #[error(transparent)]
    NotConnected(#[from] crate::HostServicesError),
    /// Anything else the host or the transport reported.
    #[error("host service call failed ({code:?}): {message}")]
    Other {
        /// The gRPC code.
        code: Code,
        /// The message.
        message: String,
    },
}

impl From<Status> for HostCallError {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::PermissionDenied => match status
                .metadata()
                .get(CAPABILITY_METADATA)
                .and_then(|value| value.to_str().ok())
            {
                Some(capability) => HostCallError::Denied {
                    capability: capability.to_owned(),
                    message,
                },
                None => HostCallError::Confined(message),
            },
            Code::InvalidArgument => HostCallError::Invalid(message),
            Code::NotFound => HostCallError::NotFound(message),
            Code::AlreadyExists => HostCallError::AlreadyExists(message),
            Code::ResourceExhausted => HostCallError::Exhausted(message),
            code => HostCallError::Other { code, message },
        }
    }
}

impl From<HostCallError> for Status {
    fn from(err: HostCallError) -> Self {
        let code = match &err {
            HostCallError::Denied { .. } | HostCallError::Confined(_) => Code::PermissionDenied,
            HostCallError::Invalid(_) => Code::InvalidArgument,
            HostCallError::NotFound(_) => Code::NotFound,
            HostCallError::AlreadyExists(_) => Code::AlreadyExists,
            HostCallError::Exhausted(_) | HostCallError::TooLarge { .. } => Code::ResourceExhausted,
            HostCallError::NotConnected(_) => Code::FailedPrecondition,
            HostCallError::Other { code, .. } => *code,
        };
        let mut status = Status::new(code, err.to_string());
        // A denial passed on keeps the capability it names, so the plugin's caller gets
        // the same typed denial.
        if let HostCallError::Denied { capability, .. } = &err
            && let Ok(value) = tonic::metadata::MetadataValue::try_from(capability.as_str())
        {
            status.metadata_mut().insert(CAPABILITY_METADATA, value);
        }
        status
    }
}

/// The host's files and environment, through tether's host services: from
/// [`crate::Host::files`], or in a handler from [`crate::CallHost::files`], whose calls
/// carry the request id and deadline of the call being served. Cheap to clone. Paths are
/// relative to the workspace the host assigned to this plugin, with `/` between
/// components.
#[derive(Debug, Clone)]
pub struct HostFiles {
    client: FilesClient<HostChannel>,
    channel: HostChannel,
    max_message_size: usize,
    default_timeout: Option<Duration>,
}

/// The deadline of a host-service call that has none from its context.
pub const DEFAULT_HOST_CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl HostFiles {
    /// A client on `channel` whose messages (each way) may be up to `max_message_size`
    /// bytes.
    pub(crate) fn new(channel: HostChannel, max_message_size: usize) -> Self {
        HostFiles {
            client: FilesClient::new(channel.clone())
                .max_decoding_message_size(max_message_size)
                .max_encoding_message_size(max_message_size),
            channel,
            max_message_size,
            default_timeout: Some(DEFAULT_HOST_CALL_TIMEOUT),
        }
    }

    /// These host files with another deadline for unary calls whose context has none
    /// (`None`: no default; [`DEFAULT_HOST_CALL_TIMEOUT`] otherwise). Streams (`read_file`,
    /// `write_file*`) get no default: a large file may take longer, and the host ends a
    /// stream that stalls.
    pub fn with_default_timeout(&self, timeout: Option<Duration>) -> HostFiles {
        HostFiles {
            default_timeout: timeout,
            ..self.clone()
        }
    }

    /// A unary request, with the default deadline unless the context brings its own.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let context_deadline = self
            .channel
            .context()
            .and_then(CallContext::deadline)
            .is_some();
        if !context_deadline && let Some(timeout) = self.default_timeout {
            request.set_timeout(timeout);
        }
        request
    }

    /// These host files, with every call carrying `context` instead: its request id, and
    /// the time left before its deadline (a call made after the deadline fails at once
    /// with `DEADLINE_EXCEEDED`). In a handler, [`crate::Host::for_call`] does this for
    /// you: `self.host.for_call(&request).files()?`.
    pub fn with_context(&self, context: &CallContext) -> HostFiles {
        HostFiles {
            default_timeout: self.default_timeout,
            ..HostFiles::new(self.channel.with_context(context), self.max_message_size)
        }
    }

    /// Every entry of a directory (all pages).
    pub async fn read_dir(&self, path: impl AsRef<[u8]>) -> Result<Vec<DirEntry>, HostCallError> {
        let mut entries = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .client
                .clone()
                .read_dir(self.request(ReadDirRequest {
                    path: path.as_ref().to_vec(),
                    page_size: 0,
                    page_token,
                }))
                .await?
                .into_inner();
            entries.extend(page.entries);
            if page.next_page_token.is_empty() {
                return Ok(entries);
            }
            page_token = page.next_page_token;
        }
    }

    /// A file's contents as a stream of chunks, for files of any size.
    pub async fn read_file(&self, path: impl AsRef<[u8]>) -> Result<FileChunks, HostCallError> {
        let stream = self
            .client
            .clone()
            .read_file(Request::new(ReadFileRequest {
                path: path.as_ref().to_vec(),
            }))
            .await?
            .into_inner();
        Ok(Box::pin(stream.map(|chunk| {
            chunk.map(|c| c.data).map_err(HostCallError::from)
        })))
    }

    /// A whole file, refusing (with [`HostCallError::TooLarge`]) past `cap` bytes.
    pub async fn read_file_to_vec(
        &self,
        path: impl AsRef<[u8]>,
        cap: usize,
    ) -> Result<Vec<u8>, HostCallError> {
        let mut stream = self.read_file(path).await?;
        let mut contents = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if contents.len() + chunk.len() > cap {
                return Err(HostCallError::TooLarge { cap });
            }
            contents.extend_from_slice(&chunk);
        }
        Ok(contents)
    }

    /// Writes `contents` to `path` (mode `0o644`), replacing it atomically.
    pub async fn write_file(
        &self,
        path: impl AsRef<[u8]>,
        contents: &[u8],
    ) -> Result<u64, HostCallError> {
        let chunks: Vec<Vec<u8>> = contents.chunks(WRITE_CHUNK).map(<[u8]>::to_vec).collect();
        self.write_file_stream(path, 0o644, futures_util::stream::iter(chunks))
            .await
    }

    /// Writes a stream of chunks to `path` with `mode`: the host writes a temporary file
    /// and renames it into place when the stream ends, so readers never see half a file.
    pub async fn write_file_stream(
        &self,
        path: impl AsRef<[u8]>,
        mode: u32,
        chunks: impl Stream<Item = Vec<u8>> + Send + 'static,
    ) -> Result<u64, HostCallError> {
        let first = WriteFileChunk {
            path: path.as_ref().to_vec(),
            mode,
            data: Vec::new(),
        };
        let messages =
            futures_util::stream::iter([first]).chain(chunks.map(|data| WriteFileChunk {
                path: Vec::new(),
                mode: 0,
                data,
            }));
        let response = self
            .client
            .clone()
            .write_file(Request::new(messages))
            .await?;
        Ok(response.into_inner().bytes_written)
    }

    /// Deletes a file.
    pub async fn delete_file(&self, path: impl AsRef<[u8]>) -> Result<(), HostCallError> {
        self.client
            .clone()
            .delete_file(self.request(DeleteFileRequest {
                path: path.as_ref().to_vec(),
            }))
            .await?;
        Ok(())
    }

    /// One host environment variable, by exact name (`None` if the host does not have it).
    pub async fn get_env(&self, name: &str) -> Result<Option<String>, HostCallError> {
        let reply = self
            .client
            .clone()
            .get_env(self.request(GetEnvRequest {
                name: name.to_owned(),
            }))
            .await?
            .into_inner();
        Ok(reply.present.then_some(reply.value))
    }

    /// Describes a file or directory, without following a final symlink.
    pub async fn stat(&self, path: impl AsRef<[u8]>) -> Result<StatResponse, HostCallError> {
        Ok(self
            .client
            .clone()
            .stat(self.request(StatRequest {
                path: path.as_ref().to_vec(),
            }))
            .await?
            .into_inner())
    }

    /// Creates a directory, whose parent must exist; [`HostCallError::AlreadyExists`] if
    /// something has that name already.
    pub async fn create_dir(&self, path: impl AsRef<[u8]>) -> Result<(), HostCallError> {
        self.client
            .clone()
            .create_dir(self.request(CreateDirRequest {
                path: path.as_ref().to_vec(),
            }))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_passed_on_as_a_status_stays_a_typed_denial() {
        let denied = HostCallError::Denied {
            capability: "bus:publish:reports".to_owned(),
            message: "no grant covers it".to_owned(),
        };
        match HostCallError::from(Status::from(denied)) {
            HostCallError::Denied { capability, .. } => {
                assert_eq!(capability, "bus:publish:reports");
            }
            other => panic!("{other:?}"),
        }
    }
}
