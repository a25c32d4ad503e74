"""Evaluation harness for knowledge editing.

* :mod:`larimar.eval.datasets` -- CounterFact / zsRE loaders into one ``EditCase`` record.
* :mod:`larimar.eval.metrics` -- pure metric functions (ROME, EasyEdit, generation).
* :mod:`larimar.eval.lm` -- batched continuation NLL and greedy generation for HF causal LMs.
* :mod:`larimar.eval.editor` -- the ``Editor`` protocol, the options a run builds it from, dummy.
* :mod:`larimar.eval.baselines` -- none, icl, ft, rome, grace; :mod:`larimar.eval.larimar_editor`.
* :mod:`larimar.eval.editors` -- the one registry of editors by name.
* :mod:`larimar.eval.protocols` -- one module per protocol (single, batch, sequential,
  forgetting, leakage).
* :mod:`larimar.eval.report` -- tables and plots; :mod:`larimar.eval.config` -- ``EvalConfig``;
  :mod:`larimar.eval.runner` -- one run from an ``EvalConfig``.
"""
