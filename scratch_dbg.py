import time, numpy as np, graphnn as gn
import sys; sys.path.insert(0, "tests"); sys.path.insert(0, "tests/graphnn")
import test_grad_backends as T
for name in ["maximum", "conv2d", "max_pool2d"]:
    loss, grads, wrt = T.graph_of(name)
    for block, tile in [(32, 4), (8, 4), (4, 2)]:
        f = gn.compile([loss]+grads, backend="cuda", block=block, tile=tile)
        t = time.perf_counter(); r = f(**T.CASES[name].feeds); t1 = time.perf_counter() - t
        t = time.perf_counter(); r = f(**T.CASES[name].feeds); t2 = time.perf_counter() - t
        print(name, block, tile, len(f.program.steps), round(t1, 2), round(t2, 2))
