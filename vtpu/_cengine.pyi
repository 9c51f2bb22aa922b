"""Type stub for the engine's compiled write (the base class of vtpu.engine.Engine)."""
from typing import Any

class EngineCore:
    _map: Any
    _index: Any
    names: Any
    storage: Any
    _undo: list
    autocommit: Any
    def put(self, key: bytes, content: Any, if_version: int | None = ...) -> int: ...
