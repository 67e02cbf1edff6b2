"""The `graphnn` command: `demo` (the lecture examples and the digits MLP), `bench` (graph vs
eager benchmarks), `render` (a model file's picture), `view` (its interactive HTML viewer), `export` and `run` (ONNX files).

This is an entry point, not library code: it may import every package (visualize too)."""
import argparse
import os
import runpy
import sys

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "examples")


def _run_example(name):
    path = os.path.join(EXAMPLES, name)
    print(f"\n=== examples/{name} " + "=" * max(0, 60 - len(name)))
    argv, sys.argv = sys.argv, [path]  # each example's own defaults, not `graphnn demo`'s
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv = argv


def cmd_demo(args):
    """The lecture examples, then the main job: the digits MLP drawn (forward and derivative
    graph), trained with a progress bar, its test accuracy checked, its curves plotted, and
    a short graph-vs-eager timing. Returns 1 when the accuracy misses its threshold."""
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)  # examples import each other, as when run as scripts
    for name in DEMO_EXAMPLES:
        if os.path.exists(os.path.join(EXAMPLES, name)):
            _run_example(name)
    print("\n=== examples/mlp_digits.py " + "=" * 47)
    mlp_digits = runpy.run_path(os.path.join(EXAMPLES, "mlp_digits.py"), run_name="demo")
    result = mlp_digits["main"]()
    passed = result["test_accuracy"] >= DEMO_MLP_ACCURACY
    print(f"test accuracy {result['test_accuracy']:.2%} >= {DEMO_MLP_ACCURACY:.0%}: "
          f"{'yes' if passed else 'NO'}")
    print("\n=== graph vs eager: one training step of an MLP 64-64-10, batch 32 " + "=" * 8)
    from . import bench
    bench.run(["mlp-small"], ["eager", "cpu"], repeat=200, budget=5.0, subprocess_info=False)
    forced = os.environ.get("OPENBLAS_CORETYPE")
    if forced:
        print(f"(OPENBLAS_CORETYPE={forced} in the environment chooses OpenBLAS's kernels for "
              "eager and compiled steps alike; `make bench` lets OpenBLAS choose them: see "
              "docs/BENCHMARKS.md)")
    return 0 if passed else 1


DEMO_EXAMPLES = ["lecture_graph.py", "backprop_step_by_step.py", "render_lecture.py",
                 "render_mlp.py"]
DEMO_MLP_ACCURACY = 0.95


def main(argv=None):
    parser = argparse.ArgumentParser(prog="graphnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the lecture examples").set_defaults(fn=cmd_demo)
    bench = sub.add_parser("bench", help="graph vs eager benchmarks (see graphnn.tools.bench)",
                           add_help=False)
    bench.set_defaults(fn=None)
    import visualize
    render = sub.add_parser("render", help="draw a model file's graph (Netron style)")
    visualize.add_render_arguments(render)
    render.set_defaults(fn=visualize.cli_render)
    view = sub.add_parser("view", help="write a model file's interactive viewer (one HTML file)")
    visualize.add_view_arguments(view)
    view.set_defaults(fn=visualize.cli_view)
    from . import onnx_cli  # `export` and `run`: ONNX files
    onnx_cli.add_cli_commands(sub)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from . import bench as bench_module
        return bench_module.main(argv[1:])
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
