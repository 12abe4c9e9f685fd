//! The span, attribute and metric reference of `docs/traces.md`, made from
//! [`super::names`] so the two cannot drift: a test compares the doc's
//! block with [`markdown`] (`FERRY_BLESS=1` rewrites it).

use super::names::{self, Instrument};

/// What an attribute says, for the reference. Every listed attribute has
/// an entry (a test checks it).
pub fn describe(attribute: &str) -> Option<&'static str> {
    Some(match attribute {
        names::ATTR_PIPELINE_NAME => "`ferry upgrade` (root span, metrics)",
        names::ATTR_PIPELINE_ACTION => "`RUN` (root span)",
        names::ATTR_PIPELINE_RUN_ID => {
            "the run id, the run directory's name (resource of every span; root span)"
        }
        names::ATTR_PIPELINE_RUN_STATE => "`executing` (run duration metric)",
        names::ATTR_PIPELINE_RESULT => {
            "`success`, `failure`, `error` (the run died), `cancellation`, `timeout` (root span, metrics)"
        }
        names::ATTR_TASK_NAME => "the phase (phase spans, phase metric)",
        names::ATTR_TASK_RUN_ID => "the phase span's id (phase spans)",
        names::ATTR_TASK_RUN_RESULT => "`success`, `failure`, `error` (phase spans, phase metric)",
        names::ATTR_ERROR_TYPE => {
            "why it failed: the phase's error kind (`criu_dump_failed`, `command_failed`, `run_died`, …)"
        }
        names::ATTR_PROCESS_EXECUTABLE => "the program (command spans)",
        names::ATTR_PROCESS_COMMAND_LINE => "the command line, secrets redacted (command spans)",
        names::ATTR_PROCESS_EXIT_CODE => "its exit code (command spans)",
        names::ATTR_PROCESS_PID => "its pid (command spans)",
        names::ATTR_SERVICE_NAME => "`OTEL_SERVICE_NAME`, else `ferry` (resource)",
        names::ATTR_SERVICE_VERSION => "ferry's version (resource)",
        names::ATTR_HOST_NAME => "the machine (resource)",
        names::ATTR_BOOT_ID => "the boot the span comes from (resource)",
        names::ATTR_KERNEL_RELEASE => "the kernel of that boot (resource)",
        names::ATTR_RUN_OUTCOME => {
            "ferry's own result: `succeeded`, `failed`, `called_off`, `died` (root span)"
        }
        names::ATTR_KERNEL_BEFORE => "the kernel the run started on (root span)",
        names::ATTR_KERNEL_AFTER => "the kernel it ended on (root span)",
        names::ATTR_OUTPUT_TAIL => "the last lines of the command's output (command spans)",
        names::ATTR_LOG_FILE => "the command's full output in the run's `logs/` (command spans)",
        names::ATTR_SHIP_BACKEND => {
            "where a bundle went: `dir`, `s3`, `dropbox`, `github` (bytes metric)"
        }
        names::ATTR_CRIU_LINE => "the CRIU log line (event `criu.error`)",
        names::ATTR_SPOOL_ENTRY => "the spool entry being uploaded (`ship <destination>` spans)",
        names::ATTR_SPOOL_REASON => {
            "why the spool evicted an entry: `expendable`, `acknowledged`, `quarantined`, `oldest` (eviction metric)"
        }
        names::ATTR_SPOOL_KIND => {
            "what a waiting spool entry is: `bundle`, or `page` for a bundle's report page (depth metric)"
        }
        _ => return None,
    })
}

fn instrument(i: Instrument) -> &'static str {
    match i {
        Instrument::Histogram => "histogram",
        Instrument::Counter => "counter",
        Instrument::Gauge => "gauge",
    }
}

/// The reference, as Markdown.
pub fn markdown() -> String {
    let mut s = String::new();
    s.push_str("### Spans\n\n| span | kind | what |\n| --- | --- | --- |\n");
    s.push_str(&format!(
        "| `{}` | server | the run, from `ferry upgrade` to the end of `ship`; emitted last, with its original start |\n",
        names::SPAN_RUN
    ));
    for p in names::PHASES_BEFORE {
        s.push_str(&format!(
            "| `{p}` | internal | phase, before the reboot |\n"
        ));
    }
    for p in names::PHASES_AFTER {
        s.push_str(&format!("| `{p}` | internal | phase, after the reboot |\n"));
    }
    s.push_str(&format!(
        "| `{}<program>` | internal | one external command, under its phase |\n",
        names::SPAN_EXEC_PREFIX
    ));
    s.push_str(&format!(
        "| `{}<destination>` | internal | one upload of the bundle to a backend, under `ship` (its error when the bundle is left in the spool) |\n",
        names::SPAN_SHIP_PREFIX
    ));
    s.push_str(&format!(
        "\nEvents: `{}` on the `dump` and `restore` spans, one per CRIU `Error (…)` line.\n",
        names::EVENT_CRIU_ERROR
    ));
    s.push_str("\n### Attributes\n\n| attribute | what |\n| --- | --- |\n");
    for a in names::ALL_ATTRIBUTES {
        s.push_str(&format!("| `{a}` | {} |\n", describe(a).unwrap_or("")));
    }
    s.push_str(
        "\n### Metrics\n\n| OTLP name | Prometheus (via the collector) | instrument | unit | attributes | what |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for m in names::ALL_METRICS {
        let attrs: Vec<String> = m.attributes.iter().map(|a| format!("`{a}`")).collect();
        let prom = names::prometheus_name(m);
        let prom = if m.instrument == Instrument::Histogram {
            format!("`{prom}_bucket`, `_sum`, `_count`")
        } else {
            format!("`{prom}`")
        };
        s.push_str(&format!(
            "| `{}` | {prom} | {} | `{}` | {} | {} |\n",
            m.name,
            instrument(m.instrument),
            m.unit,
            if attrs.is_empty() {
                "—".to_string()
            } else {
                attrs.join(", ")
            },
            m.description
        ));
    }
    let res: Vec<String> = names::METRIC_RESOURCE_ATTRIBUTES
        .iter()
        .map(|a| format!("`{a}`"))
        .collect();
    s.push_str(&format!(
        "\nThe metrics' resource carries {} only (no run id: it would make a series per run).\n",
        res.join(", ")
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEGIN: &str = "<!-- names.rs reference: begin -->\n";
    const END: &str = "<!-- names.rs reference: end -->";

    #[test]
    fn every_attribute_is_described() {
        for a in names::ALL_ATTRIBUTES {
            assert!(describe(a).is_some(), "{a} has no description");
        }
    }

    #[test]
    fn docs_traces_md_holds_the_current_reference() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/traces.md");
        let text = std::fs::read_to_string(&path).unwrap();
        let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
            panic!("{} lacks the reference markers", path.display());
        };
        let current = &text[b + BEGIN.len()..e];
        let fresh = markdown();
        if current != fresh {
            if std::env::var("FERRY_BLESS").as_deref() == Ok("1") {
                let updated = format!("{}{fresh}{}", &text[..b + BEGIN.len()], &text[e..]);
                std::fs::write(&path, updated).unwrap();
            } else {
                panic!(
                    "docs/traces.md's reference is not names.rs's: run `FERRY_BLESS=1 cargo test -p ferry --lib reference` and commit the result"
                );
            }
        }
    }
}
