"""Regenerate the protobuf/gRPC modules from grpc_predict_v2.proto (needs grpcio-tools)."""

from __future__ import annotations

import pathlib
import re

from grpc_tools import protoc  # type: ignore[import-untyped]


def main() -> int:
    here = pathlib.Path(__file__).resolve().parent
    rc = int(
        protoc.main(
            [
                "protoc",
                f"-I{here}",
                f"--python_out={here}",
                f"--grpc_python_out={here}",
                str(here / "grpc_predict_v2.proto"),
            ]
        )
    )
    grpc_mod = here / "grpc_predict_v2_pb2_grpc.py"
    text = grpc_mod.read_text()
    # protoc emits an absolute import; make it package-relative.
    text = re.sub(
        r"^import grpc_predict_v2_pb2 as", "from . import grpc_predict_v2_pb2 as", text, flags=re.M
    )
    grpc_mod.write_text(text)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
