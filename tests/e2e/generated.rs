//! Generated manifests against the loader and an in-process host: whatever the field
//! values (durations from nothing to absurd, negative and huge counts, odd paths and
//! labels), loading never panics, and an apply that loading accepted never kills the
//! host's controller. Bounded: a fixed number of cases, each applied with 0 replicas
//! where it runs at all, on one host.

use proptest::prelude::*;

use crate::common::{Manifests, guest};

/// A duration as text: a number with a unit, sometimes absurd or wrong.
fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            0u64..5000,
            prop_oneof![Just("ms"), Just("s"), Just("m"), Just("h"), Just("d")]
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
        (
            0u64..u64::MAX,
            prop_oneof![Just("y"), Just("d"), Just("s"), Just("ns")]
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
        Just("0s".to_string()),
        Just("-5s".to_string()),
        Just("soon".to_string()),
    ]
}

/// A count, sometimes out of every range.
fn count() -> impl Strategy<Value = String> {
    prop_oneof![
        (0i64..10).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("lots".to_string()),
        Just("1.5".to_string()),
    ]
}

/// One optional spec line (or block), from the manifest's whole vocabulary.
fn field(kind: &'static str) -> impl Strategy<Value = String> {
    let workload = prop_oneof![
        count().prop_map(|c| format!("  replicas: {c}\n")),
        (duration(), duration(), duration()).prop_map(|(a, b, c)| format!(
            "  backoff: {{initial: {a}, max: {b}, resetAfter: {c}}}\n"
        )),
        (count(), duration()).prop_map(|(c, d)| format!(
            "  restartBudget: {{maxRestarts: {c}, window: {d}}}\n"
        )),
        (duration(), duration(), any::<bool>()).prop_map(|(a, b, r)| format!(
            "  strategy: {{progressDeadline: {a}, minReady: {b}, autoRollback: {r}, maxSurge: 25%}}\n"
        )),
        (duration(), duration()).prop_map(|(a, b)| format!(
            "  resources: {{memory: 1Mi, cpu: {{budget: {a}, per: {b}}}}}\n"
        )),
    ];
    let job = prop_oneof![
        count().prop_map(|c| format!("  completions: {c}\n")),
        count().prop_map(|c| format!("  parallelism: {c}\n")),
        duration().prop_map(|d| format!("  activeDeadline: {d}\n")),
        duration().prop_map(|d| format!("  ttlAfterFinished: {d}\n")),
    ];
    let common = prop_oneof![
        duration().prop_map(|d| format!("  terminationGracePeriod: {d}\n")),
        prop_oneof![
            Just("/data"),
            Just("/../../etc"),
            Just("data"),
            Just("/a//b/"),
            Just("/")
        ]
        .prop_map(|g| format!("  dirs: [{{host: '.', guest: '{g}', readOnly: true}}]\n")),
        prop_oneof![Just("a"), Just("bad key"), Just("x.io/ok"), Just("-no")]
            .prop_map(|k| format!("  args: [--{k}]\n")),
        prop_oneof![Just("127.0.0.1:9"), Just("nowhere"), Just("[::1]:80")]
            .prop_map(|a| format!("  network: {{connect: ['{a}']}}\n")),
    ];
    if kind == "Job" {
        prop_oneof![job, common].boxed()
    } else {
        prop_oneof![workload, common].boxed()
    }
}

/// A whole manifest: a kind, a label, and up to six fields.
fn manifest() -> impl Strategy<Value = String> {
    prop_oneof![Just("Workload"), Just("Job")].prop_flat_map(|kind| {
        (
            prop::collection::vec(field(kind), 0..6),
            prop_oneof![Just("tier"), Just("bad key"), Just("a.b/c"), Just("")],
        )
            .prop_map(move |(fields, label)| {
                format!(
                    "apiVersion: setpoint.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: gen\n  labels: {{'{label}': v}}\nspec:\n  component: {}\n{}",
                    guest("ticker").display(),
                    fields.concat()
                )
            })
    })
}

#[test]
fn generated_manifests_never_panic_the_loader_or_the_controller() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let host = rt
        .block_on(async { setpoint::Host::builder().build() })
        .unwrap();
    let m = Manifests::new();
    let limits = setpoint::manifest::ManifestLimits::default();
    let (accepted, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    proptest!(ProptestConfig::with_cases(150), |(text in manifest())| {
        let source = m.dir.path().join("gen.yaml");
        match setpoint::manifest::load_str(&source, &text, &limits) {
            Err(rejected) => {
                prop_assert!(!rejected.diagnostics.is_empty());
                refused.set(refused.get() + 1);
            }
            Ok(mut workloads) => {
                accepted.set(accepted.get() + 1);
                // Nothing needs to run: the point is the controller's arithmetic.
                for w in &mut workloads {
                    if w.spec.job.is_none() {
                        w.spec.replicas = w.spec.replicas.min(1);
                    }
                }
                let _ = rt.block_on(host.apply(workloads));
                rt.block_on(host.ping()).map_err(|e| {
                    TestCaseError::fail(format!("the controller died on\n{text}\n{e}"))
                })?;
                let _ = rt.block_on(host.delete("gen"));
            }
        }
    });
    assert!(host.failure().is_none(), "{:?}", host.failure());
    eprintln!(
        "{} generated manifests accepted, {} refused",
        accepted.get(),
        refused.get()
    );
    assert!(accepted.get() > 0 && refused.get() > 0);
    rt.block_on(host.shutdown());
}
