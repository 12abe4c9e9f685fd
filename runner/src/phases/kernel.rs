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
    match criu_problem(ctx.runner, &ctx.config.criu.path, release)? {
        Some(problem) => Err(PhaseError::new("criu_kernel_incompatible", problem)),
        None => Ok(()),
    }
}

/// Why the installed criu cannot restore on kernel `release`, if a known
/// incompatibility applies.
pub fn criu_problem(
    runner: &dyn crate::exec::Runner,
    criu: &Path,
    release: &str,
) -> Result<Option<String>, crate::exec::ExecError> {
    let out = runner.run(
        &CommandSpec::new(criu.display().to_string())
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
        return Ok(None);
    };
    Ok(super::compat::criu_kernel_problem(criu, kernel))
}

/// The kernel a trip would boot now: `kernel.path`, or the newest in
/// `boot`; `None` when there is none.
pub fn target(config: &crate::config::Config, boot: &Path) -> Option<KernelChoice> {
    match &config.kernel.path {
        Some(image) => explicit(image, config.kernel.initrd.as_deref()).ok(),
        None => newest_in(boot).ok(),
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
    let release = release_of_image(image)
        .or_else(|| release_of(image))
        .unwrap_or_else(|| image.display().to_string());
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

/// The release a bzImage says it is, from its setup header: the
/// `kernel_version` field (offset 0x20e) points, 0x200 bytes on, to a
/// string like `6.1.0-57-cloud-amd64 (debian-kernel@…) #1 SMP …`. The file
/// name may lie; the header is what kexec will boot.
pub fn release_of_image(image: &Path) -> Option<String> {
    use std::io::Read;
    // The setup code ends within its first 64 KiB (setup_sects ≤ 127).
    let mut head = Vec::with_capacity(0x10000);
    std::fs::File::open(image)
        .ok()?
        .take(0x10000)
        .read_to_end(&mut head)
        .ok()?;
    release_from_header(&head)
}

fn release_from_header(head: &[u8]) -> Option<String> {
    if head.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes(head.get(0x20e..0x210)?.try_into().ok()?) as usize;
    let text = head.get(ptr + 0x200..)?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    let release = std::str::from_utf8(&text[..end]).ok()?;
    (!release.is_empty()).then(|| release.to_string())
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
pub mod tests {
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

    /// A setup header as a bzImage has it: "HdrS" at 0x202, the version
    /// string's offset (minus 0x200) at 0x20e.
    /// The string sits where Debian's 6.1 kernels have it, past 16 KiB.
    pub fn fake_bzimage(release: &str) -> Vec<u8> {
        let mut img = vec![0u8; 0x5000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x42c0u16.to_le_bytes());
        let text = format!("{release} (debian-kernel@lists.debian.org) #1 SMP\0");
        img[0x44c0..0x44c0 + text.len()].copy_from_slice(text.as_bytes());
        img
    }

    #[test]
    fn the_release_comes_from_the_image_header_not_its_name_even_past_16_kib() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("vmlinuz-6.1.0-57-cloud-amd64");
        std::fs::write(&image, fake_bzimage("6.13.0-7-cloud-amd64")).unwrap();
        let k = explicit(&image, None).unwrap();
        assert_eq!(k.release, "6.13.0-7-cloud-amd64");
        // Not a bzImage: the file name it is.
        std::fs::write(&image, b"not a kernel").unwrap();
        assert_eq!(
            explicit(&image, None).unwrap().release,
            "6.1.0-57-cloud-amd64"
        );
        assert_eq!(release_from_header(&[0u8; 16]), None);
    }

    #[test]
    fn empty_boot_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = newest_in(dir.path()).unwrap_err();
        assert_eq!(err.kind, "kernel_missing");
        assert!(err.message.contains("vmlinuz"));
    }
}
