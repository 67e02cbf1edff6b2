"""Tools built on the library, not part of it: the `graphnn` command (cli), graph vs eager
benchmarks (bench), the memory soak (soak), data-parallel scaling (distributed_bench),
model files (model_file), ONNX commands (onnx_cli) and the models they train (models)."""
