//! IMAP server (RFC 3501 / 9051). To be written.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::{Ctx, Io, Peer};

/// Run one IMAP session.
pub async fn run(
    _ctx: Arc<Ctx>,
    mut stream: Box<dyn Io>,
    _peer: Peer,
    _shutdown: watch::Receiver<bool>,
) {
    let _ = stream
        .write_all(b"* BYE IMAP is not implemented yet\r\n")
        .await;
}
