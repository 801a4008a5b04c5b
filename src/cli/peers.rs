//! `tandem peers`: the configured peers and what flows each way.

use serde_json::json;

use super::{Cli, load_config};
use crate::config::{OriginRef, Schedule};

fn origins(list: &[OriginRef]) -> Vec<String> {
    list.iter()
        .map(|o| match o {
            OriginRef::SelfNode => "self".to_owned(),
            OriginRef::Node(id) => id.to_string(),
        })
        .collect()
}

/// Prints the peers from the configuration.
pub fn run(cli: &Cli, as_json: bool) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let peers: Vec<_> = config
        .peers
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "url": p.url,
                "id": p.id,
                "schedule": match &p.schedule { Schedule::Continuous => "continuous".to_owned(), Schedule::Cron(c) => c.text.clone() },
                "push": origins(&p.push),
                "pull": origins(&p.pull),
                "serve": origins(&p.serve),
                "accept": origins(&p.accept),
            })
        })
        .collect();
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "peers": peers }))?
        );
        return Ok(());
    }
    if peers.is_empty() {
        println!("no peers configured in {}", config.path.display());
    }
    for p in &peers {
        println!(
            "{}  {}  ({})",
            p["name"].as_str().unwrap_or(""),
            p["url"].as_str().unwrap_or(""),
            p["schedule"].as_str().unwrap_or("")
        );
        println!("  id      {}", p["id"].as_str().unwrap_or(""));
        for dir in ["push", "pull", "serve", "accept"] {
            let list: Vec<&str> = p[dir]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect();
            println!(
                "  {dir:<7} {}",
                if list.is_empty() {
                    "-".to_owned()
                } else {
                    list.join(", ")
                }
            );
        }
    }
    Ok(())
}
