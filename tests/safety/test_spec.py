"""The safety spec: strict parsing, errors that name the file and key, a stable hash."""

from __future__ import annotations

import copy

import pytest

from safetwin.safety.spec import Box, SpecError, parse_safety

BLOCK = {
    "joint_limits": {
        "a": {"position": [-1.0, 1.0], "velocity": 2.0, "acceleration": 10.0},
        "b": {"position": [-2.0, 0.5], "velocity": 1.5, "acceleration": 8.0},
    },
    "ee_speed_max": 0.25,
    "workspace": {"lo": [-0.5, -0.5, 0.0], "hi": [0.5, 0.5, 0.8]},
    "keepout": [{"name": "camera_mast", "lo": [0.3, 0.3, 0.0], "hi": [0.4, 0.4, 0.5]}],
    "contact_force_max": 20.0,
    "cost_limit": 2.0,
}


def parse(block: dict, **kw):
    return parse_safety(block, "scenes/x.yaml", **kw)


def test_parses_a_valid_block() -> None:
    spec = parse(BLOCK, joint_order=["a", "b"])
    assert spec.joint_names == ("a", "b")
    assert spec.joints[1].lower == -2.0 and spec.joints[1].velocity == 1.5
    assert spec.keepout[0].name == "camera_mast"
    assert spec.filter.gamma == pytest.approx(0.3)
    assert spec.workspace.contains((0.0, 0.0, 0.4)) and not spec.workspace.contains((0.0, 0.0, 0.9))


def test_default_ee_speed_is_iso_10218_reduced_speed() -> None:
    block = copy.deepcopy(BLOCK)
    del block["ee_speed_max"]
    assert parse(block).ee_speed_max == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.pop("cost_limit"), "scenes/x.yaml: safety.cost_limit: required key is missing"),
        (lambda b: b.update(cost_limt=1.0), "safety: unknown key(s) ['cost_limt']"),
        (lambda b: b["joint_limits"]["a"].update(velocity=-1.0),
         "scenes/x.yaml: safety.joint_limits.a.velocity: must be > 0"),
        (lambda b: b["workspace"].update(hi=[0.5, -0.6, 0.8]), "safety.workspace.hi: empty box"),
        (lambda b: b["keepout"][0].update(lo=[0.3, 0.3]), "safety.keepout[0].lo: must be a list of 3"),
        (lambda b: b["joint_limits"]["b"].update(position=[1.0, 0.0]), "safety.joint_limits.b.position"),
        (lambda b: b.update(contact_force_max=float("nan")), "safety.contact_force_max: must be finite"),
        (lambda b: b.update(filter={"gamma": 0.0}), "safety.filter.gamma: must be > 0"),
        (lambda b: b.update(filter={"gamma": 1.5}), "safety.filter.gamma: must be <= 1"),
        (lambda b: b.update(ee_speed_max="fast"), "safety.ee_speed_max: must be a number"),
    ],
)
def test_errors_name_file_and_key(mutate, message: str) -> None:
    block = copy.deepcopy(BLOCK)
    mutate(block)
    with pytest.raises(SpecError) as info:
        parse(block)
    assert message in str(info.value)


def test_joint_order_must_match_the_robot() -> None:
    with pytest.raises(SpecError, match="must match the robot's controlled joints"):
        parse(BLOCK, joint_order=["b", "a"])


def test_hash_changes_with_any_limit() -> None:
    base = parse(BLOCK)
    assert base.sha256() == parse(copy.deepcopy(BLOCK)).sha256()
    block = copy.deepcopy(BLOCK)
    block["joint_limits"]["a"]["velocity"] = 2.01
    assert parse(block).sha256() != base.sha256()


def test_box_contains_with_margin() -> None:
    box = Box("k", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert not box.contains((1.05, 0.5, 0.5)) and box.contains((1.05, 0.5, 0.5), margin=0.1)
