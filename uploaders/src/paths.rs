//! Small path facts every writer of a file beside another needs.

use std::path::Path;

/// The directory `path` is in; a bare file name's (an empty parent) is
/// the current directory, where a rename beside it happens and whose
/// entry must be fsynced.
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_in_the_current_directory() {
        assert_eq!(dir_of(Path::new("report.html")), Path::new("."));
        assert_eq!(dir_of(Path::new("/tmp/a/b")), Path::new("/tmp/a"));
        assert_eq!(dir_of(Path::new("/")), Path::new("."));
    }
}
