from typing import Any

SLICE_UNITS: int
REQUEST_UNITS: int
LARGE_FRAME: int

class ConnectionLoop:
    server: Any
    transport: Any
    decoder: Any
    clock: Any
    backlog: tuple | None
    job: Any
    engine_get: Any
    engine_get_many: Any
    engine_put: Any
    content_lengths: Any
    pending: list
    closing: bool
    authed: bool
    durable: bool
    read_paused: bool
    write_paused: bool
    input_wait: bool
    out_limit: int
    reserved: int
    slice_bytes: int
    last_rx: float
    partial_since: float
    slice_end: float
    def data_received(self, data: bytes | memoryview) -> None: ...
    def _process(self) -> None: ...
    def _send(self, out: list, wrote: bool) -> None: ...
