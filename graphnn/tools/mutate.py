"""Mutation testing of graphnn's core modules: plant one small bug, run the tests that cover
that module, and count how many planted bugs (mutants) a failing test catches.

    python -m graphnn.tools.mutate                       # every module, 40 mutants each
    python -m graphnn.tools.mutate --modules feeds,optim --per-module 20
    python -m graphnn.tools.mutate --list ops            # every mutation site of a module
    python -m graphnn.tools.mutate --ids graphnn/feeds.py:57:12:compare   # rerun some
    python -m graphnn.tools.mutate --write docs/TESTING.md   # and update the score table

`make mutate` runs the default sample under `nice` and writes the table to
docs/TESTING.md (between the `mutate:begin` and `mutate:end` markers).

How a mutant is made: the module is parsed with `ast` and every site one of these
operators applies to is listed (docstrings excepted):

    binop      + <-> -, * <-> /, // -> /, % -> //, ** -> *, << <-> >>, & <-> |, ^ -> &
    augassign  the same swaps in `x += y` and friends
    compare    < <-> <=, > <-> >=, == <-> !=, is <-> is not, in <-> not in
    boolop     and <-> or
    not        `not x` -> `x`
    neg        `-x` -> `x`
    cond       the test of an if / while / conditional expression negated
    const      an int constant n -> n + 1, a float x -> x + 1, True <-> False
    return     `return value` -> `return None`
    delete     a statement (assignment, call, raise, if, for, while, with, try) -> `pass`

Binary operators with a string operand (message building) are left out: swapping them
only crashes a message. A mutant is one site changed in the module's text (its bytes are
spliced, so the rest of the file, comments and line numbers included, stays as it is);
the changed text must parse to exactly the expected tree, else the site is dropped and
counted. `--per-module` sites per module are drawn with a fixed seed, so a run is
repeatable while the module's source stays the same.

How a mutant runs: the repository's files (tracked and new, not ignored) are copied once
to a temporary directory; for each mutant the module's file there is overwritten, the
module's focused test files (MODULES below) run in a fresh `python -m pytest -x` from that
directory (so the copy, not the installed graphnn, is imported), and the original file is
put back. No bytecode is written (PYTHONDONTWRITEBYTECODE=1: a mutant of the same size
and mtime second could otherwise be served from a stale .pyc), the kernel cache is a
private directory (GRAPHNN_CACHE_DIR; kernels/loader.py names cached modules by the hash
of their source, so a mutated generator writes new files there and never touches anyone
else's cache) and Hypothesis' example database is cleared between mutants. The unmutated
tests run first and must pass; a mutant whose run fails or errors is killed, one that
runs longer than the per-mutant timeout (a multiple of the unmutated run) is killed by
timeout (reported separately), one whose tests all pass survived.
"""
import argparse
import ast
import copy
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, asdict

# module key -> (file, focused test files run for its mutants, pytest -k expression).
# Fast test files first: a failure stops the run (-x). The CUDA simulator cases are left
# out (they run the same graphs and generated structure as cpu, minutes slower).
MODULES = {
    "feeds": ("graphnn/feeds.py",
              ["tests/graphnn/test_feeds.py", "tests/graphnn/test_errors.py",
               "tests/graphnn/test_backend_cpu.py"],
              "not cuda and not second_process"),
    "serialize": ("graphnn/serialize.py", ["tests/graphnn/test_serialize.py"], "not cuda"),
    "optim": ("graphnn/optim.py",
              ["tests/graphnn/test_optim.py", "tests/graphnn/test_optim_options.py"],
              "not cuda"),
    "ops": ("graphnn/ops.py",
            ["tests/graphnn/test_grad.py", "tests/graphnn/test_ops.py",
             "tests/graphnn/test_nn.py", "tests/graphnn/test_errors.py"], "not cuda"),
    "lowering": ("graphnn/lowering.py",
                 ["tests/graphnn/test_lowering.py", "tests/graphnn/test_aliasing.py",
                  "tests/graphnn/test_passes.py", "tests/graphnn/test_backend_cpu.py"],
                 "not cuda and not second_process"),
    "cpu": ("kernels/cpu.py",
            ["tests/kernels/test_cpu_codegen.py", "tests/graphnn/test_lowering.py",
             "tests/graphnn/test_aliasing.py", "tests/graphnn/test_backend_cpu.py",
             "tests/graphnn/test_cpu_library.py", "tests/graphnn/test_ops.py"],
            "not cuda and not second_process"),
}

