//! Known incompatibilities between the criu that will restore the session
//! and the kernel about to be booted, checked before anything is frozen.

/// `(major, minor, patch)` from `criu --version` output (`Version: 3.17.1`).
pub fn parse_criu_version(output: &str) -> Option<(u32, u32, u32)> {
    let line = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))?;
    let mut parts = line
        .trim()
        .split(['.', '-', ' '])
        .map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// `(major, minor)` of a kernel release like `6.13.0-1-amd64`.
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Why this criu cannot restore on this kernel, with the remedy; `None`
/// when no known incompatibility applies.
pub fn criu_kernel_problem(criu: (u32, u32, u32), kernel: (u32, u32)) -> Option<String> {
    // Linux 6.13 split the vvar area ([vvar_vclock]); CRIU before 4.1
    // rejects that layout at its first run on the new kernel, i.e. at the
    // restore ("vdso: Unexpected rt vDSO area bounds").
    if kernel >= (6, 13) && criu < (4, 1, 0) {
        return Some(format!(
            "criu {}.{}.{} cannot restore on kernel {}.{} or newer: Linux 6.13 split the vDSO's vvar area and criu before 4.1 fails with \"vdso: Unexpected rt vDSO area bounds\" (failure kind vdso-rt-bounds). Install criu 4.1 or newer (Debian 13 has 4.1.1) before the trip, or boot a kernel older than 6.13",
            criu.0, criu.1, criu.2, kernel.0, kernel.1
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read() {
        assert_eq!(parse_criu_version("Version: 3.17.1\n"), Some((3, 17, 1)));
        assert_eq!(
            parse_criu_version("Version: 4.1\nGitID: v4.1-12-gabc\n"),
            Some((4, 1, 0))
        );
        assert_eq!(parse_criu_version("criu: command not found"), None);
        assert_eq!(parse_kernel_version("6.1.0-57-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel_version("6.13.0-rc1"), Some((6, 13)));
        assert_eq!(parse_kernel_version("garbage"), None);
    }

    #[test]
    fn old_criu_on_split_vdso_kernel_is_refused() {
        let msg = criu_kernel_problem((3, 17, 1), (6, 13)).unwrap();
        assert!(
            msg.contains("criu 4.1 or newer") && msg.contains("vdso-rt-bounds"),
            "{msg}"
        );
        assert!(criu_kernel_problem((3, 17, 1), (6, 12)).is_none());
        assert!(criu_kernel_problem((4, 1, 0), (6, 17)).is_none());
        assert!(criu_kernel_problem((4, 0, 9), (7, 0)).is_some());
    }
}
