//! Rejected input: every bad manifest gets an error naming file, line and column, and
//! nothing from a rejected apply runs or changes what is already running.

use setpoint::{Diagnostic, Rejected};

use crate::common::{Manifests, host, wait_for, workload};

fn rejected(result: Result<Vec<String>, Rejected>) -> Vec<Diagnostic> {
    match result {
        Ok(names) => panic!("expected a rejection, applied {names:?}"),
        Err(r) => r.diagnostics,
    }
}

/// Asserts one diagnostic at `line:column` of `file` whose message contains `needle`.
fn assert_located(
    diagnostics: &[Diagnostic],
    file: &std::path::Path,
    line: u64,
    column: u64,
    needle: &str,
) {
    let found = diagnostics.iter().any(|d| {
        d.origin
            .as_ref()
            .is_some_and(|o| o.file == file && o.line == line && o.column == column)
            && d.message.contains(needle)
    });
    let shown: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    assert!(
        found,
        "no `{needle}` at {}:{line}:{column} among:\n{}",
        file.display(),
        shown.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejected_manifest_is_located() {
    let m = Manifests::new();
    let host = host();
    let cases: &[(&str, String, u64, u64, &str)] = &[
        ("unknown-field.yaml", workload("a", "ticker", "  replica: 3\n"), 7, 3, "unknown field `replica`"),
        ("bad-size.yaml", workload("a", "ticker", "  resources:\n    memory: 64Q\n"), 8, 13, "`64Q` is not a size"),
        ("negative.yaml", workload("a", "ticker", "  replicas: -1\n"), 7, 13, "replicas must be between 0 and"),
        ("too-many.yaml", workload("a", "ticker", "  replicas: 100001\n"), 7, 13, "replicas must be between 0 and"),
        ("spares.yaml", workload("a", "ticker", "  spares: 17\n"), 7, 11, "spares must be between 0 and 16"),
        ("bad-duration.yaml", workload("a", "ticker", "  terminationGracePeriod: soon\n"), 7, 27, "is not a duration"),
        ("bad-policy.yaml", workload("a", "ticker", "  restartPolicy: Sometimes\n"), 7, 18, "unknown value `Sometimes`"),
        ("bad-name.yaml", workload("Bad_Name", "ticker", ""), 4, 9, "invalid name `Bad_Name`"),
        ("dup-key.yaml", workload("a", "ticker", "  replicas: 1\n  replicas: 2\n"), 8, 3, "duplicate mapping key"),
        ("bad-env.yaml", workload("a", "ticker", "  env: {1BAD: x}\n"), 7, 8, "invalid env var name `1BAD`"),
        (
            "missing-file.yaml",
            "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: a\nspec:\n  component: ./nope.wasm\n".into(),
            6,
            14,
            "component `./nope.wasm` not found",
        ),
        (
            "api-version.yaml",
            workload("a", "ticker", "").replace("setpoint.dev/v1alpha1", "setpoint.dev/v9"),
            1,
            13,
            "unsupported apiVersion",
        ),
        ("syntax.yaml", "apiVersion: setpoint.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: c\n   bad: indent\n".into(), 5, 7, "mapping values are not allowed"),
    ];
    for (name, yaml, line, column, needle) in cases {
        let file = m.write(name, yaml);
        let diagnostics = rejected(host.apply_files(std::slice::from_ref(&file)).await);
        assert_located(&diagnostics, &file, *line, *column, needle);
    }
    assert!(
        host.status().await.workloads.is_empty(),
        "nothing from a rejected manifest runs"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_names_across_files_point_at_both() {
    let m = Manifests::new();
    let a = m.write("a.yaml", &workload("same", "ticker", ""));
    let b = m.write("b.yaml", &workload("same", "ticker", ""));
    let host = host();
    let diagnostics = rejected(host.apply_files(&[a.clone(), b.clone()]).await);
    assert_located(&diagnostics, &b, 4, 9, "workload `same` is defined twice");
    let help = diagnostics[0].help.as_deref().unwrap_or_default();
    assert!(
        help.contains(&format!("{}:4:9", a.display())),
        "help points at the first: {help}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_the_host_cannot_link_is_rejected_at_apply() {
    let m = Manifests::new();
    let good = workload("fine", "ticker", "");
    let bad = workload("beamer", "bad-import", "");
    let file = m.write("mixed.yaml", &format!("{good}---\n{bad}"));
    let host = host();
    let diagnostics = rejected(host.apply_files(std::slice::from_ref(&file)).await);
    // The first document has 6 lines and `---` is line 7, so the second document's
    // `component:` (its 6th line) is line 13.
    assert_located(&diagnostics, &file, 13, 14, "example:bad-import/teleporter");
    assert!(
        diagnostics[0]
            .help
            .as_deref()
            .unwrap_or_default()
            .contains("does not retry")
    );
    assert!(
        host.status().await.workloads.is_empty(),
        "the valid document did not run either"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_asking_for_what_the_component_lacks_is_rejected() {
    let m = Manifests::new();
    let probe_on_command = m.write(
        "p.yaml",
        &workload("p", "ticker", "  health:\n    probe: {period: 1s}\n"),
    );
    let watchdog_on_reactor = m.write(
        "w.yaml",
        &workload("w", "probed", "  health:\n    watchdog: {timeout: 1s}\n"),
    );
    let host = host();
    let d = rejected(
        host.apply_files(std::slice::from_ref(&probe_on_command))
            .await,
    );
    assert_located(
        &d,
        &probe_on_command,
        6,
        14,
        "sets health.probe, but its component is a command",
    );
    let d = rejected(
        host.apply_files(std::slice::from_ref(&watchdog_on_reactor))
            .await,
    );
    assert_located(&d, &watchdog_on_reactor, 6, 14, "sets health.watchdog");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_apply_leaves_running_workloads_untouched() {
    let m = Manifests::new();
    let file = m.write("w.yaml", &workload("steady", "ticker", "  replicas: 2\n"));
    let host = host();
    host.apply_files(&[file]).await.expect("valid manifest");
    let before = wait_for(&host, "steady", "2 ready", |w| w.ready == 2).await;
    // A new version of `steady` plus a broken document: all or nothing.
    let update = workload(
        "steady",
        "ticker",
        "  replicas: 5\n  env: {CHANGED: 'yes'}\n",
    );
    let broken = workload("broken", "ticker", "  replicas: lots\n");
    let bad = m.write("update.yaml", &format!("{update}---\n{broken}"));
    rejected(host.apply_files(&[bad]).await);
    let after = host.status().await;
    assert_eq!(after.workloads.len(), 1);
    let steady = after.workload("steady").unwrap();
    assert_eq!(steady.desired, 2);
    assert_eq!(steady.revision, before.revision);
    let ids =
        |w: &setpoint::WorkloadStatus| w.instances.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(steady),
        ids(&before),
        "the same instances are still running"
    );
    host.shutdown().await;
}

#[test]
fn the_json_schema_in_specs_is_current() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/manifest.schema.json");
    let generated =
        serde_json::to_string_pretty(&setpoint::manifest::json_schema()).unwrap() + "\n";
    if std::env::var_os("SETPOINT_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        stored == generated,
        "specs/manifest.schema.json is stale: run `SETPOINT_UPDATE_SCHEMA=1 cargo test --test e2e the_json_schema` (or `setpoint schema > specs/manifest.schema.json`)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_built_in_code_are_checked_too() {
    use setpoint::{Workload, WorkloadSpec};
    let host = host();
    let spec = WorkloadSpec::new(crate::common::guest("ticker"));
    let mut too_many = spec.clone();
    too_many.replicas = 1_000_000;
    let batch = vec![
        Workload::new("Not A Label", spec.clone()),
        Workload::new("twice", spec.clone()),
        Workload::new("twice", spec),
        Workload::new("huge", too_many),
    ];
    let d = rejected(host.apply(batch).await);
    let text: Vec<String> = d.iter().map(|d| d.message.clone()).collect();
    assert!(
        text.iter()
            .any(|m| m.contains("invalid workload name `Not A Label`")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|m| m.contains("`twice` appears twice")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|m| m.contains("1000000 replicas, over the limit")),
        "{text:?}"
    );
    assert!(host.status().await.workloads.is_empty());
    host.shutdown().await;
}

#[test]
fn building_a_host_outside_a_tokio_runtime_is_an_error_not_a_panic() {
    let err = setpoint::Host::builder()
        .build()
        .err()
        .expect("no runtime, no host");
    assert!(err.to_string().contains("inside a tokio runtime"), "{err}");
}

#[test]
fn every_problem_of_a_file_is_reported_at_once_with_what_was_meant() {
    let m = Manifests::new();
    let file = m.write(
        "typos.yaml",
        &workload(
            "a",
            "ticker",
            "  replcas: 2\n  restartPolicy: Alway\n  env:\n    A: [1]\n  resources:\n    memry: 5Mi\n",
        ),
    );
    let e = setpoint::manifest::load_files(&[file], &setpoint::manifest::ManifestLimits::default())
        .expect_err("rejected");
    let said: Vec<String> = e.diagnostics.iter().map(ToString::to_string).collect();
    let expect = [
        (7, "unknown field `replcas`: did you mean `replicas`?"),
        (8, "unknown value `Alway`: did you mean `Always`?"),
        (10, "expected text here, not a list or a map"),
        (12, "unknown field `memry`: did you mean `memory`?"),
    ];
    assert_eq!(e.diagnostics.len(), expect.len(), "{said:#?}");
    for ((line, needle), d) in expect.iter().zip(&e.diagnostics) {
        assert_eq!(d.origin.as_ref().map(|o| o.line), Some(*line), "{said:#?}");
        assert!(d.message.contains(needle), "{said:#?}");
    }
    // The fields there are, as help, not a pointer to a file the user does not have.
    let help = e.diagnostics[3].help.clone().unwrap_or_default();
    assert!(help.contains("memory, cpu"), "{help}");
}
