//! docs/failure-catalog.md is generated from the catalog and must match it;
//! docs/configuration.md names every configuration variable.

use std::path::Path;

use ferry::diagnose::catalog::Catalog;

#[test]
fn failure_catalog_doc_matches_the_catalog() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/failure-catalog.md");
    let want = Catalog::builtin().markdown();
    if std::env::var_os("FERRY_BLESS").is_some() {
        std::fs::write(&path, &want).expect("write docs/failure-catalog.md");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/failure-catalog.md is out of date: run `FERRY_BLESS=1 cargo test -p ferry --test docs`"
    );
}

#[test]
fn every_configuration_variable_is_documented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    for (key, var) in ferry::config::ENV_KEYS {
        assert!(
            doc.contains(&format!("| `{key}` | `{var}` |")),
            "docs/configuration.md has no row for {key} ({var})"
        );
    }
}

/// Every `ship.s3` key and its variable is documented in docs/backends/s3.md.
#[test]
fn s3_keys_are_documented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/backends/s3.md");
    let doc = std::fs::read_to_string(&path).expect("read docs/backends/s3.md");
    let keys: Vec<_> = ferry::config::ENV_KEYS
        .iter()
        .filter(|(k, _)| k.starts_with("ship.s3."))
        .collect();
    assert!(keys.len() >= 10, "{keys:?}");
    for (key, var) in keys {
        assert!(
            doc.contains(&format!("`{key}`")) && doc.contains(&format!("`{var}`")),
            "docs/backends/s3.md lacks {key} / {var}"
        );
    }
}
