"""Status computation and the merge patch that writes it."""

from __future__ import annotations

from typing import Any

from avr_operator.render.status import Observed, Problem, compute_status, merge_diff


def deployment(desired: int, ready: int, updated: int | None = None, **status: Any) -> dict[str, Any]:
    updated = ready if updated is None else updated
    return {
        "metadata": {"name": "x", "generation": 2},
        "spec": {"replicas": desired},
        "status": {
            "observedGeneration": 2,
            "replicas": max(desired, updated),
            "readyReplicas": ready,
            "updatedReplicas": updated,
            **status,
        },
    }


def conds(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_ready_when_every_component_is_ready() -> None:
    status = compute_status(
        generation=2,
        observed={"core": Observed(deployment(3, 3)), "sts": Observed(deployment(1, 1))},
        problems=[],
        previous=None,
        now="t1",
    )
    c = conds(status)
    assert (c["Ready"]["status"], c["Progressing"]["status"], c["Degraded"]["status"]) == (
        "True",
        "False",
        "False",
    )
    assert status["replicas"] == "3/3" and status["observedGeneration"] == 2
    assert all(x["observedGeneration"] == 2 for x in c.values())


def test_not_ready_names_the_lagging_components() -> None:
    status = compute_status(
        generation=2,
        observed={"core": Observed(deployment(3, 1, updated=3)), "sts": Observed(None)},
        problems=[],
        previous=None,
        now="t1",
    )
    ready = conds(status)["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "ComponentsNotReady"
    assert "core 1/3" in ready["message"] and "sts" in ready["message"]
    assert conds(status)["Progressing"]["status"] == "True"


def test_a_stuck_rollout_degrades() -> None:
    stuck = deployment(
        2,
        1,
        conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "m"}],
    )
    status = compute_status(generation=2, observed={"core": Observed(stuck)}, problems=[], previous=None, now="t")
    degraded = conds(status)["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "RolloutStuck")


def test_problems_degrade_and_transition_time_moves_only_on_status_change() -> None:
    obs = {"core": Observed(deployment(3, 3))}
    first = compute_status(generation=1, observed=obs, problems=[], previous=None, now="t1")
    second = compute_status(
        generation=2,
        observed=obs,
        problems=[Problem("MissingReference", "Secret x")],
        previous=first,
        now="t2",
    )
    assert conds(second)["Degraded"]["lastTransitionTime"] == "t2"
    assert conds(second)["Ready"]["lastTransitionTime"] == "t1"
    assert conds(second)["Degraded"]["message"] == "Secret x"
    third = compute_status(
        generation=2,
        observed=obs,
        problems=[Problem("MissingReference", "Secret y")],
        previous=second,
        now="t3",
    )
    assert conds(third)["Degraded"]["lastTransitionTime"] == "t2"


def test_invalid_spec_status_has_no_components() -> None:
    status = compute_status(generation=1, observed={}, problems=[Problem("InvalidSpec", "bad")], previous=None, now="t")
    assert status["components"] == {} and "replicas" not in status
    assert conds(status)["Ready"]["reason"] == "InvalidSpec"


def test_autoscaler_metrics_are_reported() -> None:
    hpa = {
        "status": {
            "currentReplicas": 4,
            "desiredReplicas": 5,
            "currentMetrics": [
                {
                    "type": "Pods",
                    "pods": {"metric": {"name": "avr_queue_length"}, "current": {"averageValue": "7"}},
                },
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 55}}},
            ],
        }
    }
    status = compute_status(
        generation=1, observed={"core": Observed(deployment(4, 4), hpa)}, problems=[], previous=None, now="t"
    )
    assert status["components"]["core"]["autoscaler"] == {
        "currentReplicas": 4,
        "desiredReplicas": 5,
        "currentMetrics": {"avr_queue_length": "7", "cpu": "55%"},
    }


def test_autoscaled_component_is_not_ready_below_the_autoscaler_minimum() -> None:
    hpa = {"spec": {"minReplicas": 3, "maxReplicas": 6}}
    status = compute_status(
        generation=1, observed={"core": Observed(deployment(1, 1), hpa)}, problems=[], previous=None, now="t"
    )
    assert conds(status)["Ready"]["status"] == "False" and "core 1/3" in conds(status)["Ready"]["message"]
    assert status["replicas"] == "1/3" and status["components"]["core"]["desiredReplicas"] == 3
    status = compute_status(
        generation=1, observed={"core": Observed(deployment(3, 3), hpa)}, problems=[], previous=None, now="t"
    )
    assert conds(status)["Ready"]["status"] == "True" and status["replicas"] == "3/3"


def test_merge_diff() -> None:
    old = {"a": 1, "b": {"c": 1, "d": 2}, "gone": True, "list": [1]}
    new = {"a": 1, "b": {"c": 1, "e": 3}, "list": [2]}
    assert merge_diff(old, new) == {"b": {"d": None, "e": 3}, "gone": None, "list": [2]}
    assert merge_diff(new, new) is None
    assert merge_diff(None, {"x": {}}) == {"x": {}}
