"""The selection methods by name (a `raise_select.registry.Registry`): `BASELINES["ifd"]` is the
method's class (a dataclass whose fields are its options); `make_baseline` builds one from an
options dict; `needs_features` and `needs_rds_vectors` are what a method with given
options reads of the featurized pool."""

from __future__ import annotations

from ..config import from_dict
from ..registry import Registry
from .alpagasus import AlpaGasus
from .base import Baseline
from .deita import Deita
from .embed import Embed
from .full import FullData
from .greats import GREATS
from .ifd import IFD
from .less import LESS
from .rand import RandomSubset
from .rds import RDS
from .rho import RHOLoss
from .rose import ROSE
from .sspl import SSPL
from .tsds import TSDS


def registry_of(classes) -> dict[str, type]:
    """Name -> class of `classes`; a name given twice is refused (the later class would hide the earlier)."""
    out: dict[str, type] = {}
    for cls in classes:
        if cls.name in out:
            raise ValueError(
                f"two selection methods are named '{cls.name}': {out[cls.name].__name__} and {cls.__name__}"
            )
        out[cls.name] = cls
    return out


BASELINES: Registry[type] = Registry(
    "method",
    registry_of((FullData, RandomSubset, IFD, Deita, AlpaGasus, SSPL, LESS, ROSE, RDS, Embed, TSDS, GREATS, RHOLoss)),
)


def get_baseline_class(name: str) -> type:
    """The class registered as `name`, or a `UserError` naming the closest names and all of them."""
    return BASELINES.lookup(name)


def make_baseline(name: str, options: dict | None = None, source: str = "config") -> Baseline:
    """An instance of method `name` with `options` (unknown option names are refused)."""
    return from_dict(get_baseline_class(name), options or {}, f"{source}: method '{name}'")


def needs_features(name: str, options: dict | None = None) -> bool:
    """Whether method `name` with `options` reads the featurized pool: the method's own
    `needs_features()`, the one answer every job that featurizes or charges for it asks."""
    return make_baseline(name, options).needs_features()


def needs_rds_vectors(name: str, options: dict | None = None) -> bool:
    """Whether method `name` with `options` reads the features' RDS+ vectors (`featurize --rds`)."""
    method = make_baseline(name, options)
    return method.needs_features() and getattr(method, "reads_rds_vectors", False)
