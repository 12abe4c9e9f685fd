//! The report page beside the bundle. At the end of a run `ship` stores
//! report.html where a browser can open it: a file in the `dir` store, an
//! S3 object served as HTML through its presigned link (a real s3s-fs);
//! never Dropbox (shared links do not render HTML) nor a GitHub artifact
//! (it only downloads), both strict fakes. The page is the very page inside
//! the bundle, secrets redacted alike; a destination that is down is not
//! tried for it again at the end of the run (the job would wait twice) and
//! gets it later from the spool, with the bundle.
//!
//! Without an s3s-fs binary these tests print a loud skip line and pass,
//! except under `./lab test` (`FERRY_S3S_FS` set), where that fails.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry::config::Config;
use ferry::exec::{CommandOutput, CommandSpec, ExecError, Runner};
use ferry::phases::{Ctx, PhaseError, run_phase};
use ferry::state::{Handoff, Outcome, RunDir, RunState, STATE_FORMAT, ShipRecord};
use ferry::telemetry::{Telemetry, ids};
use ferry_tests::fakes::dropbox::FakeDropbox;
use ferry_tests::fakes::github::GithubFake;
use ferry_tests::s3s::S3sFs;
use ferry_uploaders::spool::Wait;
use ferry_uploaders::{BundleReader, report_key};

const BUCKET: &str = "bundles";
const DROPBOX_TOKEN: &str = "sl.page-test-token-4711";

/// Runs nothing: the phases around `ship` only need their commands to
/// answer.
struct NoCommands;

impl Runner for NoCommands {
    fn run(&self, spec: &CommandSpec) -> Result<CommandOutput, ExecError> {
        Ok(CommandOutput {
            command: spec.program.clone(),
            code: Some(0),
            stdout: String::new(),
            stderr: String::new(),
            log_file: None,
            duration: Duration::ZERO,
        })
    }
}

/// The stores, a run directory and the configuration that ships there.
struct World {
    tmp: tempfile::TempDir,
    s3: S3sFs,
    dropbox: FakeDropbox,
    github: GithubFake,
    run: RunDir,
    config: Config,
}

fn world(test: &str) -> Option<World> {
    let s3 = S3sFs::start_or_skip(test, &[BUCKET]).expect("start s3s-fs")?;
    let dropbox = FakeDropbox::start().unwrap();
    dropbox.add_token(DROPBOX_TOKEN);
    let github = GithubFake::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::new(tmp.path().join("run"));
    run.create().unwrap();

    let mut config = Config::default();
    config.ship.backends = ["dir", "s3", "dropbox", "github"]
        .map(String::from)
        .to_vec();
    config.ship.dir = tmp.path().join("bundles");
    config.ship.retry_budget_secs = 20;
    config.spool.dir = tmp.path().join("spool");
    config.ship.s3.endpoint = s3.url();
    config.ship.s3.bucket = BUCKET.into();
    config.ship.s3.timeout_secs = 5;
    config.ship.dropbox.api_url = dropbox.api_url();
    config.ship.dropbox.content_url = dropbox.content_url();
    config.ship.dropbox.folder = "/ferry".into();
    config.ship.dropbox.share = true;
    config.ship.dropbox.timeout_secs = 5;

    // What `ferry upgrade` saves for the run's later units.
    let env = s3.env();
    let mut secrets: BTreeMap<String, String> = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        .into_iter()
        .map(|k| (k.to_string(), env(k).unwrap()))
        .collect();
    secrets.insert("DROPBOX_TOKEN".into(), DROPBOX_TOKEN.into());
    secrets.extend(github.actions_env());
    std::fs::write(
        run.root.join("secrets.json"),
        serde_json::to_vec(&secrets).unwrap(),
    )
    .unwrap();
    Some(World {
        tmp,
        s3,
        dropbox,
        github,
        run,
        config,
    })
}

impl World {
    /// A run whose restore failed, its error quoting the Dropbox token
    /// (a secret the page must not carry), concluded as ferry does.
    fn failed_run(&self) -> Outcome {
        let state = RunState {
            format: STATE_FORMAT,
            run_id: "20261204T101500Z-5e1f00".into(),
            ferry_version: "test".into(),
            host: "ci-vm".into(),
            trace_id: ids::trace_id(),
            root_span_id: ids::span_id(),
            parent_span_id: None,
            tracestate: None,
            start_unix_nano: ids::now_unix_nano(),
            boot_ids: vec!["boot-a".into(), "boot-b".into()],
            kernel_before: "6.1.0-old".into(),
            kernel_after: None,
            kernel: None,
            phases: Vec::new(),
            session: None,
            plan: serde_json::to_value(&self.config).unwrap(),
            handoff: Handoff::default(),
            worker_pid: None,
            outcome: None,
            otel: BTreeMap::new(),
            notes: Vec::new(),
        };
        self.run.save(&state).unwrap();
        let telemetry = Telemetry::default();
        let mut ctx = Ctx {
            config: &self.config,
            run: &self.run,
            state,
            runner: &NoCommands,
            telemetry: &telemetry,
        };
        let e = run_phase(&mut ctx, "restore", |_| {
            Err::<(), _>(PhaseError::new(
                "criu_restore",
                format!("criu restore failed (uploading with {DROPBOX_TOKEN})"),
            ))
        })
        .unwrap_err();
        ferry::finishing::conclude(
            &mut ctx,
            "failed",
            Some("restore"),
            Some(e.message),
            Some(&e.kind),
        )
    }

