//! The `ferry` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use ferry::config::Config;
use ferry::state::{Outcome, RunDir};
use std::io::Write as _;

use ferry::{diagnose, resume, telemetry, trip};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Carry a live CI session across an OS upgrade and a kexec reboot"
)]
struct Cli {
    /// Config file [env: FERRY_CONFIG] (default /etc/ferry/ferry.toml when
    /// present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upgrade, checkpoint this session, reboot into the new kernel and
    /// come back: returns 0 on the new kernel, non-zero on the old one.
    Upgrade(UpgradeArgs),
    /// Restore a checkpointed session after the reboot (run by
    /// ferry-resume.service); --retry tries again after a failed restore,
    /// --give-up stops trying.
    Resume {
        /// The run directory (with --retry or --give-up: default the newest
        /// run whose restore failed and that is still open).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Start the next restore attempt (images and lock rules were kept)
        /// and wait for it: exit 0 when the session runs again.
        #[arg(long, conflicts_with = "give_up")]
        retry: bool,
        /// Stop trying: remove CRIU's lock rules (the client's connection is
        /// reset), disable the units, ship the bundle.
        #[arg(long)]
        give_up: bool,
    },
    /// Rehearse the trip on this kernel, without a reboot: preflight,
    /// locate, assess, the upgrade simulated, the kernel loaded then
    /// unloaded, `criu dump --leave-running` into a scratch directory.
    /// Exit 0 when the trip would work, 1 with what would fail.
    Rehearse(RehearseArgs),
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Name the failure in CRIU dump/restore logs and dmesg, with evidence and
    /// remedy. Exit status: 0 no failure found, 1 a failure (diagnosed or
    /// unknown), 2 the inputs could not be read.
    Diagnose {
        /// Bundles (.tar.gz), run or logs directories, or log files.
        #[arg(required = true, value_name = "BUNDLE|DIR|LOG")]
        inputs: Vec<PathBuf>,
        /// Print the diagnosis as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A run's timeline (phases, durations, the boot gap, the diagnosis)
    /// from a bundle or a run directory; --html writes report.html.
    Report {
        #[arg(value_name = "BUNDLE|RUN_DIR")]
        input: PathBuf,
        /// Also write the self-contained HTML report here.
        #[arg(long, value_name = "PATH")]
        html: Option<PathBuf>,
    },
    /// List the bundles in a backend; with --extract, download, verify every
    /// file's sha256 against the manifest and extract them safely.
    Pull(PullArgs),
    /// Ship every bundle waiting in the spool to every destination that
    /// lacks it, and re-send the spans runs could not export. Exit status:
    /// 0 the spool is empty, 1 bundles still wait (or some are in
    /// quarantine), 2 an error.
    Ship(ShipArgs),
    /// Look at and act on the spool's entries.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Install (or with --uninstall remove) ferry-ship.service and
    /// ferry-ship.timer, which drain the spool after every boot and
    /// periodically.
    Install(InstallArgs),
    #[command(name = "__worker", hide = true)]
    Worker {
        #[arg(long)]
        run_dir: PathBuf,
    },
    #[command(name = "__finish", hide = true)]
    Finish {
        #[arg(long)]
        run_dir: PathBuf,
    },
    /// End the runs beside this one that died (root span, bundle) and
    /// re-send what any run has not exported.
    #[command(name = "__janitor", hide = true)]
    Janitor {
        #[arg(long)]
        run_dir: PathBuf,
    },
    #[command(name = "__rehearse", hide = true)]
    Rehearsal {
        #[arg(long)]
        run_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate and print the effective configuration, secrets masked.
    Check,
}

#[derive(clap::Args)]
struct ShipArgs {
    /// Fail at once if another drain holds the spool, instead of waiting.
    #[arg(long)]
    no_wait: bool,
    /// Longest wait for another drain, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    wait_secs: u64,
    /// Also try destinations parked by a permanent failure.
    #[arg(long)]
    retry_parked: bool,
    /// Print the drain's report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// The waiting and quarantined entries.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One entry: its key, checksum, and every destination's state.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Un-park an entry (or --all) after fixing a permanent failure, so the
    /// next `ferry ship` tries it again.
    #[command(override_usage = "ferry spool retry <ID|--all>")]
    Retry {
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Delete one entry (waiting or quarantined) for good; its id must be
    /// given.
    Drop { id: String },
    /// Put a file (e.g. an old bundle) into the spool for the configured
    /// destinations; `ferry ship` sends it.
    Add {
        file: PathBuf,
        /// The key to store it under (default: the file's name).
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(clap::Args)]
struct InstallArgs {
    /// Remove the units instead.
    #[arg(long)]
    uninstall: bool,
    /// Where the units go.
    #[arg(long, value_name = "DIR", default_value = ferry::units::UNIT_DIR)]
    unit_dir: PathBuf,
    /// Only write the files: no daemon-reload, no enable.
    #[arg(long)]
    no_systemctl: bool,
}

#[derive(clap::Args)]
struct PullArgs {
    /// The backend to read: dir, or another of ship.backends (default: the
    /// first of ship.backends).
    #[arg(long)]
    backend: Option<String>,
    /// The dir backend's directory (default: ship.dir of the config).
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// Only this run (a run id or its prefix).
    #[arg(long, value_name = "ID")]
    run: Option<String>,
    /// Only bundles of this host.
    #[arg(long, value_name = "H")]
    host: Option<String>,
    /// Only bundles with this result.
    #[arg(long, value_name = "R", value_parser = ["succeeded", "failed", "called_off", "died"])]
    result: Option<String>,
    /// Only bundles modified since: 30m, 12h, 7d, 2026-01-31, 2026-01-31T12:00:00Z.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only the N newest (1 or more).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    newest: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Download, verify and extract the chosen bundles into DIR.
    #[arg(long, value_name = "DIR")]
    extract: Option<PathBuf>,
    /// Refuse to extract a bundle larger than this many MiB.
    #[arg(long, value_name = "MIB", default_value_t = 8192)]
    max_extract_mib: u64,
}

#[derive(clap::Args)]
struct RehearseArgs {
    /// Rehearse for the process tree rooted here instead of this ssh session.
    #[arg(long)]
    pid: Option<i32>,
    /// Do not simulate the package upgrade.
    #[arg(long)]
    no_upgrade: bool,
    /// The kernel the trip would boot.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// The initrd for --kernel.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Where runs live.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct UpgradeArgs {
    /// Checkpoint the process tree rooted here instead of this ssh session.
    #[arg(long)]
    pid: Option<i32>,
    /// Switch the apt sources to this release (codename) first.
    #[arg(long, value_name = "CODENAME")]
    release: Option<String>,
    /// Skip the package upgrade.
    #[arg(long)]
    no_upgrade: bool,
    /// The upgrade command, run with `sh -c`.
    #[arg(long, value_name = "COMMAND")]
    upgrade_command: Option<String>,
    /// Boot this kernel image instead of the newest in /boot.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// The initrd for --kernel.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Boot the running kernel again when nothing newer is installed.
    #[arg(long)]
    allow_same_kernel: bool,
    /// Where runs live.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[path = "cli/config_check.rs"]
mod config_check;
#[path = "cli/spool.rs"]
mod spool_cmd;

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(Config::load(path, &|k| std::env::var(k).ok())?)
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // Read here rather than by clap: an empty FERRY_CONFIG (a CI template
    // that sets every variable) means "not set", not a missing value.
    if cli.config.is_none() {
        cli.config = std::env::var_os("FERRY_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
    }
    let telemetry = telemetry::init();
    match run(cli, &telemetry) {
        Ok(code) => code,
        // A reader that went away (`ferry … | head`) is not an error to
        // report: end as a program killed by SIGPIPE would.
        Err(e) if is_broken_pipe(&e) => ExitCode::from(141),
        Err(e) => {
            print_error(&e);
            ExitCode::from(2)
        }
    }
}

/// `ferry: error: …` on stderr, causes once, secrets out, escapes shown.
fn print_error(e: &anyhow::Error) {
    eprintln!("ferry: error: {}", redacted(&error_text(e)));
}

/// `text` with the secret values of this process's environment replaced,
/// as bundles have them: a value the user put where a secret appears (an
/// endpoint with a password, a token in a command) stays out of the log.
fn redacted(text: &str) -> String {
    // Shorter values (`test`, a LocalStack default) would mangle ordinary
    // words on the screen; a real credential is longer.
    let secrets: Vec<String> = ferry::secrets::Secrets::from_env(&|k| std::env::var(k).ok())
        .values()
        .into_iter()
        .filter(|s| s.len() >= 8)
        .collect();
    let text = ferry::secrets::mask_userinfo(text);
    ferry_uploaders::bundle::redact_text(&secrets, &text).unwrap_or(text)
}

/// The reader of stdout went away: an io error in the chain, or one that
/// serde_json wraps (its `source` skips the io error itself).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    let pipe = Some(std::io::ErrorKind::BrokenPipe);
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().map(std::io::Error::kind) == pipe
            || c.downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == pipe
    })
}

/// The error and its causes on one line, each cause once: most of ferry's
/// errors already quote their cause (`cannot read X: No such file…`), and
/// `{:#}` would print it again. Control characters (from a key, a path, a
/// server's reply) are shown escaped.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    ferry::printable::printable(&text)
}

fn run(cli: Cli, telemetry: &telemetry::Telemetry) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Upgrade(args) => {
            let mut config = load_config(cli.config.as_deref())?;
            if let Some(r) = args.release {
                config.upgrade.release = r;
            }
            if args.no_upgrade {
                config.upgrade.enabled = false;
            }
            if let Some(c) = args.upgrade_command {
                config.upgrade.command = c;
            }
            if let Some(k) = args.kernel {
                config.kernel.path = Some(k);
            }
            if let Some(i) = args.initrd {
                config.kernel.initrd = Some(i);
            }
            if args.allow_same_kernel {
                config.kernel.allow_same = true;
            }
            if let Some(d) = args.state_dir {
                config.state_dir = d;
            }
            let opts = trip::UpgradeOptions { pid: args.pid };
            match trip::upgrade(&config, &opts, telemetry) {
                Ok(outcome) => Ok(report(&outcome)),
                Err(trip::TripError::Preflight(msg)) => {
                    eprintln!("ferry: preflight failed, nothing was touched:");
                    for problem in msg.split("; ") {
                        eprintln!("  - {}", redacted(problem));
                    }
                    Ok(ExitCode::from(2))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Resume {
            run_dir,
            retry,
            give_up,
        } => {
            let find = || -> anyhow::Result<RunDir> {
                match &run_dir {
                    Some(d) => Ok(RunDir::new(d)),
                    None => {
                        let config = load_config(cli.config.as_deref())?;
                        Ok(resume::waiting_run(&config.runs_dir())?)
                    }
                }
            };
            let code = if retry {
                resume::retry(&find()?)?
            } else if give_up {
                resume::give_up_now(&find()?, telemetry, "given up by `ferry resume --give-up`")?
            } else {
                let dir = run_dir.context("--run-dir is required (or use --retry / --give-up)")?;
                resume::resume(&RunDir::new(dir), telemetry)?
            };
            Ok(ExitCode::from(code as u8))
        }
        Command::Rehearse(args) => {
            let mut config = load_config(cli.config.as_deref())?;
            if args.no_upgrade {
                config.upgrade.enabled = false;
            }
            if let Some(k) = args.kernel {
                config.kernel.path = Some(k);
            }
            if let Some(i) = args.initrd {
                config.kernel.initrd = Some(i);
            }
            if let Some(d) = args.state_dir {
                config.state_dir = d;
            }
            let report = ferry::rehearse::rehearse(&config, args.pid, telemetry)?;
            eprint!("{}", redacted(&report.render()));
            Ok(if report.would_work() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Rehearsal { run_dir } => {
            ferry::rehearse::worker(&RunDir::new(run_dir), telemetry)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker { run_dir } => {
            trip::worker(&RunDir::new(run_dir), telemetry)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Finish { run_dir } => {
            let code = resume::finish(&RunDir::new(run_dir), telemetry)?;
            Ok(ExitCode::from(code as u8))
        }
        Command::Janitor { run_dir } => {
            let runs = run_dir
                .parent()
                .context("the run directory has no parent")?;
            bury_dead_runs(runs, Some(&run_dir), telemetry);
            Ok(ExitCode::SUCCESS)
        }
        Command::Diagnose { inputs, json } => diagnose_cmd(&inputs, json),
        Command::Report { input, html } => report_cmd(&input, html.as_deref()),
        Command::Pull(args) => pull_cmd(cli.config.as_deref(), args),
        Command::Ship(args) => ship_cmd(cli.config.as_deref(), args, telemetry),
        Command::Spool { command } => spool_cmd::run(&load_config(cli.config.as_deref())?, command),
        Command::Install(args) => install_cmd(cli.config.as_deref(), args, telemetry),
        Command::Config {
            command: ConfigCommand::Check,
        } => config_check::run(&load_config(cli.config.as_deref())?, &redacted),
    }
}

/// `ferry diagnose`: bundles are verified and extracted to a scratch
/// directory first.
fn diagnose_cmd(inputs: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let limits = ferry_uploaders::bundle::ExtractLimits::default();
    let mut opened = Vec::new();
    let mut paths = Vec::new();
    for input in inputs {
        if diagnose::is_bundle(input) {
            let b = diagnose::open_bundle(input, &limits)?;
            paths.push(b.dir.clone());
            opened.push((b, input));
        } else {
            paths.push(input.clone());
        }
    }
    // A log in a bundle's scratch copy is named by the bundle: the copy is
    // gone when this returns, and with several inputs it tells them apart.
    let single = inputs.len() == 1;
    let show = |p: &std::path::Path| {
        for (b, input) in &opened {
            if let Ok(rel) = p.strip_prefix(&b.dir) {
                return if single {
                    rel.display().to_string()
                } else {
                    format!("{}/{}", input.display(), rel.display())
                };
            }
        }
        p.display().to_string()
    };
    let d = diagnose::diagnose_paths_shown(&paths, &show)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &d).context("cannot write to stdout")?;
        writeln!(out).context("cannot write to stdout")?;
    } else {
        write!(out, "{}", diagnose::render::human(&d)).context("cannot write to stdout")?;
    }
    out.flush().context("cannot write to stdout")?;
    Ok(match d.verdict {
        diagnose::Verdict::NoFailure => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// `ferry report`: the timeline of a bundle (verified and extracted to a
/// scratch directory) or of a run directory.
fn report_cmd(input: &std::path::Path, html: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let limits = ferry_uploaders::bundle::ExtractLimits::default();
    std::fs::metadata(input).with_context(|| {
        format!(
            "cannot read {}; give a bundle (.tar.gz) or a run directory",
            input.display()
        )
    })?;
    let opened = if diagnose::is_bundle(input) {
        Some(diagnose::open_bundle(input, &limits)?)
    } else {
        None
    };
    if opened.is_none() && !input.is_dir() {
        let hint = if input.extension().is_some_and(|e| e == "log") {
            "; for a log file use `ferry diagnose`"
        } else {
            ""
        };
        anyhow::bail!(
            "{} is neither a bundle (.tar.gz) nor a run directory{hint}",
            input.display()
        );
    }
    let dir = opened.as_ref().map_or(input, |b| b.dir.as_path());
    let state_path = dir.join("state.json");
    let state: serde_json::Value = match std::fs::read(&state_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not JSON", state_path.display()))?,
        Err(e) if e.kind() != std::io::ErrorKind::NotFound && opened.is_none() => {
            anyhow::bail!("cannot read {}: {e}", state_path.display())
        }
        Err(_) => match &opened {
            Some(b) => b.manifest.run.clone(),
            None => anyhow::bail!(
                "{} has no state.json; give a bundle or a run directory",
                input.display()
            ),
        },
    };
    let timeline = ferry::report::Timeline::from_json(&state);
    if timeline.run_id.is_empty() && timeline.bars.is_empty() {
        anyhow::bail!(
            "{} names no run and no phase: it is not a ferry run's state; give a bundle or a run directory",
            if opened.is_some() && !state_path.exists() {
                format!("the manifest of {}", input.display())
            } else {
                state_path.display().to_string()
            }
        );
    }
    let diagnosis = diagnose::diagnose_paths(&[dir.to_path_buf()], Some(dir)).ok();
    // The page first: a path that cannot be written fails the command
    // before a timeline is printed as if all went well.
    if let Some(path) = html {
        refuse_html_over_input(path, input)?;
        // Written beside and renamed into place: a link at the path (to the
        // bundle, to state.json) is replaced, never written through.
        ferry::state::write_atomic(
            path,
            ferry::report::html(&timeline, diagnosis.as_ref()).as_bytes(),
        )
        .with_context(|| {
            format!(
                "cannot write the page to {}; give --html a path in a writable directory",
                path.display()
            )
        })?;
    }
    std::io::stdout()
        .write_all(ferry::report::text(&timeline, diagnosis.as_ref()).as_bytes())
        .context("cannot write to stdout")?;
    if let Some(path) = html {
        eprintln!("ferry: wrote {}", path.display());
    }
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// `--html` must not write over what the report is made from: the bundle
/// itself, or a file of the run directory (its state.json).
fn refuse_html_over_input(html: &std::path::Path, input: &std::path::Path) -> anyhow::Result<()> {
    let real = |p: &std::path::Path| {
        let name = p.file_name()?;
        Some(
            std::fs::canonicalize(ferry_uploaders::paths::dir_of(p))
                .ok()?
                .join(name),
        )
    };
    let (Some(page), Ok(source)) = (real(html), std::fs::canonicalize(input)) else {
        return Ok(());
    };
    if page == source || (source.is_dir() && page.starts_with(&source)) {
        anyhow::bail!(
            "--html {} would write over the report's own input {}; give the page a path outside it",
            html.display(),
            input.display()
        );
    }
    Ok(())
}

/// `ferry pull`.
fn pull_cmd(config: Option<&std::path::Path>, args: PullArgs) -> anyhow::Result<ExitCode> {
    use ferry::pull;
    let mut cfg = load_config(config)?;
    // `--dir` names a dir store: it chooses the backend unless one is named.
    let dir_given = args.dir.is_some();
    if let Some(d) = args.dir {
        cfg.ship.dir = d;
    }
    let name = match args.backend {
        Some(b) => b,
        None if dir_given => "dir".into(),
        None => cfg
            .ship
            .backends
            .first()
            .cloned()
            .unwrap_or_else(|| "dir".into()),
    };
    // A mistyped path must not read as an empty store.
    if name == "dir" && !cfg.ship.dir.is_dir() {
        anyhow::bail!(
            "{} is not a directory: give the directory bundles were shipped to (--dir or ship.dir)",
            cfg.ship.dir.display()
        );
    }
    let backend = ferry::destinations::open(&name, &cfg, &|k| std::env::var(k).ok())?;
    let since = match &args.since {
        Some(s) => Some(pull::parse_since(s, std::time::SystemTime::now())?),
        None => None,
    };
    let filter = pull::Filter {
        run: args.run,
        host: args.host,
        result: args.result,
        since,
        newest: args
            .newest
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let listed = pull::list(backend.as_ref(), &filter)?;
    let mut out = std::io::stdout().lock();
    let Some(dest) = args.extract else {
        if args.json {
            serde_json::to_writer_pretty(&mut out, &listed).context("cannot write to stdout")?;
            writeln!(out).context("cannot write to stdout")?;
        } else if listed.is_empty() {
            eprintln!("ferry: no bundle matches");
        } else {
            out.write_all(pull::table(&listed).as_bytes())
                .context("cannot write to stdout")?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let limits = ferry_uploaders::bundle::ExtractLimits {
        max_total_bytes: args.max_extract_mib.saturating_mul(1 << 20),
        ..Default::default()
    };
    let mut pulled = Vec::new();
    // One bad bundle must not hide the good ones after it: each failure is
    // named as it happens and the pull fails at the end.
    let mut failed = 0usize;
    for item in &listed {
        let p = match pull::fetch(backend.as_ref(), item, &dest, &limits) {
            Ok(p) => p,
            Err(e @ pull::PullError::Create { .. }) => return Err(e.into()),
            Err(e) => {
                failed += 1;
                print_error(&e.into());
                continue;
            }
        };
        if !args.json {
            writeln!(
                out,
                "{}: {} files verified, extracted to {}",
                ferry::printable::one_line(&p.key),
                p.files_verified,
                ferry::printable::one_line(&p.extracted_to.display().to_string())
            )
            .context("cannot write to stdout")?;
        }
        pulled.push(p);
    }
    if args.json {
        serde_json::to_writer_pretty(&mut out, &pulled).context("cannot write to stdout")?;
        writeln!(out).context("cannot write to stdout")?;
    }
    if listed.is_empty() {
        eprintln!("ferry: no bundle matches");
    }
    if failed > 0 {
        let total = listed.len();
        if failed == total {
            anyhow::bail!("no bundle could be pulled ({failed} failed, each named above)");
        }
        anyhow::bail!(
            "{failed} of {total} bundles could not be pulled (each named above); the other {} are in {}",
            total - failed,
            dest.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Ends the runs under `runs` that died (root span, bundle into the
/// spool), but `except`, and re-sends what runs have not exported.
fn bury_dead_runs(
    runs: &std::path::Path,
    except: Option<&std::path::Path>,
    telemetry: &telemetry::Telemetry,
) {
    let buried = ferry::janitor::sweep(
        runs,
        except,
        telemetry,
        &ferry::janitor::Facts::here(),
        &|run| {
            let secrets = ferry::secrets::Secrets::for_run(run).values();
            let r = ferry::exec::SystemRunner::new(telemetry.spans.clone(), secrets);
            r.set_logs_dir(run.logs());
            Box::new(r)
        },
    );
    for b in &buried {
        eprintln!(
            "ferry: ended run {} ({}): {}",
            b.run.display(),
            b.error_type,
            b.reason
        );
    }
}

/// `ferry ship`: the boot-time janitor first (the ship timer runs it after
/// every boot, so a run that died gets its root span and bundle), then
/// the spool is drained.
fn ship_cmd(
    config: Option<&std::path::Path>,
    args: ShipArgs,
    telemetry: &telemetry::Telemetry,
) -> anyhow::Result<ExitCode> {
    use ferry_uploaders::spool::Wait;
    let cfg = load_config(config)?;
    bury_dead_runs(&cfg.runs_dir(), None, telemetry);
    let wait = if args.no_wait {
        Wait::No
    } else {
        Wait::Up(std::time::Duration::from_secs(args.wait_secs))
    };
    let summary = ferry::shipping::ship_all(&cfg, wait, args.retry_parked, &mut |holder| {
        eprintln!("ferry: waiting for the spool: it is being drained by {holder}");
    })?;
    let r = &summary.report;
    if args.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, r).context("cannot write to stdout")?;
        writeln!(out).context("cannot write to stdout")?;
    }
    for e in &r.entries {
        for a in &e.shipped {
            if let Some(link) = a.link.as_deref().filter(|l| *l != a.receipt.location) {
                eprintln!("ferry: {} link ({}): {link}", e.key, a.destination);
            }
        }
        if e.removed || e.quarantined.is_some() {
            continue;
        }
        // Parked before this drain, or just now by a permanent failure.
        let newly = e
            .failed
            .iter()
            .filter(|f| f.permanent)
            .map(|f| &f.destination);
        for d in e.parked.iter().chain(newly) {
            eprintln!(
                "ferry: {} ({}) is parked for {d} by a permanent failure (`ferry spool show {}`); fix it, then `ferry spool retry {}`",
                e.id,
                ferry::printable::one_line(&e.key),
                e.id,
                e.id
            );
        }
    }
    for id in &r.busy {
        eprintln!("ferry: {id} is in use by another ferry process; left for it");
    }
    for e in &r.errors {
        eprintln!(
            "ferry: {}: {} (left for the next drain)",
            if e.id.is_empty() { "spool" } else { &e.id },
            e.error
        );
    }
    let shipped = r.entries.iter().filter(|e| e.removed).count();
    let pages = r
        .entries
        .iter()
        .filter(|e| e.removed && e.key.ends_with(ferry_uploaders::bundle::REPORT_SUFFIX))
        .count();
    let spans: usize = summary.spans.iter().map(|(_, x)| x.spans_sent).sum();
    let of_them_pages = |n: usize| {
        if n > 0 {
            format!(" ({n} of them report pages)")
        } else {
            String::new()
        }
    };
    eprintln!(
        "ferry: spool {}: {shipped} shipped{}, {} waiting{}, {} quarantined, {} evicted{}",
        cfg.spool.dir.display(),
        of_them_pages(pages),
        r.depth,
        of_them_pages(r.pages_waiting),
        r.quarantined.len(),
        r.evicted.len(),
        if spans > 0 {
            format!("; {spans} spans re-sent")
        } else {
            String::new()
        }
    );
    let quarantined = ferry::shipping::open(&cfg)?.quarantined()?.len();
    if quarantined > 0 {
        eprintln!(
            "ferry: {quarantined} damaged entries are in quarantine: `ferry spool list` shows why; `ferry spool drop ID` once looked at"
        );
    }
    Ok(if r.depth == 0 && quarantined == 0 && r.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `ferry install [--uninstall]`.
fn install_cmd(
    config: Option<&std::path::Path>,
    args: InstallArgs,
    telemetry: &telemetry::Telemetry,
) -> anyhow::Result<ExitCode> {
    use ferry::install;
    let cfg = load_config(config)?;
    let opts = install::InstallOptions {
        systemctl: !args.no_systemctl && install::systemd_running(),
        unit_dir: args.unit_dir,
        ferry: std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .context("cannot tell where this ferry binary is")?,
        env: install::baked_env(&|k| std::env::var(k).ok(), config),
    };
    let runner = ferry::exec::SystemRunner::new(telemetry.spans.clone(), Vec::new());
    let done = if args.uninstall {
        install::uninstall(&opts, &runner)?
    } else {
        // The spool exists (private) before the first drain needs it.
        ferry::shipping::open(&cfg)?;
        install::install(&opts, &runner)?
    };
    for line in done {
        eprintln!("ferry: {line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The lines a CI log keeps: what happened, where the evidence is.
fn report(outcome: &Outcome) -> ExitCode {
    match outcome.result.as_str() {
        "succeeded" => {
            eprintln!(
                "ferry: trip done: {} -> {}",
                outcome.kernel_before,
                outcome.kernel_after.as_deref().unwrap_or("?")
            );
            if let Some(ms) = outcome.downtime_ms {
                eprintln!("ferry: session downtime {:.1} s", ms as f64 / 1000.0);
            }
        }
        other => {
            eprintln!(
                "ferry: trip {}{}: {}",
                other.replace('_', " "),
                outcome
                    .phase
                    .as_deref()
                    .map(|p| format!(" in {p}"))
                    .unwrap_or_default(),
                outcome.reason.as_deref().unwrap_or("no reason recorded")
            );
            if other == "called_off" {
                eprintln!(
                    "ferry: the session is still on kernel {}",
                    outcome.kernel_before
                );
            }
        }
    }
    for n in &outcome.notes {
        eprintln!("ferry: {n}");
    }
    if let Some(pid) = outcome.restored_root_pid {
        eprintln!(
            "ferry: the session runs in a new pid namespace; enter it with: nsenter -t {pid} -a"
        );
    }
    if let Some(b) = &outcome.bundle {
        eprintln!("ferry: bundle: {b}");
    }
    if let Some(ship) = &outcome.ship {
        for s in &ship.shipped {
            if let Some(link) = s.link.as_deref().filter(|l| *l != s.location) {
                eprintln!("ferry: bundle link ({}): {link}", s.destination);
            }
        }
        if let Some(line) = ferry::shipping::waiting_line(ship) {
            eprintln!("ferry: {line}");
        }
        for s in ship.report.iter().flat_map(|r| &r.shipped) {
            let at = s.link.as_deref().unwrap_or(&s.location);
            eprintln!("ferry: report ({}): {at}", s.destination);
        }
    }
    if let (Some(file), Some(id)) = (&outcome.trace_file, &outcome.trace_id) {
        eprintln!("ferry: trace {id}: {file}");
    }
    if let Some(d) = &outcome.diagnosis {
        for line in d.lines() {
            eprintln!("ferry: {}", ferry::printable::printable(&line));
        }
    }
    if outcome.result == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
