//! `GET /api/v1/backup`: a consistent backup of the running daemon's store, streamed
//! ([`crate::store::backup`]; `crmsync backup --out FILE` calls it while the daemon holds the store).

use std::io::Write;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::HttpState;

/// Hands the backup's bytes to the response body; fails once the client has gone.
struct ChannelWriter {
    sender: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sender
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Streams the backup; the store's writer waits while it is taken. An error mid-way ends the body
/// with an error (the file then has no end marker, and restore refuses it).
pub(crate) async fn backup(State(state): State<HttpState>) -> Response {
    let (sender, mut receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter { sender: sender.clone() };
        match store.write_backup(&mut writer) {
            Ok(summary) => {
                tracing::info!(trees = summary.trees, entries = summary.entries, bytes = summary.bytes, "backup sent");
            }
            Err(error) => {
                tracing::warn!(error = %crate::scheduler::error_chain(&error), "backup failed");
                let _ = sender.blocking_send(Err(std::io::Error::other(error.to_string())));
            }
        }
    });
    let stream = futures::stream::poll_fn(move |context| receiver.poll_recv(context));
    ([(header::CONTENT_TYPE, "application/octet-stream")], Body::from_stream(stream)).into_response()
}