BINOP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
               ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult,
               ast.LShift: ast.RShift, ast.RShift: ast.LShift, ast.BitAnd: ast.BitOr,
               ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitAnd, ast.MatMult: ast.Mult}
COMPARE_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
                 ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
                 ast.In: ast.NotIn, ast.NotIn: ast.In}
DELETABLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Raise, ast.If, ast.For,
             ast.While, ast.With, ast.Try)


@dataclass
class Mutant:
    """One mutation site of a module: `id` is "path:line:col:operator"."""
    path: str
    line: int
    col: int
    operator: str
    before: str          # the source text replaced
    after: str           # what replaces it
    index: int = 0       # position of the node in ast.walk order (to rebuild the tree)
    variant: int = 0     # which of a node's mutations (e.g. which comparison operator)
    status: str = ""     # killed | timeout | survived (after a run)
    seconds: float = 0.0
    killed_by: str = ""
    notes: list = field(default_factory=list)

    @property
    def id(self):
        return f"{self.path}:{self.line}:{self.col}:{self.operator}" + \
            (f"{self.variant}" if self.variant else "")


def _parents(tree):
    parent = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parent[child] = node
    return parent


def _is_docstring(node, parent):
    owner = parent.get(node)
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            and isinstance(owner, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef,
                                   ast.ClassDef))
            and owner.body and owner.body[0] is node)


def _inside(node, parent, kinds):
    while node in parent:
        node = parent[node]
        if isinstance(node, kinds):
            return True
    return False


def _stringy(node):
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)))


def _mutations(node, parent):
    """[(operator, variant, target node, build(copy of target) -> replacement node)]."""
    out = []
    if isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS \
            and not (_stringy(node.left) or _stringy(node.right)):
        def swap(n):
            n.op = BINOP_SWAPS[type(n.op)]()
            return n
        out.append(("binop", 0, node, swap))
    elif isinstance(node, ast.AugAssign) and type(node.op) in BINOP_SWAPS \
            and not _stringy(node.value):
        def swap_aug(n):
            n.op = BINOP_SWAPS[type(n.op)]()
            return n
        out.append(("augassign", 0, node, swap_aug))
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE_SWAPS:
                def swap_cmp(n, i=i):
                    n.ops[i] = COMPARE_SWAPS[type(n.ops[i])]()
                    return n
                out.append(("compare", i, node, swap_cmp))
    elif isinstance(node, ast.BoolOp):
        def swap_bool(n):
            n.op = ast.Or() if isinstance(n.op, ast.And) else ast.And()
            return n
        out.append(("boolop", 0, node, swap_bool))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append(("not", 0, node, lambda n: n.operand))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
            and not isinstance(node.operand, ast.Constant):
        out.append(("neg", 0, node, lambda n: n.operand))
    elif isinstance(node, ast.Constant) and not _stringy(node) and node.value is not None \
            and node.value is not Ellipsis and not isinstance(node.value, complex):
        if isinstance(node.value, bool):
            out.append(("const", 0, node, lambda n: ast.Constant(not n.value)))
        else:
            out.append(("const", 0, node, lambda n: ast.Constant(n.value + 1)))
    elif isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        out.append(("return", 0, node.value, lambda n: ast.Constant(None)))
    if isinstance(node, (ast.If, ast.While, ast.IfExp)) and not _negation_is_a_swap(node.test):
        out.append(("cond", 0, node.test,
                    lambda n: ast.UnaryOp(op=ast.Not(), operand=n)))
    owner = parent.get(node)
    elif_branch = isinstance(node, ast.If) and isinstance(owner, ast.If) \
        and owner.orelse == [node]  # `elif`: its segment starts after the "el"
    if isinstance(node, DELETABLE) and not _is_docstring(node, parent) and not elif_branch \
            and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
        out.append(("delete", 0, node, lambda n: ast.Pass()))
    return out


