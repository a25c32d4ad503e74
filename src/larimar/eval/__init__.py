"""Evaluation harness for knowledge editing.

* :mod:`larimar.eval.datasets` -- CounterFact / zsRE loaders into one ``EditCase`` record.
* :mod:`larimar.eval.metrics` -- pure metric functions (ROME, EasyEdit, generation).
* :mod:`larimar.eval.lm` -- batched continuation NLL and greedy generation for HF causal LMs.
* :mod:`larimar.eval.editors` -- the ``Editor`` protocol and its registry (dummy, none, icl).
* :mod:`larimar.eval.protocols` -- evaluation protocols (single-fact CounterFact) and tables.
"""
