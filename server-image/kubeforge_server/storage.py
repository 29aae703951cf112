"""Model URI → local ONNX file: local paths, ``file://``, ``pvc://CLAIM/PATH`` and any fsspec URI.

A URI names either the ``.onnx`` file or a folder holding ``model.onnx`` (or a single ``*.onnx``)
beside its external-data files. Remote models are copied into a local cache folder, external data
included. Anything that is not ONNX is refused with a message naming the exporter to use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("kubeforge_server.storage")


class ModelLoadError(RuntimeError):
    """The model could not be fetched or loaded. ``unsupported`` marks a non-ONNX artefact."""

    def __init__(self, message: str, *, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


# Suffix (or folder marker) → (format, how to get ONNX out of it).
_EXPORTERS: dict[str, tuple[str, str]] = {
    ".pt": ("a PyTorch checkpoint", "torch.onnx.export (or torch.onnx.export(..., dynamo=True))"),
    ".pth": ("a PyTorch checkpoint", "torch.onnx.export"),
    ".ckpt": ("a PyTorch/Lightning checkpoint", "torch.onnx.export (LightningModule.to_onnx)"),
    ".bin": ("a PyTorch/Hugging Face weights file", "torch.onnx.export or optimum-cli export onnx"),
    ".safetensors": ("a safetensors weights file", "torch.onnx.export or optimum-cli export onnx"),
    ".pkl": ("a pickled (scikit-learn?) model", "skl2onnx (scikit-learn) or onnxmltools"),
    ".pickle": ("a pickled (scikit-learn?) model", "skl2onnx (scikit-learn) or onnxmltools"),
    ".joblib": ("a joblib (scikit-learn) model", "skl2onnx"),
    ".h5": ("a Keras HDF5 model", "tf2onnx (python -m tf2onnx.convert --keras ...)"),
    ".hdf5": ("a Keras HDF5 model", "tf2onnx (python -m tf2onnx.convert --keras ...)"),
    ".keras": ("a Keras model", "tf2onnx (python -m tf2onnx.convert --keras ...)"),
    ".pb": (
        "a TensorFlow graph / SavedModel",
        "tf2onnx (python -m tf2onnx.convert --saved-model ...)",
    ),
    ".tflite": ("a TensorFlow Lite model", "tf2onnx (python -m tf2onnx.convert --tflite ...)"),
    ".bst": ("an XGBoost model", "onnxmltools (convert_xgboost)"),
    ".ubj": ("an XGBoost model", "onnxmltools (convert_xgboost)"),
    ".txt": ("a LightGBM text model?", "onnxmltools (convert_lightgbm)"),
    ".mar": ("a TorchServe archive", "torch.onnx.export"),
    ".gguf": ("a GGUF LLM file", "nothing: LLM generation is not served by kubeforge"),
    ".engine": ("a TensorRT engine", "serve the ONNX model it was built from (tensorrt provider)"),
    ".plan": ("a TensorRT engine", "serve the ONNX model it was built from (tensorrt provider)"),
}


def _unsupported(path: str, fmt: str, exporter: str) -> ModelLoadError:
    return ModelLoadError(
        f"{path} is {fmt}, not an ONNX model; kubeforge serves ONNX only: export it with "
        f"{exporter} and point the model URI at the .onnx file (or its folder)",
        unsupported=True,
    )


def check_onnx_file(path: Path) -> None:
    """Refuse files that are clearly not ONNX protobufs, naming the right exporter."""
    suffix = path.suffix.lower()
    if suffix in _EXPORTERS:
        raise _unsupported(str(path), *_EXPORTERS[suffix])
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if head.startswith(b"PK\x03\x04"):
        raise _unsupported(
            str(path), "a zip archive (torch.save / TorchScript?)", "torch.onnx.export"
        )
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise _unsupported(
            str(path), "a Python pickle", "skl2onnx (scikit-learn) or torch.onnx.export"
        )
    if head.startswith(b"\x89HDF"):
        raise _unsupported(str(path), "an HDF5 (Keras) file", "tf2onnx")
    if head.startswith(b"GGUF"):
        raise _unsupported(str(path), *_EXPORTERS[".gguf"])
    if not head:
        raise ModelLoadError(f"{path} is empty")


def _pick_in_folder(names: list[str], where: str) -> str:
    """Choose the ONNX file among a folder's entries (file names, not paths)."""
    if "model.onnx" in names:
        return "model.onnx"
    onnx = sorted(n for n in names if n.lower().endswith(".onnx"))
    if len(onnx) == 1:
        return onnx[0]
    if len(onnx) > 1:
        raise ModelLoadError(
            f"{where} holds several .onnx files {onnx} and no model.onnx; name the file in the URI"
        )
    if "saved_model.pb" in names or "saved_model.pbtxt" in names:
        raise _unsupported(
            where,
            "a TensorFlow SavedModel",
            "tf2onnx (python -m tf2onnx.convert --saved-model ...)",
        )
    for n in sorted(names):
        suffix = os.path.splitext(n)[1].lower()
        if suffix in _EXPORTERS and suffix not in (".txt", ".bin"):
            raise _unsupported(f"{where.rstrip('/')}/{n}", *_EXPORTERS[suffix])
    for n in sorted(names):
        suffix = os.path.splitext(n)[1].lower()
        if suffix in _EXPORTERS:
            raise _unsupported(f"{where.rstrip('/')}/{n}", *_EXPORTERS[suffix])
    raise ModelLoadError(f"{where} holds no .onnx file (found: {sorted(names)[:10]})")


