//! `tandem config check`: validate a configuration file and summarize it.

use std::path::Path;

use crate::config::{Config, Schedule, Secret, SourceAuth};

/// Validates `path`; prints a summary on success.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    println!("{}: ok", path.display());
    println!(
        "  node {:?}, data in {}, listening on {}",
        config.node.name,
        config.node.data_dir.display(),
        config.node.listen
    );
    match &config.source {
        Some(s) => {
            let from = |secret: &Secret| match secret {
                Secret::File(f) => format!("from file {}", f.display()),
                Secret::Env(v) => format!("from ${v}"),
            };
            let secret = match &s.auth {
                SourceAuth::Basic { user, password } => {
                    format!("as {user:?}, password {}", from(password))
                }
                SourceAuth::Bearer { token } => format!("bearer token {}", from(token)),
            };
            println!(
                "  source kinto at {} ({secret}), polled every {}",
                s.url,
                humantime::format_duration(s.poll)
            );
        }
        None => println!("  no source: this node only keeps other origins"),
    }
    if let Some(s) = &config.snapshots {
        println!(
            "  snapshots on {:?}, keep last {} hourly {} daily {} weekly {} monthly {}",
            s.schedule.text,
            s.keep_last,
            s.keep_hourly,
            s.keep_daily,
            s.keep_weekly,
            s.keep_monthly
        );
    }
    if let Some(d) = &config.drill {
        let from = match &d.password {
            Secret::File(f) => format!("from file {}", f.display()),
            Secret::Env(v) => format!("from ${v}"),
        };
        println!(
            "  restore drills on {:?} into the scratch kinto at {} (as {:?}, password {from})",
            d.schedule.text, d.to, d.user
        );
    }
    if let Some(url) = &config.node.heartbeat_url {
        // Only the host: the path of a monitor's URL is often its secret.
        println!(
            "  heartbeat: GET to {} after every successful round",
            url.host_str().unwrap_or_default()
        );
    }
    for p in &config.peers {
        let schedule = match &p.schedule {
            Schedule::Continuous => "continuous".to_owned(),
            Schedule::Cron(c) => format!("cron {:?}", c.text),
        };
        println!("  peer {:?} at {} ({schedule})", p.name, p.url);
    }
    Ok(())
}
