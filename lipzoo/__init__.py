"""lipzoo: the user-facing layer (the `lipzoo` command line).

Why a package of its own: the layers import one way only, lipcore <- catalogs <- flows <- deploy <- lipzoo
(tests/test_layers.py checks it). The CLI drives flows and deploy, so it sits above both; flows never
imports deploy or lipzoo.
"""
