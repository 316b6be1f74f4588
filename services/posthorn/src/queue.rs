//! `posthorn queue`: the remote delivery queue (`mailq`, `sendmail -q`,
//! `postsuper -h/-H/-d` for the cluster), over the router's
//! `posthorn.queue.v1` API (docs/delivery.md, "Queue admin").

use std::process::ExitCode;

use clap::Subcommand;
use posthorn_proto::queue::v1 as pb;
use posthorn_proto::queue::v1::queue_service_client::QueueServiceClient;

use crate::admin::{ServerArg, channel, fail};

#[derive(Subcommand)]
pub enum QueueCmd {
    /// List queued deliveries: id, state, age, size, sender, recipient,
    /// attempts, next attempt, last error (tab-separated).
    List {
        /// Only this recipient domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only deferred items.
        #[arg(long)]
        deferred: bool,
    },
    /// Show one queued delivery.
    Show { id: String },
    /// Retry deferred deliveries now: one, a domain's, or all.
    Flush {
        /// The item (default: every deferred item, or --domain's).
        id: Option<String>,
        /// Every deferred item of this domain.
        #[arg(long, conflicts_with = "id")]
        domain: Option<String>,
    },
    /// Keep a delivery from being attempted until released.
    Hold { id: String },
    /// Release a held delivery (attempted at once).
    Release { id: String },
    /// Remove a delivery from the queue.
    Delete {
        id: String,
        /// Send the sender a bounce (without it, the item is dropped silently).
        #[arg(long)]
        bounce: bool,
    },
}

/// Run a queue command against the router at `server`.
pub fn run(server: ServerArg, cmd: QueueCmd) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("posthorn: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let mut c = match channel(server.url()).await {
            Ok(ch) => QueueServiceClient::new(ch),
            Err(code) => return code,
        };
        match exec(&mut c, cmd).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(s) => fail(s),
        }
    })
}

type Client = QueueServiceClient<tonic::transport::Channel>;

async fn exec(c: &mut Client, cmd: QueueCmd) -> Result<(), tonic::Status> {
    let now = chrono::Utc::now().timestamp();
    match cmd {
        QueueCmd::List { domain, deferred } => {
            let mut offset = 0;
            let mut shown = 0;
            let mut total;
            println!("ID\tSTATE\tAGE\tSIZE\tSENDER\tRECIPIENT\tATTEMPTS\tNEXT\tLAST ERROR");
            loop {
                let r = c
                    .list(pb::ListRequest {
                        domain: domain.clone().unwrap_or_default(),
                        deferred,
                        offset,
                        limit: 1000,
                    })
                    .await?
                    .into_inner();
                total = r.total;
                for i in &r.items {
                    println!("{}", line(i, now));
                }
                shown += r.items.len();
                if r.next_offset == 0 {
                    break;
                }
                offset = r.next_offset;
            }
            println!("-- {shown} shown, {total} queued");
        }
        QueueCmd::Show { id } => {
            let i = c.show(pb::ItemRequest { id }).await?.into_inner();
            println!("id: {}", i.id);
            println!("message: {}", i.message_id);
            println!("state: {}", i.state);
            println!("sender: <{}>", i.sender);
            println!("recipient: <{}>", i.recipient);
            println!("domain: {}", i.domain);
            println!("size: {}", i.size);
            println!(
                "received: {} ({} ago)",
                rfc3339(i.received_at),
                age(now - i.received_at)
            );
            println!("attempts: {}", i.attempts);
            if i.next_attempt > 0 {
                println!("next attempt: {}", rfc3339(i.next_attempt));
            }
            if !i.last_error.is_empty() {
                println!("last error: {}", i.last_error);
            }
        }
        QueueCmd::Flush { id, domain } => {
            let r = c
                .flush(pb::FlushRequest {
                    id: id.unwrap_or_default(),
                    domain: domain.unwrap_or_default(),
                })
                .await?
                .into_inner();
            println!("{} queued for delivery now", r.flushed);
        }
        QueueCmd::Hold { id } => {
            let i = c.hold(pb::ItemRequest { id }).await?.into_inner();
            println!("{} held", i.id);
        }
        QueueCmd::Release { id } => {
            let i = c.release(pb::ItemRequest { id }).await?.into_inner();
            println!("{} released", i.id);
        }
        QueueCmd::Delete { id, bounce } => {
            let i = c
                .delete(pb::DeleteRequest { id, bounce })
                .await?
                .into_inner();
            let how = if bounce {
                "with a bounce to the sender"
            } else {
                "silently"
            };
            println!("{} deleted {how}", i.id);
        }
    }
    Ok(())
}

fn line(i: &pb::QueueItem, now: i64) -> String {
    let next = if i.next_attempt > 0 {
        rfc3339(i.next_attempt)
    } else {
        "-".into()
    };
    let error = i.last_error.replace(['\t', '\r', '\n'], " ");
    format!(
        "{}\t{}\t{}\t{}\t<{}>\t<{}>\t{}\t{}\t{}",
        i.id,
        i.state,
        age(now - i.received_at),
        i.size,
        i.sender,
        i.recipient,
        i.attempts,
        next,
        if error.is_empty() { "-" } else { &error },
    )
}

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| t.to_string())
}

/// `1d2h`, `3h5m`, `4m10s`, `9s`.
fn age(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{}s", s % 60),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_lines() {
        assert_eq!(age(9), "9s");
        assert_eq!(age(250), "4m10s");
        assert_eq!(age(3 * 3600 + 300), "3h5m");
        assert_eq!(age(86_400 + 7200), "1d2h");
        let i = pb::QueueItem {
            id: "Q1/b@r.test".into(),
            state: "deferred".into(),
            sender: String::new(),
            recipient: "b@r.test".into(),
            received_at: 100,
            next_attempt: 0,
            last_error: "451\tlater".into(),
            ..Default::default()
        };
        assert_eq!(
            line(&i, 160),
            "Q1/b@r.test\tdeferred\t1m0s\t0\t<>\t<b@r.test>\t0\t-\t451 later"
        );
    }
}
