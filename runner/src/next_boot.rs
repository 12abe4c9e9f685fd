//! What the next boot mounts that this one did not. Debian 13's systemd
//! mounts a tmpfs on `/tmp` (its `tmp.mount`, which Debian 12 kept out of
//! the way in /usr/share/systemd): after a 12→13 upgrade the files the
//! session had open in the on-disk `/tmp` are hidden under it, and the
//! restore cannot find them. Read after the upgrade, before the freeze.

use std::path::Path;

/// Where unit files and their `.wants` links live, most binding first;
/// not /run: what is there (`systemctl mask --runtime`) is gone at the
/// reboot this is about.
const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

/// Why the next boot of the system under `root` will mount a tmpfs on an
/// on-disk `/tmp`, or `None` when it will not (or cannot tell it will).
pub fn tmp_becomes_tmpfs(root: &Path) -> Option<String> {
    let tmp = root.join("tmp");
    // tmp.mount's own condition: no mount on a symlinked /tmp.
    if std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.file_type().is_symlink()) {
        return None;
    }
    // An fstab line for /tmp wins over tmp.mount (its generator writes a
    // unit of the same name that overrides it).
    if let Some(fs_type) = fstab_type_of(root, "/tmp") {
        return (fs_type == "tmpfs").then(|| "/etc/fstab mounts a tmpfs on /tmp".to_string());
    }
    let unit = UNIT_DIRS
        .iter()
        .map(|d| root.join(d).join("tmp.mount"))
        .find(|p| std::fs::symlink_metadata(p).is_ok())?;
    // Masked (`systemctl mask tmp.mount`): a link to /dev/null.
    if std::fs::read_link(&unit).is_ok_and(|t| t == Path::new("/dev/null")) {
        return None;
    }
    let text = std::fs::read_to_string(&unit).ok()?;
    if !unit_mounts_tmpfs(&text) {
        return None;
    }
    let wants = UNIT_DIRS
        .iter()
        .map(|d| root.join(d).join("local-fs.target.wants/tmp.mount"))
        .find(|p| std::fs::symlink_metadata(p).is_ok())?;
    let shown = |p: &Path| {
        Path::new("/")
            .join(p.strip_prefix(root).unwrap_or(p))
            .display()
            .to_string()
    };
    Some(format!(
        "systemd's tmp.mount ({}, wanted by local-fs.target through {}) mounts a tmpfs on /tmp at the next boot",
        shown(&unit),
        shown(&wants)
    ))
}

/// Strictly below `/tmp`: what a tmpfs mounted on it hides (`/tmp` itself
/// is the mount point, there after the reboot too).
pub fn below_tmp(path: &Path) -> bool {
    path != Path::new("/tmp") && path.starts_with("/tmp")
}

/// `Type=tmpfs` in the `[Mount]` section of a mount unit.
fn unit_mounts_tmpfs(text: &str) -> bool {
    let mut in_mount = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_mount = line == "[Mount]";
        } else if in_mount
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == "Type"
        {
            return v.trim() == "tmpfs";
        }
    }
    false
}

