"""A TrainingJob's output: where the model goes, its ONNX export (and int8 copy), checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kubeforge.api._base import KubeModel, cel, rule
from kubeforge.api._storage import SecretName, check_uri
from kubeforge.api._storage import storage_uri_rule as _uri_rule

OUTPUT_SCHEMES = ("file", "pvc", "s3", "gs", "az", "abfs")
QUANTIZE_MODES = ("dynamic-int8", "static-int8")


class Calibration(KubeModel):
    samples: int = Field(
        default=256,
        ge=1,
        le=100000,
        description="Training rows fed through the float model to fix the int8 activation "
        "ranges (static-int8).",
    )


class Quantize(KubeModel):
    """An int8 copy of the model (ONNX Runtime quantization), written beside the float one."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("!has(self.calibration) || self.mode == 'static-int8'",
             "quantize.calibration applies to mode static-int8 only",
             field_path=".calibration"))}

    mode: Literal["dynamic-int8", "static-int8"] = Field(
        description="dynamic-int8: int8 weights, activations quantized at run time; "
        "static-int8: int8 weights and activations, ranges calibrated on training rows."
    )
    calibration: Calibration | None = Field(
        default=None, description="Calibration of static-int8 (default: 256 samples)."
    )

    @model_validator(mode="after")
    def _calibration(self) -> Quantize:
        if self.calibration is not None and self.mode != "static-int8":
            raise ValueError("quantize.calibration applies to mode static-int8 only")
        return self


class OnnxExport(KubeModel):
    opset: int = Field(default=17, ge=7, le=23, description="ONNX opset of the exported model.")
    dynamic_batch: bool = Field(default=True, description="Export with a dynamic batch dimension.")
    quantize: Quantize | None = Field(
        default=None,
        description="Also write an int8 model (model.int8.onnx), evaluated on the validation "
        "split and measured like the float one (built-in recipes only).",
    )


class Output(KubeModel):
    """Where model.onnx, metrics.json and checkpoints go."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        _uri_rule(OUTPUT_SCHEMES))}

    uri: str = Field(
        default="",
        description="Output folder URI (file://, pvc://CLAIM/PATH, s3://, gs://, az://); "
        "empty: the operator's artifact store.",
    )
    secret_ref: SecretName = ""
    onnx: OnnxExport = Field(default_factory=OnnxExport, description="ONNX export settings.")

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: str) -> str:
        return check_uri(uri, OUTPUT_SCHEMES)


class Checkpoint(KubeModel):
    every_epochs: int = Field(
        default=1, ge=0, le=1000000, description="Checkpoint every N epochs (0: only at the end and on SIGTERM)."
    )
    resume: bool = Field(default=True, description="Resume from the latest checkpoint on restart.")
