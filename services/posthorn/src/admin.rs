//! Admin subcommands: thin gRPC calls to the router's directory API.

use std::io::Read;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use posthorn_proto::router::v1 as pb;
use posthorn_proto::router::v1::router_service_client::RouterServiceClient;
use tonic::Code;
use tonic::transport::Channel;

/// Exit code when the server cannot be reached (sysexits EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;
/// Exit code for bad usage (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit code for a refused request (exists, not found, invalid): EX_DATAERR.
const EX_DATAERR: u8 = 65;

#[derive(Args)]
pub struct ServerArg {
    /// Router gRPC URL of the system to administer.
    #[arg(
        long,
        env = "POSTHORN_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server: String,
}

impl ServerArg {
    /// The router gRPC URL.
    pub(crate) fn url(&self) -> &str {
        &self.server
    }
}

/// A connected router client.
pub(crate) type Client = RouterServiceClient<Channel>;

#[derive(Subcommand)]
pub enum DomainCmd {
    /// Add a local domain.
    Add { domain: String },
    /// List local domains.
    List,
    /// Remove a local domain (it must have no accounts).
    Remove { domain: String },
}

#[derive(Args)]
pub struct PasswordArgs {
    /// The password (visible in the process list; prefer --password-stdin).
    #[arg(long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from standard input (first line).
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add an account.
    Add {
        address: String,
        #[command(flatten)]
        pw: PasswordArgs,
    },
    /// List accounts.
    List {
        /// Only this domain's.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Show an account with its quota and usage.
    Show { address: String },
    /// Remove an account and all its mail.
    Remove { address: String },
    /// Change an account's password.
    Passwd {
        address: String,
        #[command(flatten)]
        pw: PasswordArgs,
    },
}

#[derive(Subcommand)]
pub enum AliasCmd {
    /// Add (or replace) an alias: `name@domain` or `@domain` (catch-all).
    Add {
        alias: String,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// List aliases.
    List,
    /// Remove an alias.
    Remove { alias: String },
    /// Import a Sendmail aliases(5) file (`name: target, ...`); all or nothing.
    Import {
        /// The aliases file (e.g. a copy of /etc/aliases).
        file: std::path::PathBuf,
        /// Domain of the alias names (default: the first local domain).
        #[arg(long)]
        domain: Option<String>,
        /// Parse and print what would be imported; do not contact the server.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
pub enum QuotaCmd {
    /// Set an account's limits (0 = unlimited).
    Set {
        address: String,
        #[arg(long, default_value_t = 0)]
        bytes: u64,
        #[arg(long, default_value_t = 0)]
        messages: u64,
    },
}

#[derive(Subcommand)]
pub enum MailboxCmd {
    /// List the messages of a mailbox (UID, size, flags).
    List {
        address: String,
        #[arg(long, default_value = "INBOX")]
        mailbox: String,
    },
    /// Print one message as a client would read it.
    Fetch {
        address: String,
        uid: u32,
        #[arg(long, default_value = "INBOX")]
        mailbox: String,
    },
}

pub enum Admin {
    Mailbox(MailboxCmd),
    Domain(DomainCmd),
    User(UserCmd),
    Alias(AliasCmd),
    Quota(QuotaCmd),
}

fn password(pw: PasswordArgs) -> Result<String, ExitCode> {
    match (pw.password, pw.password_stdin) {
        (Some(p), false) => Ok(p),
        (None, true) => {
            let mut s = String::new();
            if std::io::stdin().read_to_string(&mut s).is_err() {
                eprintln!("posthorn: cannot read the password from standard input");
                return Err(ExitCode::from(EX_USAGE));
            }
            Ok(s.lines().next().unwrap_or("").to_string())
        }
        _ => {
            eprintln!("posthorn: give --password PW or --password-stdin");
            Err(ExitCode::from(EX_USAGE))
        }
    }
}

pub fn run(server: ServerArg, cmd: Admin) -> ExitCode {
    if let Admin::Alias(AliasCmd::Import {
        file,
        domain,
        dry_run,
    }) = cmd
    {
        return crate::import::alias_import(&server, &file, domain, dry_run);
    }
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
    rt.block_on(run_async(server.server, cmd))
}

pub(crate) async fn connect(url: &str) -> Result<RouterServiceClient<Channel>, ExitCode> {
    Ok(RouterServiceClient::new(channel(url).await?))
}

/// A channel to the router's gRPC port (directory, admin and queue APIs).
pub(crate) async fn channel(url: &str) -> Result<Channel, ExitCode> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| {
            eprintln!("posthorn: invalid --server {url}: {e}");
            ExitCode::from(EX_USAGE)
        })?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30));
    let channel = endpoint.connect().await.map_err(|e| {
        eprintln!("posthorn: cannot reach the router at {url}: {e} (is `posthorn serve` running? --server sets the URL)");
        ExitCode::from(EX_UNAVAILABLE)
    })?;
    Ok(channel)
}

pub(crate) fn fail(status: tonic::Status) -> ExitCode {
    eprintln!("posthorn: {}", status.message());
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => ExitCode::from(EX_UNAVAILABLE),
        Code::InvalidArgument => ExitCode::from(EX_USAGE),
        Code::AlreadyExists | Code::NotFound | Code::FailedPrecondition => {
            ExitCode::from(EX_DATAERR)
        }
        _ => ExitCode::FAILURE,
    }
}

