"""lipcore: certified Lipschitz upper bounds (and measured lower bounds) for neural networks.

No Prefect and no DuckDB here: a model or weight file goes in, a plain `Report` comes out.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lipzoo")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"

from .activations import Activation, get_activation  # noqa: E402
from .api import analyze, resolve_device  # noqa: E402
from .errors import BudgetExceeded, CertificationError, InputError, LipzooError, Refused  # noqa: E402
from .mlp.network import MLP  # noqa: E402
from .report import BoundResult, Report  # noqa: E402
from .variants import DEFAULT_VARIANTS, LOWER, UPPER, VARIANTS  # noqa: E402
from .version import ENGINE_VERSION  # noqa: E402

__all__ = [
    "ENGINE_VERSION", "MLP", "Activation", "BoundResult", "BudgetExceeded", "CertificationError",
    "DEFAULT_VARIANTS", "InputError", "LOWER", "LipzooError", "Refused", "Report", "UPPER", "VARIANTS",
    "__version__", "analyze", "get_activation", "resolve_device",
]
