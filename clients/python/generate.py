"""Generate the protobuf and gRPC stubs of secretsvc.v1 into the client package.

Run from anywhere: ``python clients/python/generate.py [OUTPUT_DIR]``. Without
an argument the stubs are written into ``secretsvc_client/_proto``; the
staleness test passes a temporary folder and compares.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
PROTO_FILE = "secretsvc/v1/secrets.proto"
PACKAGE_DIR = HERE / "secretsvc_client" / "_proto"
STUBS = ("secrets_pb2.py", "secrets_pb2.pyi", "secrets_pb2_grpc.py")

# protoc names modules after the proto path, which would collide with the
# server's own ``secretsvc`` package; the stubs import each other from here.
GENERATED_IMPORT = "from secretsvc.v1 import secrets_pb2"
PACKAGE_IMPORT = "from secretsvc_client._proto import secrets_pb2"


def generate(out_dir: Path) -> None:
    """Write the three stub files into ``out_dir``."""
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    with tempfile.TemporaryDirectory() as raw:
        raw_dir = Path(raw)
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={raw_dir}",
            f"--pyi_out={raw_dir}",
            f"--grpc_python_out={raw_dir}",
            str(PROTO_ROOT / PROTO_FILE),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {PROTO_FILE}")

        out_dir.mkdir(parents=True, exist_ok=True)
        for stub in STUBS:
            text = (raw_dir / "secretsvc" / "v1" / stub).read_text()
            text = text.replace(GENERATED_IMPORT, PACKAGE_IMPORT)
            (out_dir / stub).write_text(text)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE_DIR)
