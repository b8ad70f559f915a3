"""A staggered-start policy plugin, in Python (componentize-py).

Keeps `replicas` slots filled as the restart policy and back-off say, but starts at most `batch`
instances per `intervalMs` (config; defaults 1 and 1000): an instance counts as starting
until it is ready and `intervalMs` old. Many replicas coming up at once (a host start, a
scale-up, a crash of all of them) then reach their dependencies a batch at a time instead
of as a thundering herd. During a rollout, instances of the older revision are replaced
the same way, a batch at a time. Surplus slots are stopped at once.

With `batch` at least `replicas`, `intervalMs` 0 and no back-off, it decides as the
built-in policy does on workloads without a rollout or a restart budget; a differential
test holds it to that.

    policy:
      plugin: policy_python.wasm
      config: {batch: 2, intervalMs: 5000}
"""

import json

from wit_world import exports
from wit_world.imports.types import (
    Action_Event,
    Action_MarkFailed,
    Action_RequeueAfterMs,
    Action_Spawn,
    Action_Stop,
    EndReason,
    Event,
    Failure,
    RestartPolicy,
)

NAMES = {
    EndReason.EXITED: "Exited",
    EndReason.TRAPPED: "Trapped",
    EndReason.OUT_OF_MEMORY: "OutOfMemory",
    EndReason.CPU_BUDGET_EXCEEDED: "CpuBudgetExceeded",
    EndReason.START_FAILED: "StartFailed",
    EndReason.INSTANTIATION_FAILED: "InstantiationFailed",
    EndReason.PROBE_FAILED: "ProbeFailed",
    EndReason.PROBE_TIMEOUT: "ProbeTimeout",
    EndReason.WATCHDOG_TIMEOUT: "WatchdogTimeout",
    EndReason.REQUEST_TIMEOUT: "RequestTimeout",
    EndReason.STOPPED: "Stopped",
}


def summary(end):
    """`Exited (1)`, or the reason's name, as the host writes it."""
    if end.reason == EndReason.EXITED and end.exit_code is not None:
        return f"Exited ({end.exit_code})"
    return NAMES[end.reason]


def settings(config_text):
    """`batch` and `intervalMs` from the config, with their defaults."""
    try:
        config = json.loads(config_text)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        config = {}
    batch = config.get("batch", 1)
    interval = config.get("intervalMs", 1000)
    batch = batch if isinstance(batch, int) and batch >= 1 else 1
    interval = interval if isinstance(interval, int) and interval >= 0 else 1000
    return batch, interval


def backoff_ms(backoff, consecutive):
    """The built-in's back-off: none for the first end in a row, then `initial-ms`
    doubling per end, at most `max-ms`."""
    if consecutive <= 1:
        return 0
    return min(backoff.initial_ms * 2 ** min(consecutive - 2, 31), backoff.max_ms)


def wants_restart(policy, end):
    if end.host_stop:
        return True
    if policy == RestartPolicy.ALWAYS:
        return True
    if policy == RestartPolicy.ON_FAILURE:
        return not end.success
    return False


class Reconciler(exports.Reconciler):
    def reconcile(self, desired, observed, now_unix_ms):
        batch, interval = settings(desired.config)
        replicas = desired.replicas
        actions = []
        for slot in observed.slots[replicas:]:
            if slot.instance is not None and not slot.instance.stopping:
                actions.append(Action_Stop(slot.index))
        if observed.failed:
            return actions

        # Instances still starting take up the batch; the soonest to finish says when to
        # look again.
        starting = 0
        soonest = None
        for slot in observed.slots[:replicas]:
            i = slot.instance
            if i is None or i.stopping:
                continue
            if not i.ready or i.age_ms < interval:
                starting += 1
                left = max(interval - i.age_ms, 1)
                soonest = left if soonest is None else min(soonest, left)
        room = batch - starting

        waiting = 0
        backing_off = 0
        for index in range(replicas):
            slot = observed.slots[index] if index < len(observed.slots) else None
            i = slot.instance if slot is not None else None
            if i is not None:
                # During a rollout, an older revision's instance, ready and up, is
                # replaced a batch at a time.
                rolling = observed.rollout is not None
                if rolling and not i.current and not i.stopping and i.ready:
                    if room > 0:
                        actions.append(Action_Stop(index))
                        room -= 1
                    else:
                        waiting += 1
                continue
            end = slot.last_end if slot is not None else None
            if end is not None and end.deterministic:
                actions.append(
                    Action_MarkFailed(
                        Failure(
                            NAMES[end.reason],
                            f"slot {index} ended with {summary(end)}; retrying cannot help",
                        )
                    )
                )
                return actions
            if end is not None and not wants_restart(desired.restart_policy, end):
                continue
            if end is not None:
                wait = backoff_ms(desired.backoff, slot.consecutive_ends)
                if end.ago_ms < wait:
                    left = wait - end.ago_ms
                    backing_off += 1
                    soonest = left if soonest is None else min(soonest, left)
                    continue
            if room > 0:
                actions.append(Action_Spawn(index))
                room -= 1
            else:
                waiting += 1

        if backing_off > 0:
            actions.append(
                Action_Event(
                    Event(
                        True,
                        "BackOff",
                        f"{backing_off} slots back off after ending in a row",
                    )
                )
            )
        if waiting > 0:
            actions.append(
                Action_Event(
                    Event(
                        False,
                        "Staggered",
                        f"{waiting} slots wait for a start: at most {batch} start every {interval} ms",
                    )
                )
            )
        if soonest is not None and (waiting > 0 or backing_off > 0):
            actions.append(Action_RequeueAfterMs(soonest))
        return actions
