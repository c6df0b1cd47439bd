"""The process policy (minipeft/runtime.py): one BLAS thread count for every entry point, the
backbone built under it and keyed by it, the allocator keeping freed memory."""
import json
import os
import subprocess
import sys

import pytest

import minipeft as mp
from minipeft import pretrained, runtime, tree

threadpoolctl = pytest.importorskip("threadpoolctl")
TINY = mp.Config(d=8, h=2, N=1, d_ff=8)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blas_threads_now():
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


@pytest.fixture
def tiny_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIPEFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(runtime.ENV_THREADS, raising=False)
    monkeypatch.setitem(pretrained.RECIPE, "epochs", 1)
    return tmp_path / "cache"


def _pretrain_under(outer, monkeypatch):
    """pretrain(TINY) while the caller holds a BLAS limit of ``outer`` threads; returns the
    params' bytes, the info, and the BLAS thread counts seen inside fit."""
    seen = []
    real_fit = pretrained.fit

    def spy(*a, **k):
        seen.extend(blas_threads_now())
        return real_fit(*a, **k)

    monkeypatch.setattr(pretrained, "fit", spy)
    with threadpoolctl.threadpool_limits(limits=outer, user_api="blas"):
        p, info = pretrained.pretrain(TINY, seed=0, progress=False)
        assert blas_threads_now() == [outer] * len(blas_threads_now())  # the caller's limit is back
    return [a.tobytes() for _, a in tree.leaves_with_paths(p)], info, seen


def test_pretrain_under_one_and_two_threads_gives_the_same_bits(tiny_recipe, monkeypatch):
    """The caller's limit (1 or 2 BLAS threads) does not reach the build: it runs under the
    policy (1 thread), both builds have the same bits, and the record says how it was built."""
    b1, info1, seen1 = _pretrain_under(1, monkeypatch)
    b2, info2, seen2 = _pretrain_under(2, monkeypatch)
    assert seen1 and set(seen1) == {1} and set(seen2) == {1}
    assert b1 == b2
    assert info1["spec"]["blas_threads"] == info2["spec"]["blas_threads"] == 1
    assert info1["built_with"]["blas_threads"] == 1 and info1["built_with"]["blas"], info1["built_with"]


def test_another_thread_policy_is_another_build(tiny_recipe, monkeypatch):
    """MINIPEFT_THREADS=2: the build runs under 2 threads and goes to another cache file, so a
    one-thread backbone is never replaced or mistaken for it."""
    one = pretrained.backbone_path(TINY)
    monkeypatch.setenv(runtime.ENV_THREADS, "2")
    two = pretrained.backbone_path(TINY)
    assert one != two
    _, info, seen = _pretrain_under(1, monkeypatch)
    assert set(seen) == {2} and info["spec"]["blas_threads"] == 2


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_is_a_clear_error(monkeypatch, raw):
    monkeypatch.setenv(runtime.ENV_THREADS, raw)
    with pytest.raises(ValueError, match="MINIPEFT_THREADS must be a positive integer"):
        runtime.threads()


def test_the_cli_refuses_a_bad_policy_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, runtime.ENV_THREADS: "many", "MINIPEFT_CACHE": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "minipeft", "info"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "MINIPEFT_THREADS" in p.stderr
    env[runtime.ENV_THREADS], env[runtime.ENV_MALLOC] = "1", "sometimes"
    p = subprocess.run([sys.executable, "-m", "minipeft", "info"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2 and "MINIPEFT_MALLOC must be one of" in p.stderr


def test_every_cli_command_runs_under_the_policy(monkeypatch, tmp_path):
    """`minipeft info` (the cheapest command) under a 2-thread outer limit: BLAS at the policy's 1."""
    from minipeft import cli

    monkeypatch.delenv(runtime.ENV_THREADS, raising=False)
    monkeypatch.setenv("MINIPEFT_CACHE", str(tmp_path))
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        assert cli.main(["info"]) == 0
        assert set(blas_threads_now()) == {1}
    runtime._state["limit"].restore_original_limits()


_FAULTS = """
import json, resource, sys
import numpy as np
from minipeft import runtime
state = runtime.tune_allocator()
def round_trip():
    arrays = [np.ones(3 << 17) for _ in range(16)]   # 16 arrays of 3 MiB, freed together
    del arrays
round_trip()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_trip()
print(json.dumps({"state": state, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt and minor-fault counts")
def test_keep_makes_a_second_round_of_the_same_buffers_fault_free():
    """48 MiB allocated and freed at once, twice, in a fresh process: with "keep" the second round
    reuses the pages (few minor faults); with glibc's defaults they go back to the kernel and
    fault in again."""
    out = {}
    for mode in ("keep", "default"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        env.update(PYTHONPATH=ROOT, **{runtime.ENV_MALLOC: mode})
        p = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env, timeout=60)
        assert p.returncode == 0, p.stderr
        out[mode] = json.loads(p.stdout)
    if out["keep"]["state"] == "unavailable":
        pytest.skip("not glibc")
    assert out["keep"]["state"].startswith("keep") and out["default"]["state"] == "default"
    pages = (48 << 20) // 4096
    assert out["default"]["faults"] > pages // 2, out
    assert out["keep"]["faults"] < pages // 10, out