/// The type fstab gives `mount_point`, if it has a line for it.
fn fstab_type_of(root: &Path, mount_point: &str) -> Option<String> {
    let text = std::fs::read_to_string(root.join("etc/fstab")).ok()?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut fields = l.split_whitespace();
            let (_what, point, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
            (point.trim_end_matches('/') == mount_point).then(|| fs_type.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const UNIT: &str = "[Unit]\nDescription=Temporary Directory /tmp\nConditionPathIsSymbolicLink=!/tmp\n\n[Mount]\nWhat=tmpfs\nWhere=/tmp\nType=tmpfs\nOptions=mode=1777,strictatime,nosuid,nodev,size=50%%,nr_inodes=1m\n";

    /// A Debian 13 root: the unit in /usr/lib with its wants link.
    fn trixie() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("usr/lib/systemd/system");
        std::fs::create_dir_all(lib.join("local-fs.target.wants")).unwrap();
        std::fs::write(lib.join("tmp.mount"), UNIT).unwrap();
        symlink("../tmp.mount", lib.join("local-fs.target.wants/tmp.mount")).unwrap();
        std::fs::create_dir_all(root.path().join("tmp")).unwrap();
        std::fs::create_dir_all(root.path().join("etc/systemd/system")).unwrap();
        std::fs::write(
            root.path().join("etc/fstab"),
            "# <file system> <mount point> <type>\nUUID=1 / ext4 defaults 0 1\n",
        )
        .unwrap();
        root
    }

    #[test]
    fn debian_13_mounts_a_tmpfs_on_tmp() {
        let root = trixie();
        let why = tmp_becomes_tmpfs(root.path()).unwrap();
        assert!(
            why.contains("/usr/lib/systemd/system/tmp.mount")
                && why.contains("local-fs.target.wants/tmp.mount"),
            "{why}"
        );
    }

    #[test]
    fn debian_12_keeps_the_unit_out_of_the_way() {
        let root = tempfile::tempdir().unwrap();
        let share = root.path().join("usr/share/systemd");
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(share.join("tmp.mount"), UNIT).unwrap();
        std::fs::create_dir_all(root.path().join("tmp")).unwrap();
        assert_eq!(tmp_becomes_tmpfs(root.path()), None);
    }

    #[test]
    fn masked_unlinked_fstab_or_symlinked_tmp_opt_out() {
        let root = trixie();
        symlink(
            "/dev/null",
            root.path().join("etc/systemd/system/tmp.mount"),
        )
        .unwrap();
        assert_eq!(tmp_becomes_tmpfs(root.path()), None, "masked");

        let root = trixie();
        std::fs::remove_file(
            root.path()
                .join("usr/lib/systemd/system/local-fs.target.wants/tmp.mount"),
        )
        .unwrap();
        assert_eq!(tmp_becomes_tmpfs(root.path()), None, "not wanted");

        let root = trixie();
        std::fs::write(
            root.path().join("etc/fstab"),
            "UUID=1 / ext4 defaults 0 1\nUUID=2 /tmp ext4 defaults 0 2\n",
        )
        .unwrap();
        assert_eq!(tmp_becomes_tmpfs(root.path()), None, "a disk in fstab");

        let root = trixie();
        std::fs::remove_dir(root.path().join("tmp")).unwrap();
        symlink("var/tmp", root.path().join("tmp")).unwrap();
        assert_eq!(tmp_becomes_tmpfs(root.path()), None, "symlinked /tmp");
    }

    /// Regression (review): a runtime mask in /run was taken for one that
    /// lasts, and the files were lost at the reboot.
    #[test]
    fn a_runtime_mask_does_not_outlive_the_reboot() {
        let root = trixie();
        std::fs::create_dir_all(root.path().join("run/systemd/system")).unwrap();
        symlink(
            "/dev/null",
            root.path().join("run/systemd/system/tmp.mount"),
        )
        .unwrap();
        assert!(tmp_becomes_tmpfs(root.path()).is_some());
    }

    #[test]
    fn fstab_can_make_tmp_a_tmpfs_too() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/fstab"),
            "tmpfs /tmp/ tmpfs size=1G 0 0\n",
        )
        .unwrap();
        assert_eq!(
            tmp_becomes_tmpfs(root.path()).as_deref(),
            Some("/etc/fstab mounts a tmpfs on /tmp")
        );
    }

    #[test]
    fn an_override_that_is_not_a_tmpfs_does_not_count() {
        let root = trixie();
        std::fs::write(
            root.path().join("etc/systemd/system/tmp.mount"),
            "[Mount]\nWhat=/dev/vdb\nWhere=/tmp\nType=ext4\n",
        )
        .unwrap();
        assert_eq!(tmp_becomes_tmpfs(root.path()), None);
    }
}
