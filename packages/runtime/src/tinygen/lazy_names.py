"""Names of a package that load on first use (PEP 562), so importing the package stays cheap:
`tinygen` before numpy and onnxruntime, `tinygen.serving` before its engine and asyncio."""

from __future__ import annotations

from importlib import import_module


def lazy_names(package: str, modules: dict[str, str], namespace: dict):
    """`__getattr__` and `__dir__` for `package`, whose name N is `modules[N]`'s N, imported
    and kept in `namespace` (the package's globals) on first use."""
    def __getattr__(name: str):
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f".{modules[name]}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(modules))

    return __getattr__, __dir__
