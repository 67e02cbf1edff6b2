"""kernels/cpu.py `_fold_repeats`: runs of driver steps that repeat but for their variables'
names become calls of one function; what a run reads is passed, what it assigns and is read
later is returned, and lines that cannot move into a function stay where they are."""
import numpy as np

from kernels import cpu


def _block(k):
    """One step of a made-up driver: a temporary from the workspace, a kernel call on the
    previous block's result, a flat view."""
    return [f"    # step {k}: elementwise",
            f"    b{k + 1}_add = workspace[_w{k}:_w{k} + d0 * 4].view(np.float32)",
            f"    K0(b{k + 1}_add, b{k}_add, st{k})",
            f"    b{k + 1}_add_f = b{k + 1}_add.reshape(-1)"]


PROLOGUE = ["    d0 = in0.shape[0]", "    b0_add = in0"]


def _run(steps, args, body_after=("    return (b200_add,)",)):
    return cpu._fold_repeats(steps, args, PROLOGUE + [cpu._STEPS_HERE, *body_after])


def _execute(functions, program_lines, args, values):
    """Run the folded program with kernels that record what they are called with."""
    calls = []
    namespace = {"np": np, "K0": lambda *a: calls.append(tuple(id(x) for x in a))}
    source = "\n".join(functions + [f"def program({', '.join(args)}):"] + PROLOGUE +
                       program_lines + ["    return (b200_add, b200_add_f)"])
    exec(compile(source, "<folded>", "exec"), namespace)
    return namespace["program"](*values), calls


def test_a_repeated_step_becomes_calls_of_one_function_that_compute_the_same():
    steps = [_block(k) for k in range(200)]
    args = ["in0", "workspace"] + [f"st{k}" for k in range(200)] + \
        [f"_w{k}" for k in range(200)]
    functions, lines = _run(steps, args)
    assert sum(line.startswith("def _steps") for line in functions) == 1
    calls = [line for line in lines if "_steps0(" in line]
    assert len(calls) == 200 // cpu.FOLD_STEPS  # whole calls of FOLD_STEPS steps
    # each step's comment kept, in order; the steps left over written out as they were
    assert [line for line in lines if "# step" in line] == \
        [f"    # step {k}: elementwise" for k in range(200)]
    tail = 200 - len(calls) * cpu.FOLD_STEPS
    assert lines[-len(_block(0)) * tail:] == [l for s in steps[200 - tail:] for l in s]
    # the folded program and the lines as written call the kernels with the same arrays
    workspace = np.zeros(1 << 12, np.uint8)
    values = [np.zeros((3, 2), np.float32), workspace] + \
        [np.full(2, k, np.float32) for k in range(200)] + [0] * 200
    flat = [line for s in steps for line in s]
    got, got_calls = _execute(functions, lines, args, values)
    want, want_calls = _execute([], flat, args, values)
    assert len(got_calls) == len(want_calls) == 200
    # (the temporaries are new views each run: compare what is the same object in both)
    assert [c[2] for c in got_calls] == [c[2] for c in want_calls]  # the st<k>, in order
    assert [got_calls[k][1] == got_calls[k - 1][0] for k in range(1, 200)] == [True] * 199
    assert got[0].shape == want[0].shape == (3,)  # (d0 * 4 bytes of float32)
    assert got[1].base is not None and np.shares_memory(got[0], got[1])


def test_variables_read_after_a_run_are_returned_and_the_others_are_not():
    steps = [_block(k) for k in range(128)]
    args = ["in0", "workspace"] + [f"st{k}" for k in range(128)] + \
        [f"_w{k}" for k in range(128)]
    functions, lines = _run(steps, args, body_after=["    return (b128_add, b5_add_f)"])
    call = next(line for line in lines if "_steps0(" in line)
    targets = call.split(" = ")[0].split(", ")
    # a call's last result feeds the next call, b5_add_f is read by the return: returned
    assert "b32_add" in targets[0] or "b32_add," in call
    assert any("b5_add_f" in line.split(" = ")[0] for line in lines if "_steps0(" in line)
    # a flat view that nothing reads later is not handed back
    assert not any("b6_add_f" in line.split(" = ")[0] for line in lines if "_steps0(" in line)


