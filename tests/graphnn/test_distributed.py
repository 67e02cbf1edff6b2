"""gn.distributed: data-parallel training over MPI ranks.

In-process tests check the pieces without MPI (one rank). The MPI tests launch
examples/mlp_digits_distributed.py with `mpirun -n 2` and check that both ranks end with the
same parameters, that 2 ranks give the same parameters as 1 process on the same global
batches, that a failing rank stops the job, and that a run resumed from the checkpoint
ends exactly where an uninterrupted run does. They skip, saying why, without mpirun or
mpi4py (`make test` installs both when it can).
"""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphnn as gn
from graphnn import distributed
from graphnn.tools import distributed_bench

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mlp_digits_distributed.py"
STEPS = 30


def small_model(optimizer, seed=0):
    x = gn.input("x", (None, 6))
    y = gn.input("y", (None,), dtype="int64")
    W = gn.param("W", shape=(6, 8), seed=seed)
    b = gn.param("b", np.zeros(8, np.float32))
    V = gn.param("V", shape=(8, 3), seed=seed + 1)
    logits = gn.tanh(x @ W + b) @ V
    loss = gn.softmax_cross_entropy(logits, y)
    return loss, [W, b, V], gn.metrics.accuracy(logits, y), optimizer


def batches(steps=4, n=12, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 6)).astype(np.float32), rng.integers(0, 3, n))
            for _ in range(steps)]


OPTIMIZERS = [lambda: gn.optim.SGD(0.1, momentum=0.9), lambda: gn.optim.Adam(0.05),
              lambda: gn.optim.RMSprop(0.01)]


# -- one process, no MPI ---------------------------------------------------------------------

@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
def test_one_rank_equals_the_fused_training_step(make_optimizer):
    loss, params, acc, opt = small_model(make_optimizer())
    trainer = distributed.DataParallel(loss, params, opt, metrics=[acc], comm=None,
                                       backend="numpy")
    got = [trainer(x=X, y=Y) for X, Y in batches()]
    trained = [p.value.copy() for p in params]

    loss, params, acc, opt = small_model(make_optimizer())
    step = gn.compile([loss, acc], updates=opt.updates(loss, params), backend="numpy")
    expected = [step(x=X, y=Y) for X, Y in batches()]
    for (l1, a1), (l2, a2) in zip(got, expected):
        assert l1 == l2 and a1 == a2
    for mine, reference in zip(trained, params):
        np.testing.assert_array_equal(mine, reference.value)
    assert trainer.steps_done == 4


def test_gn_fit_runs_a_trainer_like_a_compiled_step():
    loss, params, acc, opt = small_model(gn.optim.SGD(0.1))
    trainer = distributed.DataParallel(loss, params, opt, metrics=[acc], comm=None,
                                       backend="numpy")
    X, Y = batches(steps=1, n=40)[0]
    history = gn.fit(trainer, {"x": X, "y": Y}, epochs=2, batch_size=16, progress=False,
                     validation={"x": X, "y": Y})
    assert trainer.steps_done == 6 and len(history.steps["loss"]) == 6
    assert history.history["val_loss"][1] < history.history["val_loss"][0]


def test_apply_updates_uses_the_given_gradients():
    W = gn.param("W", np.ones((2, 2), np.float32))
    g = gn.input("gW", (2, 2))
    apply = gn.compile([], updates=gn.optim.SGD(0.5).apply_updates([W], [g]), backend="numpy")
    apply(gW=np.full((2, 2), 2.0, np.float32))
    np.testing.assert_array_equal(W.value, np.zeros((2, 2), np.float32))
    with pytest.raises(gn.GraphError, match="do not match"):
        gn.optim.SGD(0.5).apply_updates([W], [gn.input("g3", (3,))])