def _local_model_file(path: Path) -> Path:
    if not path.exists():
        raise ModelLoadError(f"model not found: {path}")
    if path.is_dir():
        names = [p.name for p in path.iterdir() if p.is_file()]
        if not names and any(p.is_dir() for p in path.iterdir()):
            subdirs = [p.name for p in path.iterdir() if p.is_dir()]
            if "variables" in subdirs:
                raise _unsupported(str(path), "a TensorFlow SavedModel", "tf2onnx")
        path = path / _pick_in_folder(names, str(path))
    check_onnx_file(path)
    return path


def _external_data_files(model_path: Path) -> list[str]:
    """Relative locations of external-data files referenced by an ONNX file (needs ``onnx``)."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is in the server extra
        return []
    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{model_path} is not a valid ONNX model: {exc}") from exc
    found: set[str] = set()
    from onnx.external_data_helper import _get_all_tensors

    for tensor in _get_all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    found.add(entry.value)
    return sorted(found)


def resolve_model(uri: str, *, cache_dir: str, pvc_root: str) -> Path:
    """Return a local path to the ONNX file named by ``uri`` (downloading remote models)."""
    if uri.startswith("pvc://"):
        rest = uri[len("pvc://") :].strip("/")
        if not rest:
            raise ModelLoadError(f"{uri}: pvc:// URIs need a claim name: pvc://CLAIM/PATH")
        return _local_model_file(Path(pvc_root) / rest)
    if uri.startswith("file://"):
        return _local_model_file(Path(uri[len("file://") :]))
    if "://" not in uri:
        return _local_model_file(Path(uri))
    return _fetch_remote(uri, Path(cache_dir))


def _fetch_remote(uri: str, cache_dir: Path) -> Path:
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover
        raise ModelLoadError(f"{uri}: fsspec is not installed") from exc
    try:
        fs, root = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise ModelLoadError(f"{uri}: no filesystem for this scheme ({exc})") from exc
    try:
        if fs.isdir(root):
            names = [str(p).rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
            folder = root.rstrip("/")
            chosen = _pick_in_folder(names, uri)
        elif fs.exists(root):
            folder, _, chosen = root.rstrip("/").rpartition("/")
            suffix = os.path.splitext(chosen)[1].lower()
            if suffix in _EXPORTERS:
                raise _unsupported(uri, *_EXPORTERS[suffix])
        else:
            raise ModelLoadError(f"model not found: {uri}")
        key = hashlib.sha256(uri.encode()).hexdigest()[:16]
        dest = cache_dir / key
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        local = dest / chosen
        log.info("downloading %s/%s", folder, chosen)
        fs.get(f"{folder}/{chosen}", str(local))
        check_onnx_file(local)
        for rel in _external_data_files(local):
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise ModelLoadError(
                    f"{uri}: external data location {rel!r} leaves the model folder"
                )
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            log.info("downloading external data %s/%s", folder, rel)
            fs.get(f"{folder}/{rel}", str(target))
        return local
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot fetch {uri}: {type(exc).__name__}: {exc}") from exc


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
