//! Reading a request body: at most [`MAX_BODY_BYTES`], within
//! [`BODY_TIMEOUT`], as UTF-8.

use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::limits::MAX_BODY_BYTES;

/// Time a client has to send a whole body once its head has arrived.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a body was not read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    /// Longer than [`MAX_BODY_BYTES`].
    #[error("the body is larger than {} MiB", MAX_BODY_BYTES >> 20)]
    TooLarge,
    /// Not complete within [`BODY_TIMEOUT`].
    #[error("the body did not arrive within {}s", BODY_TIMEOUT.as_secs())]
    Timeout,
    /// The connection failed while reading.
    #[error("reading the body failed: {0}")]
    Read(String),
    /// Not UTF-8.
    #[error("the body must be UTF-8 YAML or JSON")]
    NotText,
}

impl BodyError {
    /// The status it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout => StatusCode::REQUEST_TIMEOUT,
            BodyError::Read(_) | BodyError::NotText => StatusCode::BAD_REQUEST,
        }
    }
}

/// The whole body as text. A declared `Content-Length` over the limit is
/// refused before anything is read.
pub async fn read_text(body: Body) -> Result<String, BodyError> {
    if axum::body::HttpBody::size_hint(&body).lower() > MAX_BODY_BYTES as u64 {
        return Err(BodyError::TooLarge);
    }
    let collected =
        tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect())
            .await
            .map_err(|_| BodyError::Timeout)?
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    BodyError::TooLarge
                } else {
                    BodyError::Read(e.to_string())
                }
            })?;
    String::from_utf8(collected.to_bytes().to_vec()).map_err(|_| BodyError::NotText)
}
