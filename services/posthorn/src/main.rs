//! `posthorn`: run the whole system in one process, run one tier, or
//! administer a running system over gRPC.

mod admin;
mod import;
mod queue;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use posthorn_backends::{Backends, BoxError, Provider, shutdown_channel};
use posthorn_config::Config;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad usage or configuration (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(name = "posthorn", version, about = "Posthorn mail system")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run all five tiers in one process on the embedded backends.
    Serve {
        /// Configuration file (TOML); defaults apply without one.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Data directory (overrides server.data_dir; default ./posthorn-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run one tier as its own process (Kubernetes), configured by file and env.
    Run {
        /// Which tier.
        tier: Tier,
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Local domains.
    Domain {
        #[command(flatten)]
        server: admin::ServerArg,
        #[command(subcommand)]
        cmd: admin::DomainCmd,
    },
    /// Accounts.
    User {
        #[command(flatten)]
        server: admin::ServerArg,
        #[command(subcommand)]
        cmd: admin::UserCmd,
    },
    /// Aliases.
    Alias {
        #[command(flatten)]
        server: admin::ServerArg,
        #[command(subcommand)]
        cmd: admin::AliasCmd,
    },
    /// Sendmail virtusertable import (virtual-domain aliases).
    Virtual {
        #[command(flatten)]
        server: admin::ServerArg,
        #[command(subcommand)]
        cmd: import::VirtualCmd,
    },
    /// Inspect mailboxes (like `doveadm fetch`).
    Mailbox {
        #[command(flatten)]
        server: admin::ServerArg,
        #[command(subcommand)]
        cmd: admin::MailboxCmd,
    },
    /// Quotas.
    Quota {
        #[command(flatten)]
        server: admin::ServerArg,
        #[command(subcommand)]
        cmd: admin::QuotaCmd,
    },
    /// The remote delivery queue (like `mailq`, `sendmail -q`, `postsuper`).
    Queue {
        #[command(flatten)]
        server: admin::ServerArg,
        #[command(subcommand)]
        cmd: queue::QueueCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a configuration file; names the bad key.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print the effective configuration (defaults, file, environment) as TOML.
    Show {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Tier {
    SmtpIngress,
    Access,
    Router,
    Resolver,
    Delivery,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config, data_dir } => {
            let mut cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => return usage(format!("invalid configuration: {e}")),
            };
            if let Some(d) = data_dir {
                cfg.server.data_dir = d;
            }
            runtime(async move { serve(Arc::new(cfg)).await })
        }
        Cmd::Run { tier, config } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => Arc::new(c),
                Err(e) => return usage(format!("invalid configuration: {e}")),
            };
            runtime(async move {
                let name = tier_name(tier);
                let _guard = posthorn_telemetry::init(name, &cfg.telemetry);
                let shutdown = shutdown_channel(posthorn_runtime::shutdown_signal());
                run_tier(tier, cfg.clone(), Provider::FromConfig(cfg), shutdown).await
            })
        }
        Cmd::Config { cmd } => match cmd {
            ConfigCmd::Check { file } => match Config::load_file_only(&file) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => usage(format!("{}: {e}", file.display())),
            },
            ConfigCmd::Show { config } => match Config::load(config.as_deref()) {
                Ok(c) => {
                    print!("{}", c.to_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => usage(format!("invalid configuration: {e}")),
            },
        },
        Cmd::Domain { server, cmd } => admin::run(server, admin::Admin::Domain(cmd)),
        Cmd::User { server, cmd } => admin::run(server, admin::Admin::User(cmd)),
        Cmd::Alias { server, cmd } => admin::run(server, admin::Admin::Alias(cmd)),
        Cmd::Quota { server, cmd } => admin::run(server, admin::Admin::Quota(cmd)),
        Cmd::Mailbox { server, cmd } => admin::run(server, admin::Admin::Mailbox(cmd)),
        Cmd::Virtual { server, cmd } => import::virtual_import(&server, cmd),
        Cmd::Queue { server, cmd } => queue::run(server, cmd),
    }
}

fn usage(msg: String) -> ExitCode {
    eprintln!("posthorn: {msg}");
    ExitCode::from(EX_USAGE)
}

fn runtime<F>(f: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), BoxError>>,
{
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("posthorn: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("posthorn: {e}");
            ExitCode::FAILURE
        }
    }
}

fn tier_name(t: Tier) -> &'static str {
    match t {
        Tier::SmtpIngress => "smtp-ingress",
        Tier::Access => "access",
        Tier::Router => "router",
        Tier::Resolver => "resolver",
        Tier::Delivery => "delivery",
    }
}

async fn run_tier(
    tier: Tier,
    cfg: Arc<Config>,
    provider: Provider,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), BoxError> {
    match tier {
        Tier::SmtpIngress => posthorn_smtp_ingress::run(cfg, provider, shutdown).await,
        Tier::Access => posthorn_access::run(cfg, provider, shutdown).await,
        Tier::Router => posthorn_router::run(cfg, provider, shutdown).await,
        Tier::Resolver => posthorn_resolver::run(cfg, provider, shutdown).await,
        Tier::Delivery => posthorn_delivery::run(cfg, provider, shutdown).await,
    }
}

/// `posthorn serve`: the embedded backends, opened once, shared by all tiers.
async fn serve(cfg: Arc<Config>) -> Result<(), BoxError> {
    let _guard = posthorn_telemetry::init("posthorn", &cfg.telemetry);
    let backends = Backends::open_embedded(&cfg)?;
    posthorn_tls::certificate_paths(&cfg)?;
    tracing::info!(data_dir = %cfg.server.data_dir.display(), "posthorn serve: embedded backends open");
    let shutdown = shutdown_channel(posthorn_runtime::shutdown_signal());
    let mut tasks = tokio::task::JoinSet::new();
    for tier in [
        Tier::Resolver,
        Tier::Router,
        Tier::Delivery,
        Tier::Access,
        Tier::SmtpIngress,
    ] {
        let (cfg, provider, shutdown) = (
            cfg.clone(),
            Provider::Ready(backends.clone()),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            (
                tier_name(tier),
                run_tier(tier, cfg, provider, shutdown).await,
            )
        });
    }
    let mut rx = shutdown.clone();
    // A tier failing (e.g. a port in use) stops the whole process.
    let mut failure: Option<BoxError> = None;
    loop {
        tokio::select! {
            _ = rx.changed() => break,
            Some(done) = tasks.join_next() => {
                match done {
                    Ok((name, Err(e))) => { failure = Some(format!("{name}: {e}").into()); break; }
                    Ok((name, Ok(()))) => tracing::info!(tier = name, "tier stopped"),
                    Err(e) => { failure = Some(format!("tier panicked: {e}").into()); break; }
                }
            }
        }
    }
    let grace = Duration::from_secs(cfg.server.shutdown_grace_secs);
    if failure.is_some() {
        tasks.abort_all();
    }
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "shutdown grace period over; exiting with work in flight"
        );
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
