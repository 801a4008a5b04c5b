//! The Kinto server a command writes into, and the account it writes as: the flags `restore`
//! and `migrate start` share, and the client they build from them.

use std::path::PathBuf;

use crate::config::{Secret, SourceAuth, SourceConfig};
use crate::source::kinto::KintoClient;

/// `--to`, `--user`, `--password-file` or `--password-env`, `--ignore-secrets-mismatch`.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// The Kinto server to write to.
    #[arg(long, value_name = "URL")]
    pub to: url::Url,
    /// The account to write as.
    #[arg(long)]
    pub user: String,
    /// File holding the account's password (first line).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "password_env",
        conflicts_with = "password_env"
    )]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the account's password.
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
    /// Write even if the target's identity secrets (`userid_hmac_secret`, the default
    /// bucket's secret) differ from the source's: its users then get other default bucket ids
    /// and `basicauth:` principals.
    #[arg(long)]
    pub ignore_secrets_mismatch: bool,
}

impl TargetArgs {
    /// Where the password is.
    pub fn secret(&self) -> anyhow::Result<Secret> {
        match (&self.password_file, &self.password_env) {
            (Some(file), None) => Ok(Secret::File(file.clone())),
            (None, Some(var)) => Ok(Secret::Env(var.clone())),
            _ => anyhow::bail!("give exactly one of --password-file and --password-env"),
        }
    }

    /// The target's root URL (ending in `/v1/`).
    pub fn root(&self) -> url::Url {
        crate::config::kinto_root(self.to.clone())
    }

    /// A client writing into the target, `concurrency` requests at a time.
    pub fn client(&self, concurrency: usize) -> anyhow::Result<KintoClient> {
        Ok(KintoClient::new(&SourceConfig {
            url: self.root(),
            auth: SourceAuth::Basic {
                user: self.user.clone(),
                password: self.secret()?,
            },
            poll: crate::config::DEFAULT_POLL,
            concurrency,
        })?)
    }
}
