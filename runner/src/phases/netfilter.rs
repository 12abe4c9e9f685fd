//! `netfilter`: the lock rules that keep the client's connection waiting
//! must be in place before the restore; re-apply the saved rules if not.

use crate::exec::CommandSpec;

use super::preflight::which;
use super::prepare_restore::is_lock_rule;
use super::{Ctx, PhaseError};

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), PhaseError> {
    let expected: Vec<String> = ctx
        .state
        .handoff
        .lock_rules
        .iter()
        .map(|r| strip_counters(r))
        .collect();
    if expected.is_empty() {
        tracing::info!("no CRIU lock rules were saved; nothing to check");
        return Ok(());
    }
    if missing(ctx, &expected)?.is_empty() {
        tracing::info!(rules = expected.len(), "CRIU lock rules in place");
        return Ok(());
    }
    tracing::warn!("CRIU lock rules missing after boot; loading the saved rules again");
    for file in ctx.state.handoff.firewall_files.clone() {
        let tool = if file.to_string_lossy().contains("ip6tables") {
            "ip6tables-restore"
        } else {
            "iptables-restore"
        };
        ctx.runner
            .run(&CommandSpec::new(tool).args([
                "-w".to_string(),
                "-c".to_string(),
                file.display().to_string(),
            ]))?
            .check()?;
    }
    let still = missing(ctx, &expected)?;
    if !still.is_empty() {
        return Err(PhaseError::new(
            "netfilter_rules_missing",
            format!(
                "{} CRIU lock rule(s) are missing and could not be loaded: {}",
                still.len(),
                still.join(" | ")
            ),
        ));
    }
    Ok(())
}

fn missing(ctx: &Ctx<'_>, expected: &[String]) -> Result<Vec<String>, PhaseError> {
    let mut live = String::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        if which(tool).is_some() {
            live.push_str(
                &ctx.runner
                    .run(&CommandSpec::new(tool).full_stdout())?
                    .check()?
                    .stdout,
            );
        }
    }
    let live: Vec<String> = live
        .lines()
        .filter(|l| is_lock_rule(l))
        .map(strip_counters)
        .collect();
    Ok(expected
        .iter()
        .filter(|r| !live.contains(r))
        .cloned()
        .collect())
}

fn strip_counters(line: &str) -> String {
    match line.strip_prefix('[') {
        Some(rest) => rest
            .split_once("] ")
            .map(|(_, r)| r.to_string())
            .unwrap_or_default(),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_stripped() {
        assert_eq!(
            strip_counters("[3:180] -A INPUT -j DROP"),
            "-A INPUT -j DROP"
        );
        assert_eq!(strip_counters("-A INPUT -j DROP"), "-A INPUT -j DROP");
    }
}
