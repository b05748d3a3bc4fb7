"""The experiments behind docs/RESULTS.md, beside the library and outside its package: they import `poft`, and
`poft` never imports them (tests/unit/test_import_graph.py pins it). Not installed with the wheel; run them from
the repository root, where `experiments` is importable (`make demo` does; pytest adds the root to sys.path):

    python -m experiments.demo --output demo_output            # the toy noise experiment, offline (make demo)
    python -m experiments.publish --output demo_output         # its tables into docs/RESULTS.md (make demo-results)
    python -m experiments.tune --output demo_tune              # the demo's learning-rate choice
    python -m experiments.real_study --output real_study       # SFT vs PoFT on real checkpoints
    python -m experiments.profile_demo --output <fresh folder> # where the demo's CPU time goes

Each takes `--config options.yaml` plus `--key value` overrides, parsed by `poft.options.OptionParser` from one
options dataclass (entry.py), and ends on a user error with one line, `<prog>: error: ...`.
"""