    /// report.html as the bundle in the `dir` store holds it.
    fn page_in_bundle(&self, ship: &ShipRecord) -> Vec<u8> {
        let bundle = BundleReader::open(self.config.ship.dir.join(&ship.key)).unwrap();
        bundle.read_file("report.html").unwrap()
    }

    /// GET `url` as a browser would: the status, the content type, the body.
    fn browse(&self, url: &str) -> (u16, String, Vec<u8>) {
        let r = reqwest::blocking::Client::new()
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .unwrap_or_else(|e| panic!("GET {url}: {e}\n{}", self.s3.log()));
        let status = r.status().as_u16();
        let ctype = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, ctype, r.bytes().unwrap().to_vec())
    }
}

fn destinations(shipped: &[ferry::state::ShippedTo]) -> Vec<&str> {
    shipped.iter().map(|s| s.destination.as_str()).collect()
}

#[test]
fn the_page_goes_where_a_browser_can_open_it() {
    let Some(w) = world("the_page_goes_where_a_browser_can_open_it") else {
        return;
    };
    let outcome = w.failed_run();
    assert_eq!(outcome.result, "failed");
    let ship = outcome.ship.expect("the run shipped");
    assert_eq!(
        destinations(&ship.shipped),
        ["dir", "s3", "dropbox", "github"]
    );
    let page = ship.report.as_ref().expect("a report page was shipped");
    assert_eq!(page.key, report_key(&ship.key));
    assert!(page.key.ends_with(".report.html"), "{}", page.key);
    assert_eq!(destinations(&page.shipped), ["dir", "s3"]);
    assert!(page.waiting.is_empty(), "{:?}", page.waiting);
    assert_eq!(
        page.spool_entry, None,
        "shipped everywhere, gone from the spool"
    );

    let in_bundle = w.page_in_bundle(&ship);
    let text = String::from_utf8(in_bundle.clone()).unwrap();
    assert!(text.contains("<html") && text.contains("restore"), "{text}");
    assert!(
        !text.contains(DROPBOX_TOKEN),
        "the bundle's page is redacted"
    );

    // dir: a file beside the bundle, the same bytes.
    let beside = w.config.ship.dir.join(&page.key);
    assert_eq!(std::fs::read(&beside).unwrap(), in_bundle);
    assert_eq!(page.shipped[0].location, beside.display().to_string());

    // s3: the presigned link serves the page as HTML to anyone holding it.
    let link = page.shipped[1].link.as_deref().expect("a presigned link");
    assert!(link.contains("X-Amz-Signature="), "{link}");
    let (status, ctype, body) = w.browse(link);
    assert_eq!(status, 200);
    assert_eq!(ctype, "text/html; charset=utf-8");
    assert_eq!(body, in_bundle);
    // The bundle itself still downloads as gzip.
    let bundle_link = ship.shipped[1].link.as_deref().expect("bundle link");
    assert_eq!(w.browse(bundle_link).1, "application/gzip");

    // dropbox: the bundle only; its links never render a page.
    let files: Vec<String> = w.dropbox.files().into_keys().collect();
    // (the fake keys its files by Dropbox's lower-cased path)
    assert_eq!(files, [format!("/ferry/{}", ship.key.to_lowercase())]);

    // github: the bundle only; an artifact would not open in a browser.
    let names: Vec<String> = w.github.finalized().into_iter().map(|a| a.name).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with(&ship.key), "{names:?}");

    // `ferry pull` lists bundles, never their pages.
    let listed = ferry::pull::list(
        &ferry_uploaders::DirBackend::new(&w.config.ship.dir).unwrap(),
        &ferry::pull::Filter::default(),
    )
    .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, ship.key);
    drop(w.tmp);
}

#[test]
fn a_page_that_could_not_go_waits_in_the_spool() {
    let Some(mut w) = world("a_page_that_could_not_go_waits_in_the_spool") else {
        return;
    };
    w.config.testing.backend_down = vec!["s3".into()];
    let ship = w.failed_run().ship.expect("the run shipped");
    let page = ship.report.clone().expect("a report page");
    assert_eq!(destinations(&page.shipped), ["dir"]);
    let waiting: Vec<&str> = page
        .waiting
        .iter()
        .map(|f| f.destination.as_str())
        .collect();
    assert_eq!(waiting, ["s3"]);
    // Not tried again: the bundle had just spent the retry budget on it.
    assert!(
        page.waiting[0]
            .error
            .contains("did not take the bundle just now"),
        "{}",
        page.waiting[0].error
    );
    assert!(!page.waiting[0].parked, "a transient wait, not parked");
    let entry = w
        .config
        .spool
        .dir
        .join("entries")
        .join(page.spool_entry.as_ref().unwrap());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.join("entry.json")).unwrap()).unwrap();
    assert_eq!(
        meta["expendable"], true,
        "the cap takes a page before any bundle"
    );
    assert!(!w.s3.object_path(BUCKET, &page.key).exists());

    // The store is back; the next `ferry ship` takes the run's own plan.
    let mut state = w.run.load().unwrap();
    w.config.testing.backend_down.clear();
    state.plan = serde_json::to_value(&w.config).unwrap();
    w.run.save(&state).unwrap();
    let summary = ferry::shipping::ship_all(&w.config, Wait::No, false, &mut |_| {}).unwrap();
    let mut keys: Vec<&str> = summary
        .report
        .entries
        .iter()
        .filter(|e| e.removed)
        .map(|e| e.key.as_str())
        .collect();
    keys.sort();
    let mut expected = vec![page.key.as_str(), ship.key.as_str()];
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(summary.report.depth, 0);
    assert_eq!(
        std::fs::read(w.s3.object_path(BUCKET, &page.key)).unwrap(),
        w.page_in_bundle(&ship)
    );
}
