"""The engine version, in a leaf module so that every part of lipcore (and the catalog) can read it without
importing the engines.

Bumped whenever a bound's definition or certification changes: the catalog keys results on it, so a new
engine version marks every model stale and the next audit recomputes.
"""

# 2: fine tensors live across a coarse activation are bounded soundly (graph engine)
# 3: closed-world tracer: every argument of every accepted op is read (add alpha, reduction axes, duplicated
#    indices, activation parameters); weight files without BatchNorm eps are bounded with eps = 0
ENGINE_VERSION = "3"