def test_steps_that_hold_blocks_or_unknown_forms_are_left_as_written():
    steps = [_block(k) + ["    if d0 > 1:", f"        K0(b{k}_add)"] for k in range(128)]
    args = ["in0", "workspace"] + [f"st{k}" for k in range(128)] + \
        [f"_w{k}" for k in range(128)]
    functions, lines = _run(steps, args)
    assert functions == [] and lines == [l for s in steps for l in s]
    # assignments _reads_and_writes would not see: a tuple, another augmented operator
    for line in ("    b{1}_add, b{0}_add = b{0}_add, b{1}_add", "    b{1}_add -= b{0}_add"):
        steps = [_block(k) + [line.format(k, k + 1)] for k in range(128)]
        functions, lines = _run(steps, args)
        assert functions == [] and lines == [l for s in steps for l in s]
    # a local variable _LOCAL does not know (it would be read as a global in a function)
    steps = [_block(k) + [f"    tmp = b{k}_add"] for k in range(128)]
    functions, lines = _run(steps, args)
    assert functions == [] and lines == [l for s in steps for l in s]
    # too few steps to repeat FOLD_REPEATS times
    steps = [_block(k) for k in range(cpu.FOLD_STEPS * cpu.FOLD_REPEATS - 1)]
    assert _run(steps, args)[0] == []


def test_the_longest_repeat_is_found_alike_with_the_tables_of_a_long_program():
    # (_fold_repeats hands _longest_repeat the steps of each shape, where each period's
    # stretch ended, and where the next unfoldable step is: the same answers as the plain
    # search, which tries every period at every step)
    rng = np.random.default_rng(4)
    for trial in range(40):
        period = int(rng.integers(1, 90))
        unit = [int(x) for x in rng.integers(0, 4, period)]
        shapes = unit * int(rng.integers(1, 6)) + [int(x) for x in rng.integers(0, 6, 30)]
        for k in rng.integers(0, len(shapes), int(rng.integers(0, 3))):
            shapes[k] = None  # (steps that are never folded)
        where = {}
        for k, shape in enumerate(shapes):
            if shape is not None:
                where.setdefault(shape, []).append(k)
        unfolded = [len(shapes)] * (len(shapes) + 1)
        for k in range(len(shapes) - 1, -1, -1):
            unfolded[k] = k if shapes[k] is None else unfolded[k + 1]
        ends = {}
        for start in range(len(shapes)):  # (starts only grow, as in _fold_repeats)
            assert cpu._longest_repeat(shapes, start, where, ends, unfolded) == \
                cpu._longest_repeat(shapes, start), (trial, start)


def test_a_run_of_chunks_longer_than_the_old_period_limit_is_folded():
    # a recurrent layer's bias gradient: 64 per-step sums, then the step adding them up,
    # again and again (a period of 65 steps)
    steps, k = [], 0
    for chunk in range(6):
        for _ in range(64):
            steps.append(_block(k))
            k += 1
        steps.append([f"    # step {k}: elementwise",
                      f"    b{k + 1}_add = b{k}_add + b{k - 1}_add",
                      f"    b{k + 1}_add_f = b{k + 1}_add.reshape(-1)"])
        k += 1
    args = ["in0", "workspace"] + [f"st{j}" for j in range(k)] + [f"_w{j}" for j in range(k)]
    functions, lines = cpu._fold_repeats(steps, args, PROLOGUE + [
        cpu._STEPS_HERE, f"    return (b{k}_add,)"])
    assert cpu._longest_repeat([0] * 64 + [1] + [0] * 64 + [1], 0)[1] == 1
    calls = [line for line in lines if "_steps" in line and "(" in line]
    assert functions and len(calls) >= 4
    assert sum(len(s) for s in steps) > 2 * len(lines)
