//! `tandem peers [--json]`: the configured peers and what flows each way.

use serde::Serialize;

use super::{Cli, load_config};
use crate::config::{OriginRef, PeerConfig, Schedule};

/// One peer as printed (`--json` prints `{"peers": [...]}` of these).
#[derive(Serialize)]
struct PeerDoc {
    name: String,
    url: String,
    id: String,
    schedule: String,
    push: Vec<String>,
    pull: Vec<String>,
    serve: Vec<String>,
    accept: Vec<String>,
}

impl From<&PeerConfig> for PeerDoc {
    fn from(p: &PeerConfig) -> PeerDoc {
        let origins = |list: &[OriginRef]| {
            list.iter()
                .map(|o| match o {
                    OriginRef::SelfNode => "self".to_owned(),
                    OriginRef::Node(id) => id.to_string(),
                })
                .collect()
        };
        PeerDoc {
            name: p.name.clone(),
            url: p.url.to_string(),
            id: p.id.to_string(),
            schedule: match &p.schedule {
                Schedule::Continuous => "continuous".to_owned(),
                Schedule::Cron(c) => c.text.clone(),
            },
            push: origins(&p.push),
            pull: origins(&p.pull),
            serve: origins(&p.serve),
            accept: origins(&p.accept),
        }
    }
}

/// Prints the peers from the configuration.
pub fn run(cli: &Cli, as_json: bool) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let peers: Vec<PeerDoc> = config.peers.iter().map(PeerDoc::from).collect();
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "peers": peers }))?
        );
        return Ok(());
    }
    if peers.is_empty() {
        println!("no peers configured in {}", config.path.display());
    }
    for p in &peers {
        println!("{}  {}  ({})", p.name, p.url, p.schedule);
        println!("  id      {}", p.id);
        for (direction, list) in [
            ("push", &p.push),
            ("pull", &p.pull),
            ("serve", &p.serve),
            ("accept", &p.accept),
        ] {
            let shown = if list.is_empty() {
                "-".to_owned()
            } else {
                list.join(", ")
            };
            println!("  {direction:<7} {shown}");
        }
    }
    Ok(())
}
