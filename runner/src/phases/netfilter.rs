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

/// Remove CRIU's lock rules: what giving up means. The client's next
/// packet then meets a closed port and its connection is reset, instead
/// of hanging on forever. Returns how many rules were removed.
pub fn unlock(ctx: &Ctx<'_>) -> Result<usize, PhaseError> {
    // The saved rules, and the live ones of the session's connections: a
    // trip called off before the firewall was saved has only those.
    let mut rules: Vec<String> = ctx
        .state
        .handoff
        .lock_rules
        .iter()
        .map(|r| strip_counters(r))
        .collect();
    let ports: Vec<(u16, u16)> = ctx
        .state
        .session
        .as_ref()
        .map(|s| {
            s.tcp
                .iter()
                .map(|c| (c.local.port(), c.remote.port()))
                .collect()
        })
        .unwrap_or_default();
    for tool in ["iptables-save", "ip6tables-save"] {
        if which(tool).is_none() {
            continue;
        }
        let out = ctx
            .runner
            .run(&CommandSpec::new(tool).full_stdout().log_name("unlock-list"))?;
        for line in out.stdout.lines().filter(|l| is_lock_rule(l)) {
            let rule = strip_counters(line);
            if of_connections(&rule, &ports) && !rules.contains(&rule) {
                rules.push(rule);
            }
        }
    }
    let mut removed = 0;
    for rule in &rules {
        let Some(args) = delete_args(rule) else {
            continue;
        };
        let tool = if is_ipv6_rule(rule) {
            "ip6tables"
        } else {
            "iptables"
        };
        let out = ctx
            .runner
            .run(&CommandSpec::new(tool).args(args).log_name("unlock"))?;
        if out.success() {
            removed += 1;
        } else {
            // Already gone (criu removed it, or a firewall reload did).
            tracing::info!(rule = %rule, "lock rule was not there");
        }
    }
    Ok(removed)
}

/// A lock rule of one of the connections `(local port, remote port)`: criu
/// writes one per direction, `--sport` and `--dport` swapped.
fn of_connections(rule: &str, ports: &[(u16, u16)]) -> bool {
    ports.iter().any(|(local, remote)| {
        rule.contains(&format!("--sport {remote} --dport {local} "))
            || rule.contains(&format!("--sport {local} --dport {remote} "))
    })
}

/// `-A CHAIN spec...` as `iptables -w -D CHAIN spec...` arguments.
fn delete_args(rule: &str) -> Option<Vec<String>> {
    let rest = rule.strip_prefix("-A ")?;
    let mut args = vec!["-w".to_string(), "-D".to_string()];
    args.extend(rest.split_whitespace().map(str::to_string));
    Some(args)
}

fn is_ipv6_rule(rule: &str) -> bool {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if (w == "-s" || w == "-d") && words.next().is_some_and(|a| a.contains(':')) {
            return true;
        }
    }
    false
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
    fn lock_rules_become_deletions() {
        let rule = "[3:180] -A INPUT -s 10.0.2.2/32 -d 10.0.2.15/32 -p tcp -m mark ! --mark 0xc114 -m tcp --sport 59656 --dport 22 -j DROP";
        let args = delete_args(&strip_counters(rule)).unwrap();
        assert_eq!(
            args.join(" "),
            "-w -D INPUT -s 10.0.2.2/32 -d 10.0.2.15/32 -p tcp -m mark ! --mark 0xc114 -m tcp --sport 59656 --dport 22 -j DROP"
        );
        assert!(!is_ipv6_rule(rule));
        assert!(is_ipv6_rule(
            "-A OUTPUT -s fd00::1/128 -d fd00::2/128 -j DROP"
        ));
        assert!(delete_args(":INPUT ACCEPT").is_none());
        let rule = strip_counters(rule);
        assert!(of_connections(&rule, &[(22, 59656)]));
        let out = "-A OUTPUT -s 10.0.2.15/32 -d 10.0.2.2/32 -p tcp -m mark ! --mark 0xc114 -m tcp --sport 22 --dport 59656 -j DROP";
        assert!(of_connections(out, &[(22, 59656)]));
        assert!(!of_connections(&rule, &[(22, 59657)]));
        assert!(!of_connections(&rule, &[]));
    }

    #[test]
    fn counters_are_stripped() {
        assert_eq!(
            strip_counters("[3:180] -A INPUT -j DROP"),
            "-A INPUT -j DROP"
        );
        assert_eq!(strip_counters("-A INPUT -j DROP"), "-A INPUT -j DROP");
    }
}
