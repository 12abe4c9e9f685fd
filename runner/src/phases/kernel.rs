//! `kernel`: choose the kernel to boot and load it with `kexec -l` now,
//! while nothing is frozen, so a kernel that will not load stops the trip
//! before the dump.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use crate::exec::CommandSpec;
use crate::state::KernelChoice;

use super::{Ctx, PhaseError};

pub fn run(ctx: &mut Ctx<'_>) -> Result<KernelChoice, PhaseError> {
    let running = crate::host::kernel_release();
    let choice = match &ctx.config.kernel.path {
        Some(image) => explicit(image, ctx.config.kernel.initrd.as_deref())?,
        None => newest_in(Path::new("/boot"))?,
    };
    if choice.release == running && !ctx.config.kernel.allow_same {
        return Err(PhaseError::new(
            "kernel_nothing_newer",
            format!(
                "nothing newer to boot: the newest kernel in /boot is the running one ({running}); the upgrade installed no new kernel (use --kernel to pick one)"
            ),
        ));
    }
    check_criu_against(ctx, &choice.release)?;
    let mut spec = CommandSpec::new("kexec")
        .arg("-l")
        .arg(choice.image.display().to_string())
        .log_name("kexec-load")
        .missing_hint("install it: apt-get install kexec-tools");
    if let Some(initrd) = &choice.initrd {
        spec = spec.arg(format!("--initrd={}", initrd.display()));
    }
    if ctx.config.kernel.cmdline.trim().is_empty() {
        spec = spec.arg("--reuse-cmdline");
    } else {
        spec = spec.arg(format!("--command-line={}", ctx.config.kernel.cmdline));
    }
    ctx.runner.run(&spec)?.check().map_err(|e| {
        PhaseError::new(
            "kexec_load_failed",
            format!(
                "the kernel {} will not load, nothing was frozen: {e}",
                choice.image.display()
            ),
        )
    })?;
    ctx.state.kernel_after = Some(choice.release.clone());
    ctx.state.kernel = Some(choice.clone());
    Ok(choice)
}

/// The criu installed now (after the upgrade) is the one that restores on
/// the new kernel: refuse known-bad pairs while nothing is frozen.
fn check_criu_against(ctx: &Ctx<'_>, release: &str) -> Result<(), PhaseError> {
    let out = ctx.runner.run(
        &CommandSpec::new(ctx.config.criu.path.display().to_string())
            .arg("--version")
            .log_name("criu-version"),
    )?;
    let (Some(criu), Some(kernel)) = (
        super::compat::parse_criu_version(&out.stdout),
        super::compat::parse_kernel_version(release),
    ) else {
        tracing::warn!(
            release,
            "cannot tell the criu or kernel version; compatibility not checked"
        );
        return Ok(());
    };
    match super::compat::criu_kernel_problem(criu, kernel) {
        Some(problem) => Err(PhaseError::new("criu_kernel_incompatible", problem)),
        None => Ok(()),
    }
}

fn explicit(image: &Path, initrd: Option<&Path>) -> Result<KernelChoice, PhaseError> {
    if !image.is_file() {
        return Err(PhaseError::new(
            "kernel_missing",
            format!(
                "kernel image {} does not exist (check --kernel)",
                image.display()
            ),
        ));
    }
    let release = release_of(image).unwrap_or_else(|| image.display().to_string());
    let initrd = match initrd {
        Some(p) => Some(p.to_path_buf()),
        None => default_initrd(image.parent().unwrap_or(Path::new("/boot")), &release),
    };
    Ok(KernelChoice {
        release,
        image: image.to_path_buf(),
        initrd,
    })
}

/// The newest `vmlinuz-*` in `boot` with its initrd.
pub fn newest_in(boot: &Path) -> Result<KernelChoice, PhaseError> {
    let entries = std::fs::read_dir(boot).map_err(|e| {
        PhaseError::new(
            "kernel_missing",
            format!("cannot list {}: {e}", boot.display()),
        )
    })?;
    let mut releases: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .filter(|r| !r.ends_with(".old") && !r.is_empty())
        .collect();
    releases.sort_by(|a, b| compare_versions(a, b));
    let release = releases.pop().ok_or_else(|| {
        PhaseError::new(
            "kernel_missing",
            format!("no kernel image (vmlinuz-*) in {}", boot.display()),
        )
    })?;
    Ok(KernelChoice {
        image: boot.join(format!("vmlinuz-{release}")),
        initrd: default_initrd(boot, &release),
        release,
    })
}

fn default_initrd(dir: &Path, release: &str) -> Option<PathBuf> {
    [
        format!("initrd.img-{release}"),
        format!("initramfs-{release}.img"),
    ]
    .into_iter()
    .map(|n| dir.join(n))
    .find(|p| p.is_file())
}

fn release_of(image: &Path) -> Option<String> {
    image
        .file_name()?
        .to_str()?
        .strip_prefix("vmlinuz-")
        .map(str::to_string)
}

/// Compare version strings by runs of digits (numerically) and of other
/// characters, so 6.1.0-57 > 6.1.0-9 and 6.10 > 6.9.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        let ord = match (x, y) {
            ((true, xs), (true, ys)) => {
                let (xs, ys) = (xs.trim_start_matches('0'), ys.trim_start_matches('0'));
                xs.len().cmp(&ys.len()).then_with(|| xs.cmp(ys))
            }
            ((_, xs), (_, ys)) => xs.cmp(ys),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(
            compare_versions("6.1.0-57-cloud-amd64", "6.1.0-9-cloud-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            compare_versions("6.10.0-1-amd64", "6.9.12-1-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            compare_versions("6.1.0-56-cloud-amd64", "6.1.0-56-cloud-amd64"),
            Ordering::Equal
        );
    }

    #[test]
    fn newest_kernel_with_its_initrd() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "vmlinuz-6.1.0-9-cloud-amd64",
            "vmlinuz-6.1.0-57-cloud-amd64",
            "initrd.img-6.1.0-57-cloud-amd64",
            "vmlinuz-6.1.0-58-cloud-amd64.old",
            "config-6.1.0-99-cloud-amd64",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let k = newest_in(dir.path()).unwrap();
        assert_eq!(k.release, "6.1.0-57-cloud-amd64");
        assert_eq!(
            k.initrd,
            Some(dir.path().join("initrd.img-6.1.0-57-cloud-amd64"))
        );
    }

    #[test]
    fn empty_boot_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = newest_in(dir.path()).unwrap_err();
        assert_eq!(err.kind, "kernel_missing");
        assert!(err.message.contains("vmlinuz"));
    }
}