def _negation_is_a_swap(test):
    """`not (a == b)` is the compare mutant `a != b` again, `not (not x)` the not mutant."""
    return (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(
        test.ops[0], (ast.Eq, ast.NotEq, ast.Is, ast.IsNot, ast.In, ast.NotIn))) or (
        isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not))


def _skip(node, parent):
    """Sites that are not code a test could check: docstrings, annotations, __main__."""
    if _is_docstring(node, parent):
        return True
    probe = node
    while probe in parent:
        up = parent[probe]
        if isinstance(up, ast.arg) and probe is up.annotation:
            return True
        if isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef)) and probe is up.returns:
            return True
        if isinstance(up, ast.If) and isinstance(up.test, ast.Compare) \
                and isinstance(up.test.left, ast.Name) and up.test.left.id == "__name__":
            return True
        if _is_docstring(up, parent):
            return True
        probe = up
    return False


class Source:
    """A module's text with byte offsets of its lines, to splice replacements in."""

    def __init__(self, path, text):
        self.path = path
        self.text = text
        self.data = text.encode("utf-8")
        self.starts = [0]
        for line in self.data.splitlines(keepends=True):
            self.starts.append(self.starts[-1] + len(line))
        self.tree = ast.parse(text)
        self.nodes = list(ast.walk(self.tree))
        self.parent = _parents(self.tree)

    def offset(self, line, col):
        return self.starts[line - 1] + col  # col_offset counts UTF-8 bytes

    def segment(self, node):
        return self.data[self.offset(node.lineno, node.col_offset):
                         self.offset(node.end_lineno, node.end_col_offset)].decode("utf-8")

    def splice(self, node, replacement):
        start = self.offset(node.lineno, node.col_offset)
        end = self.offset(node.end_lineno, node.end_col_offset)
        return (self.data[:start] + replacement.encode("utf-8") + self.data[end:]).decode()


def _replacement_text(target, new):
    if isinstance(new, ast.stmt):
        return ast.unparse(new)
    text = ast.unparse(new)
    return text if isinstance(new, (ast.Constant, ast.Name)) and not text.startswith("-") \
        else f"({text})"


def _expected_tree(source, index, key):
    """The original tree with the mutation `key` = (operator, variant) applied at the node
    of walk position `index`."""
    tree = ast.parse(source.text)
    parent = _parents(tree)
    node = list(ast.walk(tree))[index]
    for op, var, target, build in _mutations(node, parent):
        if (op, var) == key:
            _replace(parent, target, build(copy.deepcopy(target)))
            return tree
    raise KeyError(key)


def _replace(parent, old, new):
    owner = parent[old]
    for name, value in ast.iter_fields(owner):
        if value is old:
            setattr(owner, name, new)
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                if item is old:
                    value[i] = new
                    return
    raise ValueError("node not found in its parent")


def enumerate_mutants(path, text):
    """Every mutation site of the module (not yet checked to splice cleanly: see
    `mutated_text`), in source order."""
    source = Source(path, text)
    mutants = []
    for index, node in enumerate(source.nodes):
        if _skip(node, source.parent):
            continue
        for operator, variant, target, build in _mutations(node, source.parent):
            new = build(copy.deepcopy(target))
            mutants.append(Mutant(path, target.lineno, target.col_offset, operator,
                                  source.segment(target), _replacement_text(target, new),
                                  index, variant))
    mutants.sort(key=lambda m: (m.line, m.col, m.operator, m.variant))
    return source, mutants


