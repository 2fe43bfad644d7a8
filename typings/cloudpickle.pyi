# The part of cloudpickle (>= 2.0) that shoal uses: cloudpickle ships neither
# type hints nor a py.typed marker, and typeshed has no stubs for it.
# Its Pickler is a subclass of pickle.Pickler (the C one, or _pickle's).
import pickle
from collections.abc import Callable
from typing import Any

from _typeshed import SupportsWrite

__version__: str

class Pickler(pickle.Pickler):
    def __init__(
        self,
        file: SupportsWrite[bytes],
        protocol: int | None = None,
        buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
    ) -> None: ...

CloudPickler = Pickler

def dumps(
    obj: Any, protocol: int | None = None, buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None
) -> bytes: ...
def dump(
    obj: Any,
    file: SupportsWrite[bytes],
    protocol: int | None = None,
    buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
) -> None: ...

loads = pickle.loads
load = pickle.load

def register_pickle_by_value(module: Any) -> None: ...
def unregister_pickle_by_value(module: Any) -> None: ...
