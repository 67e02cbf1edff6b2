"""The numpy back end (backend="numpy"): the reference every compiled back end is tested
against. It interprets the graph node by node with each op's NumPy implementation (the
same stanzas eager mode runs), and applies updates after every new value is computed.
"""
import numpy as np

from ..api import ValueState
from .base import CompiledFunction, interpret


class NumpyFunction(CompiledFunction):
    """The reference backend: interpret the graph node by node with each op's NumPy impl.
    With check_finite=True it stops at the first node that produces NaN or Inf, before any
    parameter is updated."""

    backend = "numpy"

    def _run(self, arrays, binding):
        states = {id(p): p.state.value for p in self.state_nodes}
        values = interpret(self.graph.nodes, self.graph.inputs, arrays, states,
                           self.check_finite)
        results = [np.array(values[id(o)], copy=True) for o in self.outputs]
        new_values = [(p, np.array(values[id(v)], copy=True)) for p, v in self.update_pairs]
        for p, v in new_values:
            p.state.value[...] = v
        if new_values:
            ValueState.host_writes += 1  # device copies of these states are now older
        return results

    _run_checked = _run