def mutated_text(source, mutant):
    """The module's text with `mutant` applied, or None when the splice does not give the
    expected tree (e.g. a site whose positions Python reports inside an f-string)."""
    node = source.nodes[mutant.index]
    for op, var, target, build in _mutations(node, source.parent):
        if (op, var) == (mutant.operator, mutant.variant):
            text = source.splice(target, mutant.after)
            break
    else:
        return None
    try:
        got = ast.dump(ast.parse(text))
    except SyntaxError:
        return None
    want = ast.dump(_expected_tree(source, mutant.index, (mutant.operator, mutant.variant)))
    return text if got == want else None


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------

def repo_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def copy_repo(root, dest):
    """Copy the repository's tracked and new (not ignored) files to `dest`."""
    try:
        names = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=root, check=True, capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        names = None
    if names is None:
        shutil.copytree(root, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", ".graphnn-cache", "__pycache__", ".hypothesis", "*.nbi",
            "*.nbc", "out", "build"))
        return
    for name in names:
        if not name or not os.path.isfile(os.path.join(root, name)):
            continue
        target = os.path.join(dest, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(root, name), target)


class Runner:
    """Runs a module's focused tests in the copied repository, one process per mutant."""

    def __init__(self, work, python=sys.executable, min_timeout=60.0, factor=3.0):
        self.work = work
        self.python = python
        self.min_timeout = min_timeout
        self.factor = factor
        self.env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OPENBLAS_NUM_THREADS="1",
                        NUMBA_NUM_THREADS="1",
                        GRAPHNN_CACHE_DIR=os.path.join(work, ".mutate-kernel-cache"))
        self.env.pop("PYTHONPATH", None)
        self.env.pop("CI", None)

    def command(self, tests, select):
        cmd = [self.python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               "--no-header", "-o", "addopts=", *tests]
        return cmd + (["-k", select] if select else [])

    def run(self, tests, select, timeout):
        """(status, seconds, first failing test): status "pass", "fail" or "timeout"."""
        shutil.rmtree(os.path.join(self.work, ".hypothesis"), ignore_errors=True)
        start = time.monotonic()
        proc = subprocess.Popen(self.command(tests, select), cwd=self.work, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return "timeout", time.monotonic() - start, ""
        seconds = time.monotonic() - start
        text = out.decode(errors="replace")
        if proc.returncode == 0:
            return "pass", seconds, ""
        if proc.returncode == 5:
            raise RuntimeError(f"no tests selected by {self.command(tests, select)}")
        first = re.search(r"^(?:FAILED|ERROR) (\S+)", text, re.M)
        return "fail", seconds, first.group(1) if first else f"exit {proc.returncode}"


def run_module(key, runner, source, mutants, deadline, log):
    path, tests, select = MODULES[key]
    target = os.path.join(runner.work, path)
    with open(target, encoding="utf-8") as fh:
        original = fh.read()
    if original != source.text:
        raise RuntimeError(f"{path} changed while the mutants were drawn")
    status, base, _ = runner.run(tests, select, timeout=3600)
    if status != "pass":
        raise RuntimeError(f"{key}: the unmutated tests fail in the copy: "
                           f"{' '.join(runner.command(tests, select))}")
    timeout = max(runner.min_timeout, runner.factor * base)
    log(f"{key}: {path}, unmutated tests {base:.1f} s, timeout per mutant {timeout:.0f} s")
    done = []
    try:
        for n, mutant in enumerate(mutants, 1):
            if time.monotonic() > deadline:
                log(f"{key}: time budget spent after {n - 1} of {len(mutants)} mutants")
                break
            with open(target, "w", encoding="utf-8") as fh:
                fh.write(mutated_text(source, mutant))
            result, mutant.seconds, mutant.killed_by = runner.run(tests, select, timeout)
            mutant.status = {"pass": "survived", "fail": "killed"}.get(result, result)
            done.append(mutant)
            log(f"  [{n}/{len(mutants)}] {mutant.status:8} {mutant.seconds:5.1f}s "
                f"{mutant.id}  {mutant.before!r} -> {mutant.after!r}"
                + (f"  ({mutant.killed_by})" if mutant.killed_by else ""))
    finally:
        with open(target, "w", encoding="utf-8") as fh:
            fh.write(original)
    return {"module": key, "path": path, "tests": tests, "select": select,
            "baseline_seconds": round(base, 1), "timeout_seconds": round(timeout),
            "mutants": [asdict(m) | {"id": m.id} for m in done]}


def summarize(result):
    ms = result["mutants"]
    killed = sum(m["status"] == "killed" for m in ms)
    timeout = sum(m["status"] == "timeout" for m in ms)
    survived = [m for m in ms if m["status"] == "survived"]
    score = (killed + timeout) / len(ms) if ms else 0.0
    return killed, timeout, survived, score


def report(results, settings):
    """The Markdown block written between the markers in docs/TESTING.md."""
    minutes = " + ".join(f"{m:.0f}" for m in settings.get("runs", [settings["minutes"]]))
    lines = [f"Measured with `{settings['command']}` on {settings['date']} "
             f"({settings['cores']} cores shared, niced; {minutes} min).", "",
             "| module | file | sampled | killed | timeout | survived | score |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        killed, timeout, survived, score = summarize(r)
        lines.append(f"| {r['module']} | {r['path']} | {len(r['mutants'])} | {killed} | "
                     f"{timeout} | {len(survived)} | {score:.0%} |")
    lines.append("")
    lines.append(f"Sites per module: " + ", ".join(
        f"{r['module']} {r.get('sites', '?')}" for r in results) + ".")
    lines += ["", "Tests run per module (`pytest -x -k` expression in brackets):", ""]
    for r in results:
        lines.append(f"- {r['module']}: {' '.join(r['tests'])} [`{r['select']}`], "
                     f"{r['baseline_seconds']} s unmutated, timeout "
                     f"{r['timeout_seconds']} s")
    lines += ["", "Surviving mutants:", ""]
    any_left = False
    for r in results:
        for m in summarize(r)[2]:
            any_left = True
            lines.append(f"- `{m['id']}`: `{_short(m['before'])}` -> `{_short(m['after'])}`")
    if not any_left:
        lines.append("- none")
    return "\n".join(lines)


def _short(text, limit=90):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


BEGIN, END = "<!-- mutate:begin -->", "<!-- mutate:end -->"


def write_block(path, block):
    """Put `block` between the markers in `path` (appended as a section when missing)."""
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else \
        "# Testing graphnn\n"
    body = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + body + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Mutation score\n\n" + body + "\n"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def load(key, root):
    """(Source, every mutation site) of a module."""
    path = MODULES[key][0]
    with open(os.path.join(root, path), encoding="utf-8") as fh:
        return enumerate_mutants(path, fh.read())


def sample(source, mutants, per_module, seed, key):
    """`per_module` mutants drawn with a fixed seed among the sites whose splice parses to
    the expected tree; returns (chosen in source order, sites tried and dropped)."""
    order = list(mutants)
    random.Random(f"{seed}:{key}").shuffle(order)
    chosen, dropped = [], 0
    for mutant in order:
        if len(chosen) == per_module:
            break
        if mutated_text(source, mutant) is None:
            dropped += 1
        else:
            chosen.append(mutant)
    return sorted(chosen, key=lambda m: (m.line, m.col, m.operator, m.variant)), dropped


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m graphnn.tools.mutate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", default=",".join(MODULES),
                        help=f"comma-separated, from {', '.join(MODULES)}")
    parser.add_argument("--per-module", type=int, default=40)
    parser.add_argument("--seed", default="24")
    parser.add_argument("--budget-minutes", type=float, default=150.0,
                        help="stop starting new mutants after this long (whole run)")
    parser.add_argument("--min-timeout", type=float, default=60.0)
    parser.add_argument("--ids", default="",
                        help="only these mutant ids (comma-separated; nested operators that "
                             "start at one place share an id, and all of them run)")
    parser.add_argument("--rerun-survivors", metavar="JSON", default="",
                        help="take the results of an earlier --json run, run only its "
                             "surviving mutants again (tests only grow: a killed mutant "
                             "stays killed) and report the merged results")
    parser.add_argument("--and-timeouts", action="store_true",
                        help="with --rerun-survivors: run the mutants killed by timeout "
                             "again too (give a larger --min-timeout)")
    parser.add_argument("--list", metavar="MODULE", help="print every site of a module")
    parser.add_argument("--json", default="", help="write the raw results here")
    parser.add_argument("--write", default="", help="update the score block of this file")
    args = parser.parse_args(argv)
    root = repo_root()

    if args.list:
        if args.list not in MODULES:
            parser.error(f"unknown module {args.list}; choose from {', '.join(MODULES)}")
        source, mutants = load(args.list, root)
        dropped = 0
        for m in mutants:
            ok = mutated_text(source, m) is not None
            dropped += not ok
            print(f"{m.id}  {_short(m.before)!r} -> {_short(m.after)!r}"
                  + ("" if ok else "  (dropped: splice does not parse as expected)"))
        print(f"{len(mutants)} sites, {dropped} dropped")
        return 0

    keys = [k.strip() for k in args.modules.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(MODULES)}")
    ids = {i.strip() for i in args.ids.split(",") if i.strip()}
    previous, wanted = {}, None
    if args.rerun_survivors:
        with open(args.rerun_survivors, encoding="utf-8") as fh:
            earlier = json.load(fh)
        previous = {r["module"]: r for r in earlier["results"]}
        keys = [k for k in keys if k in previous]
        again = ("survived", "timeout") if args.and_timeouts else ("survived",)
        # (nested operators share a start, so a mutant is known by its id and its text)
        wanted = {(m["id"], m["before"]) for r in previous.values() for m in r["mutants"]
                  if m["status"] in again}
        ids = {i for i, _ in wanted}
    start = time.monotonic()
    deadline = start + 60 * args.budget_minutes

    def log(message):
        print(message, flush=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="graphnn-mutate-") as work:
        copy_repo(root, work)
        runner = Runner(work, min_timeout=args.min_timeout)
        for key in keys:
            source, every = load(key, root)
            if ids:
                chosen = [m for m in every if m.id in ids and (
                    wanted is None or (m.id, m.before) in wanted)]
                if not chosen:
                    if key in previous:  # nothing survived there: kept as it was
                        results.append(previous[key])
                    continue
                dropped = 0
            else:
                chosen, dropped = sample(source, every, args.per_module, args.seed, key)
            log(f"{key}: {len(every)} sites, running {len(chosen)} "
                f"({dropped} drawn and dropped: splice does not parse as expected)")
            result = run_module(key, runner, source, chosen, deadline, log)
            result["sites"] = len(every)
            if key in previous:  # the earlier run's mutants, the survivors' new status
                again = {(m["id"], m["before"]): m for m in result["mutants"]}
                result["mutants"] = [again.get((m["id"], m["before"]), m)
                                     for m in previous[key]["mutants"]]
            results.append(result)
    command = "python -m graphnn.tools.mutate " + " ".join(argv)
    if previous:
        command = f"{earlier['settings']['command']}`, then `{command}"
    runs = (earlier["settings"].get("runs", [earlier["settings"]["minutes"]])
            if previous else [])
    settings = {"command": command,
                "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(),
                "minutes": (time.monotonic() - start) / 60}
    settings["runs"] = runs + [settings["minutes"]]
    block = report(results, settings)
    print()
    print(block)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"settings": settings, "results": results}, fh, indent=1)
    if args.write:
        write_block(args.write, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
