"""Generate Python code, .pyi stubs and typed gRPC stubs from ``protos/`` into ``lib/``.

Run as ``python -m studyassist.buildprotos`` (``make protos``). Output is gitignored.
The proto directory layout matches the package (``studyassist/chat/v1``), so protoc emits
absolute imports (``from studyassist.chat.v1 import chat_pb2``) that need no rewriting.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _include_dirs() -> list[str]:
    grpc_tools_include = resources.files("grpc_tools") / "_proto"
    # googleapis-common-protos installs google/api/*.proto beside its modules.
    import google.api.annotations_pb2 as annotations

    site_packages = Path(annotations.__file__).resolve().parents[2]
    return [str(ROOT / "protos"), str(grpc_tools_include), str(site_packages)]


def main() -> int:
    from grpc_tools import protoc

    out = ROOT / "lib"
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    mypy_grpc = shutil.which("protoc-gen-mypy_grpc", path=str(Path(sys.executable).parent))
    args = ["grpc_tools.protoc", *(f"-I{d}" for d in _include_dirs())]
    args += [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    if mypy_grpc:
        args += [f"--plugin=protoc-gen-mypy_grpc={mypy_grpc}", f"--mypy_grpc_out={out}"]
    rc = protoc.main([*args, *protos])
    if rc != 0:
        print(f"protoc failed with exit code {rc}", file=sys.stderr)
        return int(rc)
    # Generated folders become regular packages so mypy and setuptools see them.
    for proto in protos:
        package_dir = out / Path(proto).parent
        while package_dir != out / "studyassist":
            (package_dir / "__init__.py").touch(exist_ok=True)
            package_dir = package_dir.parent
    print(f"generated {len(protos)} proto files into {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
