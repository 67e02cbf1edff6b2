"""Tools built on the library, not part of it: the `graphnn` command (cli), graph vs eager
benchmarks (bench), the memory soak (soak), data-parallel scaling (distributed_bench),
model files (model_file), ONNX commands (onnx_cli), the models they train (models) and the
mutation score of the core modules (mutate, `make mutate`; docs/TESTING.md)."""
