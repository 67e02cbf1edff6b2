"""The `graphnn` command: `graphnn demo`, and more subcommands as they are added."""
import argparse
import os
import runpy
import sys

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _run_example(name):
    path = os.path.join(EXAMPLES, name)
    print(f"\n=== examples/{name} " + "=" * max(0, 60 - len(name)))
    runpy.run_path(path, run_name="__main__")


def cmd_demo(args):
    """The lecture examples, one after another."""
    for name in DEMO_EXAMPLES:
        if os.path.exists(os.path.join(EXAMPLES, name)):
            _run_example(name)
    return 0


DEMO_EXAMPLES = ["lecture_graph.py", "backprop_step_by_step.py", "render_lecture.py",
                 "render_mlp.py"]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="graphnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the lecture examples").set_defaults(fn=cmd_demo)
    bench = sub.add_parser("bench", help="graph vs eager benchmarks (see graphnn.bench)",
                           add_help=False)
    bench.set_defaults(fn=None)
    import visualize
    render = sub.add_parser("render", help="draw a model file's graph (Netron style)")
    visualize.add_render_arguments(render)
    render.set_defaults(fn=visualize.cli_render)
    from . import onnx as onnx_interop  # `export` and `run`: ONNX files
    onnx_interop.add_cli_commands(sub)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from . import bench as bench_module
        return bench_module.main(argv[1:])
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
