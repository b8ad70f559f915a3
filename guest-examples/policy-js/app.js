// A quarantine policy plugin, in JavaScript (jco componentize).
//
// Keeps `replicas` slots filled as the restart policy and back-off say, but a slot that ended
// `maxCrashes` times in a row (config; default 5) is quarantined: left empty for
// `cooldownMs` (default 60000) after its last end, with a warning event, while the other
// slots go on. The built-in policy's answer to a crash loop is back-off for the slot and,
// with a restart budget, failing the whole workload; this one isolates the bad slot
// instead, which suits replicas that crash on bad input routed to them.
//
// With `maxCrashes` 0 (never quarantine) and no back-off, it decides as the built-in policy
// does on workloads without a rollout or a restart budget; a differential test holds it
// to that.
//
//   policy:
//     plugin: policy_js.wasm
//     config: {maxCrashes: 3, cooldownMs: 30000}
//
// Types as jco gives them: records are objects with camelCase fields, an option is the
// value or, when absent, `undefined` (StarlingMonkey) or `null` (QuickJS), so it is
// tested with `== null`; an enum is its WIT name as a string, a variant is `{tag, val}`;
// a u64 is a BigInt (StarlingMonkey) or a number (QuickJS), so this code makes every one
// it computes with a BigInt first.

const NAMES = {
  exited: "Exited",
  trapped: "Trapped",
  "out-of-memory": "OutOfMemory",
  "cpu-budget-exceeded": "CpuBudgetExceeded",
  "start-failed": "StartFailed",
  "instantiation-failed": "InstantiationFailed",
  "probe-failed": "ProbeFailed",
  "probe-timeout": "ProbeTimeout",
  "watchdog-timeout": "WatchdogTimeout",
  "request-timeout": "RequestTimeout",
  stopped: "Stopped",
};

function summary(end) {
  if (end.reason === "exited" && end.exitCode != null) {
    return `Exited (${end.exitCode})`;
  }
  return NAMES[end.reason];
}

function settings(text) {
  let config = {};
  try {
    const parsed = JSON.parse(text);
    if (parsed && typeof parsed === "object") config = parsed;
  } catch (_) {
    // Not JSON: the defaults.
  }
  const count = (v, d) => (Number.isInteger(v) && v >= 0 ? v : d);
  return {
    maxCrashes: count(config.maxCrashes, 5),
    cooldownMs: BigInt(count(config.cooldownMs, 60000)),
  };
}

// The built-in's back-off: none for the first end in a row, then `initialMs` doubling per
// end, at most `maxMs`.
function backoffMs(backoff, consecutive) {
  if (consecutive <= 1) return 0n;
  const doublings = BigInt(Math.min(consecutive - 2, 31));
  const wait = BigInt(backoff.initialMs) * (1n << doublings);
  const max = BigInt(backoff.maxMs);
  return wait < max ? wait : max;
}

function wantsRestart(policy, end) {
  if (end.hostStop || policy === "always") return true;
  if (policy === "on-failure") return !end.success;
  return false;
}

export const reconciler = {
  reconcile(desired, observed, _nowUnixMs) {
    const { maxCrashes, cooldownMs } = settings(desired.config);
    const replicas = desired.replicas;
    const actions = [];
    for (const slot of observed.slots.slice(replicas)) {
      if (slot.instance != null && !slot.instance.stopping) {
        actions.push({ tag: "stop", val: slot.index });
      }
    }
    if (observed.failed) return actions;
    let soonest;
    const quarantined = [];
    for (let index = 0; index < replicas; index++) {
      const slot = observed.slots[index];
      if (slot != null && slot.instance != null) continue;
      const end = slot == null ? null : slot.lastEnd;
      if (end == null) {
        actions.push({ tag: "spawn", val: index });
        continue;
      }
      if (end.deterministic) {
        actions.push({
          tag: "mark-failed",
          val: {
            reason: NAMES[end.reason],
            message: `slot ${index} ended with ${summary(end)}; retrying cannot help`,
          },
        });
        return actions;
      }
      if (!wantsRestart(desired.restartPolicy, end)) continue;
      const ago = BigInt(end.agoMs);
      if (maxCrashes > 0 && !end.hostStop && slot.consecutiveEnds >= maxCrashes && ago < cooldownMs) {
        quarantined.push(index);
        const left = cooldownMs - ago;
        soonest = soonest === undefined || left < soonest ? left : soonest;
        continue;
      }
      const wait = backoffMs(desired.backoff, slot.consecutiveEnds);
      if (ago < wait) {
        const left = wait - ago;
        soonest = soonest === undefined || left < soonest ? left : soonest;
        continue;
      }
      actions.push({ tag: "spawn", val: index });
    }
    if (quarantined.length > 0) {
      actions.push({
        tag: "event",
        val: {
          warning: true,
          reason: "SlotQuarantined",
          message: `slots ${quarantined.join(", ")} ended ${maxCrashes} times in a row; empty for ${cooldownMs} ms after their last end`,
        },
      });
    }
    if (soonest !== undefined) {
      // A number is taken for a u64 by both backends.
      actions.push({ tag: "requeue-after-ms", val: Number(soonest) });
    }
    return actions;
  },
};