def test_shards_cover_the_batch_once():
    for n in (1, 7, 32, 33):
        for size in (1, 2, 3, 4):
            bounds = [distributed.shard_bounds(n, r, size) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            rows = [stop - start for start, stop in bounds]
            assert max(rows) - min(rows) <= 1
    assert distributed.shard_bounds(32, 1, 2) == (16, 32)


def test_checkpoint_restores_values_and_step(tmp_path):
    loss, params, acc, opt = small_model(gn.optim.Adam(0.05))
    trainer = distributed.DataParallel(loss, params, opt, comm=None, backend="numpy",
                                       checkpoint=tmp_path / "ck.npz", checkpoint_every=2)
    data = batches(steps=3)
    for X, Y in data[:2]:
        trainer(x=X, y=Y)
    saved_hash = trainer.state_hash()
    trainer(x=data[2][0], y=data[2][1])
    assert trainer.state_hash() != saved_hash
    assert trainer.restore(tmp_path / "ck.npz") == 2
    assert trainer.state_hash() == saved_hash and trainer.steps_done == 2
    assert not list(tmp_path.glob("*.partial*"))


def test_user_mistakes_are_graph_errors():
    loss, params, acc, opt = small_model(gn.optim.SGD(0.1))
    with pytest.raises(gn.GraphError, match="must be a scalar"):
        distributed.DataParallel(loss, params, opt, metrics=[params[0] * 1.0], comm=None,
                                 backend="numpy")
    trainer = distributed.DataParallel(loss, params, opt, comm=None, backend="numpy")
    with pytest.raises(gn.GraphError, match="same number of rows"):
        trainer(x=np.zeros((4, 6), np.float32), y=np.zeros(5, np.int64))


def test_plain_process_needs_no_mpi(monkeypatch):
    for name in distributed.MPI_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert distributed.world() == (None, 0, 1)


def test_communication_estimate_is_the_ring_formula():
    # 1M float32 on 2 ranks: each sends 4 MB = 32 Mbit, 32 ms at 1 Gb/s, + 2 x 50 us latency
    assert distributed_bench.communication_estimate(10**6, 2, 1) == pytest.approx(0.0321)
    assert distributed_bench.communication_estimate(10**6, 2, 10) == pytest.approx(0.0033)


def test_global_batches_follow_fit_order():
    seen = list(distributed.global_batches(10, 4, epochs=2, seed=3))
    assert [s for s, _, _ in seen] == list(range(6))
    rng = np.random.default_rng(3)
    first = rng.permutation(10)
    np.testing.assert_array_equal(np.concatenate([r for _, e, r in seen if e == 0]), first)


# -- two ranks with mpirun -------------------------------------------------------------------

def mpirun_or_skip():
    mpirun = shutil.which("mpirun")
    reason = None
    if mpirun is None:
        reason = "mpirun not found (install OpenMPI: apt-get install openmpi-bin libopenmpi-dev)"
    elif importlib.util.find_spec("mpi4py") is None:
        reason = "mpi4py is not installed (pip install 'graphnn[mpi]')"
    if reason:
        print(f"skipping the MPI tests: {reason}")
        pytest.skip(reason)
    command = [mpirun, "-n", "2", "--oversubscribe"]
    if os.geteuid() == 0:
        command.append("--allow-run-as-root")
    return command


def run(command, *args, timeout=180):
    env = {k: v for k, v in os.environ.items() if k not in distributed.MPI_ENVIRONMENT}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    done = subprocess.run(command + [sys.executable, str(EXAMPLE), *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """(output, path of the final parameters) of an uninterrupted 2-rank run of STEPS steps."""
    mpirun = mpirun_or_skip()
    path = tmp_path_factory.mktemp("two_ranks") / "two.npz"
    code, output = run(mpirun, "--steps", STEPS, "--save-params", path)
    assert code == 0, output
    return output, path


def test_two_ranks_agree_and_equal_one_process(two_rank_run, tmp_path):
    output, two_path = two_rank_run
    hashes = [line.split()[-1] for line in output.splitlines() if "parameter hash" in line]
    assert len(hashes) == 2 and hashes[0] == hashes[1], output
    assert "all 2 ranks hold identical parameters" in output

    code, output = run([], "--steps", STEPS, "--save-params", tmp_path / "one.npz")
    assert code == 0, output
    two, one = np.load(two_path), np.load(tmp_path / "one.npz")
    assert sorted(two) == sorted(one)
    for name in one:
        # the same global batches; only the order of float32 sums differs
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
        assert not np.array_equal(one[name], np.zeros_like(one[name]))


def test_failing_rank_stops_the_job_and_the_checkpoint_resumes(two_rank_run, tmp_path):
    mpirun = mpirun_or_skip()
    checkpoint = tmp_path / "ck.npz"
    code, output = run(mpirun, "--steps", STEPS, "--checkpoint", checkpoint, "--every", 2,
                       "--fail-at", 3, timeout=120)
    assert code != 0
    assert "rank 1 of 2 failed during training" in output, output
    assert "injected failure on rank 1 at step 3" in output
    assert checkpoint.exists()

    code, output = run(mpirun, "--steps", STEPS, "--checkpoint", checkpoint, "--resume",
                       "--save-params", tmp_path / "resumed.npz")
    assert code == 0, output
    assert "resumed from" in output and "after step 2" in output
    resumed, straight = np.load(tmp_path / "resumed.npz"), np.load(two_rank_run[1])
    for name in straight:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)