async fn run_async(url: String, cmd: Admin) -> ExitCode {
    let cmd = match cmd {
        Admin::User(UserCmd::Add { address, pw }) => match password(pw) {
            Ok(p) => Prepared::AddUser(address, p),
            Err(c) => return c,
        },
        Admin::User(UserCmd::Passwd { address, pw }) => match password(pw) {
            Ok(p) => Prepared::Passwd(address, p),
            Err(c) => return c,
        },
        other => Prepared::Other(other),
    };
    let mut c = match connect(&url).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let res: Result<(), tonic::Status> = async {
        match cmd {
            Prepared::AddUser(address, password) => {
                c.add_user(pb::AddUserRequest {
                    address: address.clone(),
                    password,
                })
                .await?;
                println!("user {address} added");
            }
            Prepared::Passwd(address, password) => {
                c.set_password(pb::SetPasswordRequest {
                    address: address.clone(),
                    password,
                })
                .await?;
                println!("password of {address} changed");
            }
            Prepared::Other(Admin::Domain(DomainCmd::Add { domain })) => {
                c.add_domain(pb::AddDomainRequest {
                    domain: domain.clone(),
                })
                .await?;
                println!("domain {domain} added");
            }
            Prepared::Other(Admin::Domain(DomainCmd::List)) => {
                for d in c
                    .list_domains(pb::ListDomainsRequest {})
                    .await?
                    .into_inner()
                    .domains
                {
                    println!("{d}");
                }
            }
            Prepared::Other(Admin::Domain(DomainCmd::Remove { domain })) => {
                c.remove_domain(pb::RemoveDomainRequest {
                    domain: domain.clone(),
                })
                .await?;
                println!("domain {domain} removed");
            }
            Prepared::Other(Admin::User(UserCmd::List { domain })) => {
                let r = c
                    .list_users(pb::ListUsersRequest {
                        domain: domain.unwrap_or_default(),
                    })
                    .await?;
                for a in r.into_inner().addresses {
                    println!("{a}");
                }
            }
            Prepared::Other(Admin::User(UserCmd::Show { address })) => {
                let u = c
                    .get_user(pb::GetUserRequest { address })
                    .await?
                    .into_inner();
                let lim = |n: u64| {
                    if n == 0 {
                        "unlimited".to_string()
                    } else {
                        n.to_string()
                    }
                };
                println!("address: {}", u.address);
                println!("messages: {} of {}", u.used_messages, lim(u.max_messages));
                println!("bytes: {} of {}", u.used_bytes, lim(u.max_bytes));
            }
            Prepared::Other(Admin::User(UserCmd::Remove { address })) => {
                c.remove_user(pb::RemoveUserRequest {
                    address: address.clone(),
                })
                .await?;
                println!("user {address} removed");
            }
            Prepared::Other(Admin::Alias(AliasCmd::Add { alias, targets })) => {
                c.add_alias(pb::AddAliasRequest {
                    alias: alias.clone(),
                    targets,
                })
                .await?;
                println!("alias {alias} set");
            }
            Prepared::Other(Admin::Alias(AliasCmd::List)) => {
                for a in c
                    .list_aliases(pb::ListAliasesRequest {})
                    .await?
                    .into_inner()
                    .aliases
                {
                    println!("{}: {}", a.alias, a.targets.join(", "));
                }
            }
            Prepared::Other(Admin::Alias(AliasCmd::Remove { alias })) => {
                c.remove_alias(pb::RemoveAliasRequest {
                    alias: alias.clone(),
                })
                .await?;
                println!("alias {alias} removed");
            }
            Prepared::Other(Admin::Quota(QuotaCmd::Set {
                address,
                bytes,
                messages,
            })) => {
                c.set_quota(pb::SetQuotaRequest {
                    address: address.clone(),
                    max_bytes: bytes,
                    max_messages: messages,
                })
                .await?;
                println!("quota of {address} set");
            }
            Prepared::Other(Admin::Mailbox(MailboxCmd::List { address, mailbox })) => {
                let mut first_uid = 1;
                loop {
                    let r = c
                        .list_messages(pb::ListMessagesRequest {
                            address: address.clone(),
                            mailbox: mailbox.clone(),
                            first_uid,
                        })
                        .await?
                        .into_inner();
                    if first_uid == 1 {
                        println!("UIDVALIDITY {}", r.uidvalidity);
                    }
                    for m in r.messages {
                        println!("{} {} {}", m.uid, m.size, m.flags.join(" "));
                    }
                    if r.next_uid == 0 {
                        break;
                    }
                    first_uid = r.next_uid;
                }
            }
            Prepared::Other(Admin::Mailbox(MailboxCmd::Fetch {
                address,
                uid,
                mailbox,
            })) => {
                let r = c
                    .fetch_message(pb::FetchMessageRequest {
                        address,
                        mailbox,
                        uid,
                    })
                    .await?
                    .into_inner();
                use std::io::Write;
                let _ = std::io::stdout().write_all(&r.content);
            }
            Prepared::Other(Admin::User(UserCmd::Add { .. } | UserCmd::Passwd { .. })) => {
                unreachable!("prepared above")
            }
            Prepared::Other(Admin::Alias(AliasCmd::Import { .. })) => {
                unreachable!("handled in run")
            }
        }
        Ok(())
    }
    .await;
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(s) => fail(s),
    }
}

enum Prepared {
    AddUser(String, String),
    Passwd(String, String),
    Other(Admin),
}
