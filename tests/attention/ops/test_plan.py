"""``ops/plan.py``: a ``KernelPlan`` is a frozen value; its ``key`` (what the custom ops take
in its place) is the same for equal plans, maps back to the plan, and takes no part in
equality or the repr."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import subprocess
import sys

import pytest

from fmmformer_pl.attention.ops.plan import DEFAULT_PLAN, KernelPlan, plan_of


def test_equal_plans_share_one_key_that_maps_back():
    a = KernelPlan().with_(far=dict(state_chunk=16), sm_count=7)
    b = KernelPlan(sm_count=7).with_(far=dict(state_chunk=16))
    other = a.with_(sm_count=9)
    assert a == b and a.key == b.key and plan_of(a.key) == a
    assert other != a and other.key != a.key and plan_of(other.key) == other
    assert KernelPlan().key == DEFAULT_PLAN.key
    assert "key" not in repr(a)


def test_the_key_is_not_a_setting():
    with pytest.raises(TypeError):
        KernelPlan(key=3)  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_PLAN.key = 5  # type: ignore[misc]
    assert dataclasses.replace(DEFAULT_PLAN, sm_count=3).key == KernelPlan(sm_count=3).key


def test_an_unpickled_plan_gets_this_process_key():
    """A plan pickled in one process (a spawned worker, a saved model) and loaded in another,
    whose registry holds other plans, maps back to itself there."""
    plan = KernelPlan(sm_count=123).with_(far=dict(state_chunk=16))
    code = (
        "import pickle, sys\n"
        "from fmmformer_pl.attention.ops.plan import KernelPlan, plan_of\n"
        "others = [KernelPlan(sm_count=n) for n in range(5)]\n"
        "plan = pickle.loads(sys.stdin.buffer.read())\n"
        "assert plan_of(plan.key) == plan, (plan.key, plan_of(plan.key))\n"
        "assert plan.key == KernelPlan(sm_count=123).with_(far=dict(state_chunk=16)).key\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(plan), capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()
    assert copy.deepcopy(plan).key == plan.key
