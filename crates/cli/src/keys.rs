//! `cairn keys`: administer API keys on `cairn-auth` (needs a `keys:admin` key).

use std::process::ExitCode;

use anyhow::{Context, bail};
use cairn_proto::{
    Timestamp,
    cairn::auth::v1::{self as pb, key_admin_service_client::KeyAdminServiceClient},
};
use clap::{Args, Subcommand};

use crate::time::{format_timestamp, parse_duration};

/// Where and as whom.
#[derive(Args)]
pub struct KeysArgs {
    /// Address of cairn-auth.
    #[arg(long, default_value = "127.0.0.1:50051", global = true)]
    addr: String,
    /// An API key with the keys:admin scope.
    #[arg(long, env = "CAIRN_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Issue a key; prints the key itself (shown once) on stdout.
    Create {
        /// A name for people: what or who uses the key.
        #[arg(long)]
        name: String,
        /// A scope such as topics:produce:clicks (repeat for more).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Lifetime, e.g. 90d, 12h, 30m; omit for a key that does not expire.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List keys, newest first (never secrets).
    List {
        /// Include revoked keys.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a key at once.
    Revoke {
        /// Key id (the 12 characters after `cairn_`).
        id: String,
    },
    /// Issue a replacement; the old key keeps working for the grace period.
    Rotate {
        /// Key id.
        id: String,
        /// How long the old key stays valid, e.g. 1h (server default: 24h).
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
    },
}

async fn connect(addr: &str) -> anyhow::Result<KeyAdminServiceClient<cairn_service::Client>> {
    Ok(KeyAdminServiceClient::new(crate::rpc::connect(addr).await?))
}

fn request<T>(message: T, key: &str) -> anyhow::Result<tonic::Request<T>> {
    crate::rpc::request(message, Some(key))
}

fn status(key: &pb::KeyInfo) -> &'static str {
    if key.revoked_at.is_some() {
        return "revoked";
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match &key.expires_at {
        Some(t) if t.seconds <= now => "expired",
        _ => "active",
    }
}

fn when(t: &Option<Timestamp>) -> String {
    t.as_ref().map(format_timestamp).unwrap_or_else(|| "-".into())
}

/// Runs a `cairn keys` command.
pub async fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let Some(key) = args.api_key.as_deref() else {
        bail!("an admin API key is needed: pass --api-key or set CAIRN_API_KEY");
    };
    let mut admin = connect(&args.addr).await?;
    match args.command {
        KeysCommand::Create { name, scopes, expires } => {
            let expires_at = match expires {
                None => None,
                Some(text) => {
                    let lifetime = parse_duration(&text)?;
                    let at = std::time::SystemTime::now() + lifetime;
                    let secs = at.duration_since(std::time::UNIX_EPOCH)?.as_secs();
                    Some(Timestamp {
                        seconds: secs as i64,
                        nanos: 0,
                    })
                }
            };
            let created = admin
                .create_key(request(
                    pb::CreateKeyRequest {
                        name,
                        scopes,
                        expires_at,
                    },
                    key,
                )?)
                .await?
                .into_inner();
            let info = created.key.context("no key in response")?;
            eprintln!(
                "created key {} ({}), expires {}; it is shown once:",
                info.key_id,
                info.scopes.join(" "),
                when(&info.expires_at)
            );
            println!("{}", created.api_key);
        }
        KeysCommand::List { all } => {
            let mut token = String::new();
            println!(
                "{:<12}  {:<20}  {:<8}  {:<20}  {:<20}  {:<20}  SCOPES",
                "ID", "NAME", "STATUS", "CREATED", "EXPIRES", "LAST USED"
            );
            loop {
                let page = admin
                    .list_keys(request(
                        pb::ListKeysRequest {
                            include_revoked: all,
                            page_size: 500,
                            page_token: token,
                        },
                        key,
                    )?)
                    .await?
                    .into_inner();
                for k in &page.keys {
                    println!(
                        "{:<12}  {:<20}  {:<8}  {:<20}  {:<20}  {:<20}  {}",
                        k.key_id,
                        k.name,
                        status(k),
                        when(&k.created_at),
                        when(&k.expires_at),
                        when(&k.last_used_at),
                        k.scopes.join(" ")
                    );
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
        KeysCommand::Revoke { id } => {
            let revoked = admin
                .revoke_key(request(pb::RevokeKeyRequest { key_id: id }, key)?)
                .await?
                .into_inner();
            let info = revoked.key.context("no key in response")?;
            println!("revoked {} at {}", info.key_id, when(&info.revoked_at));
        }
        KeysCommand::Rotate { id, grace } => {
            let grace_period = grace
                .map(|g| parse_duration(&g))
                .transpose()?
                .map(|d| cairn_proto::Duration {
                    seconds: d.as_secs() as i64,
                    nanos: 0,
                });
            let rotated = admin
                .rotate_key(request(
                    pb::RotateKeyRequest {
                        key_id: id,
                        grace_period,
                    },
                    key,
                )?)
                .await?
                .into_inner();
            let new = rotated.key.context("no key in response")?;
            let old = rotated.previous.context("no previous key in response")?;
            eprintln!(
                "rotated {} -> {}; the old key works until {}. The new key is shown once:",
                old.key_id,
                new.key_id,
                when(&old.expires_at)
            );
            println!("{}", rotated.api_key);
        }
    }
    Ok(ExitCode::SUCCESS)
}
