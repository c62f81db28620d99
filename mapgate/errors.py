"""Project errors. Each says what went wrong, why, and (where known) the fix."""

from __future__ import annotations


class MapgateError(Exception):
    """Base of every error mapgate raises on purpose (CLI exit code 2)."""


class ConfigError(MapgateError):
    """A manifest, option or setting is wrong; the message names the file/entry/field."""


class DataError(MapgateError):
    """An input file (annotations, image, detections) is missing or malformed; names the file."""


class ContractError(MapgateError):
    """Detections break the COCO results contract (unknown ids, bad boxes)."""


class ConversionError(MapgateError):
    """A model conversion (Darknet->ONNX, TF->ONNX, quantization, engine build) failed."""


class BackendUnavailable(MapgateError):
    """A backend cannot run here; ``reason`` names what is missing and how to get it."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"backend {backend!r} is unavailable: {reason}")
        self.backend = backend
        self.reason = reason


class GateFailure(MapgateError):
    """An accuracy or baseline gate failed; carries the verdict object."""

    def __init__(self, message: str, verdict: object | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict


class StorageError(MapgateError):
    """A folder cannot take a file (read-only, full disk, not a folder, a link in the way, a lock
    held too long); the message names the path and the fix."""


class InferenceError(MapgateError):
    """Running an already built/loaded model failed (not a conversion or build problem)."""
