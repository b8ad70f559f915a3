//! A device maker's host: setpoint embedded in the device agent's own tokio runtime,
//! extended with a device capability (`device:sensors/read`, backed by Rust code here),
//! workloads applied from YAML text, their output followed, and a graceful shutdown.
//!
//! The workload is `guest-examples/sensor`, which imports the capability; the manifest
//! grants it by name. The same manifest without the grant is rejected at apply.
//!
//! Run with `cargo run -p setpoint --example device` after `cargo xtask guests`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use setpoint::{Capability, Host};

/// The device's sensors: a stand-in for an I2C bus read, in hundredths of a degree.
struct Sensors {
    reads: AtomicU32,
}

impl Sensors {
    fn temperature(&self, id: u32) -> Result<f32, String> {
        if id > 1 {
            return Err(format!("no sensor {id} on this board (0 and 1 exist)"));
        }
        let n = self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(20.0 + id as f32 + (n % 10) as f32 / 10.0)
    }
}

const MANIFEST: &str = "
apiVersion: setpoint.dev/v1alpha1
kind: Workload
metadata: {name: thermostat}
spec:
  component: ../guest-examples/target/wasm32-wasip2/release/sensor.wasm
  replicas: 2
  env: {PERIOD_MS: '50'}
  capabilities: [device:sensors/read]
";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sensors = Arc::new(Sensors {
        reads: AtomicU32::new(0),
    });
    let device = sensors.clone();
    let capability = Capability::new("device:sensors/read@0.1.0")
        .func("temperature", move |_caller, (id,): (u32,)| {
            Ok((device.temperature(id),))
        });
    let host = Host::builder().capability(capability).build()?;
    // Relative component paths resolve against the directory of the name given here.
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/device.yaml");

    // Without the grant, the component's import makes the manifest invalid.
    let ungranted = MANIFEST.replace("  capabilities: [device:sensors/read]\n", "");
    match host.apply_yaml(&ungranted, source).await {
        Ok(_) => anyhow::bail!("a workload importing an ungranted capability was accepted"),
        Err(rejected) => println!("without the grant:\n{rejected}"),
    }

    let mut logs = host.logs();
    host.apply_yaml(MANIFEST, source).await?;
    let mut readings = 0;
    while readings < 6 {
        let line = tokio::time::timeout(Duration::from_secs(10), logs.recv()).await??;
        println!("{} | {}", line.instance, line.line);
        readings += usize::from(line.line.contains(" C"));
    }
    let last = host.shutdown().await;
    let thermostat = last.workload("thermostat").expect("applied above");
    println!(
        "{} sensor reads served; thermostat restarts: {}",
        sensors.reads.load(Ordering::Relaxed),
        thermostat.restarts
    );
    anyhow::ensure!(thermostat.restarts == 0, "the sensor workload restarted");
    Ok(())
}
