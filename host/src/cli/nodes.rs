//! `setpoint get nodes` and `setpoint describe node/NAME`: the fleet's nodes as the
//! daemon asked sees them.

use std::process::ExitCode;

use setpoint::daemon::wire::{NodeDetail, NodeInfo};

use super::client::{Target, fail};
use super::objects::url_word;
use super::output::{GetOutput, age, print_rows, print_value, row};

/// Whether `word` names the node kind.
pub fn is_node_kind(word: &str) -> bool {
    matches!(word, "node" | "nodes" | "no")
}

fn labels(node: &NodeInfo) -> String {
    if node.labels.is_empty() {
        return "<none>".into();
    }
    let pairs: Vec<String> = node
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.join(",")
}

fn state(node: &NodeInfo) -> &'static str {
    if node.fenced {
        "Fenced"
    } else if node.ready {
        "Ready"
    } else {
        "NotReady"
    }
}

/// `setpoint get nodes [NAME]`.
pub async fn get_nodes(target: Target, name: Option<&str>, output: GetOutput) -> ExitCode {
    let mut nodes: Vec<NodeInfo> = match target.client().get_json("/v1/nodes").await {
        Ok(n) => n,
        Err(e) => return fail(&e),
    };
    if let Some(name) = name {
        nodes.retain(|n| n.name == name);
        if nodes.is_empty() {
            return fail(&super::client::local_error(format!(
                "node `{name}` not found among the fleet's live nodes"
            )));
        }
    }
    if output == GetOutput::Name {
        for n in &nodes {
            println!("node/{}", n.name);
        }
        return ExitCode::SUCCESS;
    }
    if print_value(&nodes, output) {
        return ExitCode::SUCCESS;
    }
    let mut rows = vec![row(&["NAME", "STATUS", "INSTANCES", "HEARTBEAT", "LABELS"])];
    for n in &nodes {
        let name = if n.this {
            format!("{} (this)", n.name)
        } else {
            n.name.clone()
        };
        rows.push(vec![
            name,
            state(n).into(),
            n.instances.to_string(),
            format!(
                "{} ago",
                age(std::time::Duration::from_millis(n.last_heartbeat_ms))
            ),
            labels(n),
        ]);
    }
    print_rows(&rows, "No nodes.");
    ExitCode::SUCCESS
}

/// `setpoint describe node/NAME`.
pub async fn describe_node(target: Target, name: &str, output: GetOutput) -> ExitCode {
    let detail: NodeDetail = match target
        .client()
        .get_json(&format!("/v1/nodes/{}", url_word(name)))
        .await
    {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    if output == GetOutput::Name {
        println!("node/{}", detail.node.name);
        return ExitCode::SUCCESS;
    }
    if print_value(&detail, output) {
        return ExitCode::SUCCESS;
    }
    let n = &detail.node;
    println!("Name:        {}", n.name);
    println!("Status:      {}", state(n));
    println!("Labels:      {}", labels(n));
    println!("Started:     {}", n.started);
    println!("Version:     {}", n.version);
    println!(
        "Heartbeat:   {} ago",
        age(std::time::Duration::from_millis(n.last_heartbeat_ms))
    );
    println!("Instances:   {}", n.instances);
    let mut rows = vec![row(&[
        "WORKLOAD", "INSTANCE", "SLOT", "PHASE", "READY", "AGE",
    ])];
    for (workload, instances) in &detail.instances_by_workload {
        for i in instances {
            rows.push(vec![
                workload.clone(),
                i.id.clone(),
                i.slot.to_string(),
                i.phase.to_string(),
                i.ready.to_string(),
                age(i.age),
            ]);
        }
    }
    println!();
    print_rows(&rows, "No instances on this node.");
    ExitCode::SUCCESS
}
