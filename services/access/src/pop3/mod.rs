//! POP3 server (RFC 1939, 2449, 2595, 5034). To be written.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::{Ctx, Io, Peer};

/// Run one POP3 session.
pub async fn run(
    _ctx: Arc<Ctx>,
    mut stream: Box<dyn Io>,
    _peer: Peer,
    _shutdown: watch::Receiver<bool>,
) {
    let _ = stream
        .write_all(b"-ERR [SYS/PERM] POP3 is not implemented yet\r\n")
        .await;
}
