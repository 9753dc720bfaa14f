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

/// Takes the backup into a temporary file in the store's directory (the store's writer waits only
/// for that), then streams the file: a slow or stalled client never holds up ingest. The answer
/// starts at once (a large store takes a while to copy, longer than the request timeout); an error
/// while taking or sending it ends the body with an error (the file then has no end marker, and
/// restore refuses it).
pub(crate) async fn backup(State(state): State<HttpState>) -> Response {
    let (sender, mut receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let (file, summary) = match store.snapshot_backup() {
            Ok(taken) => taken,
            Err(error) => {
                tracing::warn!(error = %crate::scheduler::error_chain(&error), "backup failed");
                let _ = sender.blocking_send(Err(std::io::Error::other(error.to_string())));
                return;
            }
        };
        let mut writer = ChannelWriter { sender: sender.clone() };
        match std::io::copy(&mut std::io::BufReader::with_capacity(1 << 16, file), &mut writer) {
            Ok(_) => {
                tracing::info!(trees = summary.trees, entries = summary.entries, bytes = summary.bytes, "backup sent");
            }
            Err(error) => {
                tracing::warn!(error = %error, "backup not sent whole");
                let _ = sender.blocking_send(Err(error));
            }
        }
    });
    let stream = futures::stream::poll_fn(move |context| receiver.poll_recv(context));
    ([(header::CONTENT_TYPE, "application/octet-stream")], Body::from_stream(stream)).into_response()
}
