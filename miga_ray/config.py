"""Render configuration as data: pydantic models loaded from YAML, validated once at the edge.

An unknown key, a wrong type or an out-of-range value raises ``ConfigError`` naming the key, the
value and what is allowed; the command line turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from .sampling import PRESETS, FifoConfig, MigaConfig, get_preset

TOY_MODEL = "toy"  # model.name of the shipped toy model, which renders only the toy world's prompts


class ConfigError(ValueError):
    """A configuration the user must fix (exit code 2)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Strict):
    """Which base model, where, in what precision."""

    name: str = Field(TOY_MODEL, description="toy | wan2.1-1.3b | wan2.1-1.3b-random | vc2-random | a diffusers Wan directory or hub id | a VideoCrafter2 .ckpt or .safetensors file")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


def _overrides(config: type, doc: str) -> type[_Strict]:
    """A pydantic model whose fields are ``config``'s (a sampling dataclass), each optional and unset by
    default: the settings are declared once, in ``sampling/config.py``, and checked there by ``validate``
    once merged with the preset; pydantic checks only their types."""
    hints = get_type_hints(config)
    fields: dict[str, Any] = {f.name: (hints[f.name] | None, None) for f in dataclasses.fields(config)}
    return create_model(config.__name__.replace("Config", "Settings"), __base__=_Strict, __doc__=doc, **fields)


MigaSettings = _overrides(MigaConfig, "MIGA hyperparameters (see ``miga_ray.sampling.MigaConfig``); unset fields come from the preset.")
FifoSettings = _overrides(FifoConfig, "FIFO-Diffusion settings (see ``miga_ray.sampling.FifoConfig``); unset fields come from the preset.")


class SamplerSettings(_Strict):
    """The long-video sampler over the base model's level grid."""

    kind: Literal["miga", "fifo"] = "miga"
    preset: Literal[tuple(PRESETS)] = "toy"  # type: ignore[valid-type]  # the names of sampling.PRESETS
    num_levels: int | None = Field(None, ge=2, le=1000, description="T; default: the preset's")
    shift: float | None = Field(None, gt=0, description="flow time shift; default: the model scheduler's")
    cfg_scale: float | None = Field(None, ge=1.0)
    miga: MigaSettings = MigaSettings()
    fifo: FifoSettings = FifoSettings()

    def levels(self) -> int:
        return self.num_levels or get_preset(self.preset).num_levels

    def guidance_scale(self) -> float:
        return self.cfg_scale if self.cfg_scale is not None else get_preset(self.preset).cfg_scale

    def miga_config(self, window: int | None = None) -> MigaConfig:
        """The preset's MIGA config with this file's overrides (and the model's window if not set)."""
        base = get_preset(self.preset).miga
        changes = {k: v for k, v in self.miga.model_dump().items() if v is not None}
        if window is not None and "window" not in changes:
            changes.update(window=window, stride=window // 2)
        return base.with_(**changes)

    def fifo_config(self, window: int | None = None) -> FifoConfig:
        base = get_preset(self.preset).fifo
        changes = {k: v for k, v in self.fifo.model_dump().items() if v is not None}
        return FifoConfig(**{**base.to_dict(), "window": window or base.window, **changes})


class VideoSettings(_Strict):
    fps: int = Field(16, ge=1, le=120)
    height: int | None = Field(None, ge=16, multiple_of=16, description="pixels; default: the model's")
    width: int | None = Field(None, ge=16, multiple_of=16, description="pixels; default: the model's")
    crf: int = Field(16, ge=0, le=51, description="H.264 quality (lower is better)")
    png_frames: bool = Field(False, description="also write lossless PNG frames for evaluation")


class CheckpointSettings(_Strict):
    every_latents: int = Field(32, ge=1, description="checkpoint after this many new clean latents")
    every_seconds: float = Field(120.0, gt=0, description="... or after this many seconds, whichever first")


class RenderConfig(_Strict):
    """Everything that decides the pixels of one render (and how it is stored)."""

    model: ModelSettings = ModelSettings()
    sampler: SamplerSettings = SamplerSettings()
    video: VideoSettings = VideoSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    frames: int = Field(121, ge=1, le=1_000_000, description="output video frames")
    seed: int = Field(0, ge=0, lt=2**63)
    negative_prompt: str | None = None

    @model_validator(mode="after")
    def _sampler_rules(self) -> RenderConfig:
        levels = self.sampler.levels()
        try:
            if self.sampler.kind == "miga":
                self.sampler.miga_config(self.sampler.miga.window).validate(levels)
            else:
                self.sampler.fifo_config(self.sampler.fifo.window).validate(levels)
        except ValueError as exc:
            raise ValueError(f"sampler.{self.sampler.kind}.{exc}") from None
        return self

    def check_prompt(self, prompt: str) -> None:
        """Raise ConfigError when the model cannot render ``prompt``: the toy model knows only its grammar."""
        if self.model.name != TOY_MODEL:
            return
        from .models.toy_world.world import GRAMMAR, parse_prompt

        try:
            parse_prompt(prompt)
        except ValueError as exc:
            raise ConfigError(f"prompt {prompt!r} is outside the toy model's grammar: {exc}. Grammar: {GRAMMAR}") from None

    def fingerprint(self) -> str:
        """Hash of everything that changes the output pixels (not checkpoint cadence)."""
        data = self.model_dump(exclude={"checkpoint": True, "model": {"device"}})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if error["type"] == "value_error" and not key:  # a cross-field rule: its message names the key
        return str(error["ctx"]["error"])
    return f"{key}: {error['msg']} (got {error.get('input')!r})"


def build_config(data: dict[str, Any] | None = None) -> RenderConfig:
    """Validate a plain dict into a RenderConfig, or raise ConfigError listing every problem."""
    try:
        return RenderConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e) for e in exc.errors())) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. sampler.miga.group=7")
    key, value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text!r}: empty key")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), **fields: Any) -> RenderConfig:
    """YAML file (optional) + ``--set key=value`` overrides + explicit fields, validated together."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config {p}: no such file")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {p}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--config {p}: the top level must be a mapping")
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {k} is not a section")
        node[keys[-1]] = value
    for key, value in fields.items():
        if value is not None:
            data[key] = value
    return build_config(data)
