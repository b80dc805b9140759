"""Render configuration as data: pydantic models loaded from YAML, validated once at the edge.

An unknown key, a wrong type or an out-of-range value raises ``ConfigError`` naming the key, the
value and what is allowed; the command line turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from .sampling import PRESETS, FifoConfig, MigaConfig, get_preset

TOY_MODEL = "toy"  # model.name of the shipped toy model, which renders only the toy world's prompts


class ConfigError(ValueError):
    """A configuration the user must fix (exit code 2)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSettings(_Strict):
    """Which base model, where, in what precision."""

    name: str = Field(TOY_MODEL, description="toy | toy-mixed | wan2.1-1.3b | wan2.1-1.3b-random | vc2-random | a diffusers Wan directory or hub id | a VideoCrafter2 .ckpt or .safetensors file")
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
    every_seconds: float = Field(60.0, gt=0, description="... or after this many seconds, whichever first (also while the queue fills)")


class EvaluationSettings(_Strict):
    """The quality numbers a finished job records (``miga eval``'s), computed after its video is done."""

    enabled: bool = Field(True, description="evaluate every job when its video is done (CPU, a few ms per frame with the pixel fallback)")
    dino: str | None = Field(None, description="local DINO ViT-B/16 weights directory for subject consistency; default: the pixel fallback")
    clip: str | None = Field(None, description="local CLIP ViT-B/32 weights directory for background consistency; default: the pixel fallback")
    bins: int = Field(10, ge=1, description="toy-world drift curves: bins of frames (at most one per frame)")


class StoryEntry(_Strict):
    """One part of a story: its prompt, from pixel frame ``at`` on."""

    at: int = Field(ge=0, description="first frame of this part (the first entry's is 0)")
    prompt: str


STORY_TRANSITION = 0  # docs/RESULTS.md, stories: chosen by measurement


class Story(_Strict):
    """A prompt schedule: ``parts`` in frame order, and how the sampler treats each switch."""

    parts: tuple[StoryEntry, ...] = Field(min_length=1)
    transition: int = Field(STORY_TRANSITION, ge=0, le=10_000, description="latents over which the text embeddings blend after each switch")
    at_switch: Literal["respect", "ignore"] = Field(
        "respect", description="respect: MIGA's guidance slots do not reach across a switch and reflection does not judge across one; ignore: as for one prompt (for comparison)"
    )

    def label(self) -> str:
        """The job's prompt text: the parts' prompts in order (manifests, job ids and status show it)."""
        return " -> ".join(p.prompt for p in self.parts)

    def rules(self, frames: int) -> None:
        """ValueError naming the first entry that breaks a rule: first at 0, increasing, before the end, a prompt."""
        for k, part in enumerate(self.parts):
            if k == 0 and part.at != 0:
                raise ValueError(f"story[0]: at is {part.at}; the first entry must start at frame 0")
            if k > 0 and part.at <= self.parts[k - 1].at:
                raise ValueError(f"story[{k}]: at {part.at} must be greater than story[{k - 1}]'s at ({self.parts[k - 1].at}): entries must be increasing")
            if part.at >= frames:
                raise ValueError(f"story[{k}]: at {part.at} points past the video's end (frames {frames}: at must be < {frames})")
            if not part.prompt.strip():
                raise ValueError(f"story[{k}] (at {part.at}): empty prompt")


class RenderConfig(_Strict):
    """Everything that decides the pixels of one render (and how it is stored and evaluated)."""

    model: ModelSettings = ModelSettings()
    sampler: SamplerSettings = SamplerSettings()
    video: VideoSettings = VideoSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    frames: int = Field(121, ge=1, le=1_000_000, description="output video frames")
    seed: int = Field(0, ge=0, lt=2**63)
    negative_prompt: str | None = None
    story: Story | None = Field(None, description="a prompt schedule instead of one prompt (miga render --story FILE)")

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
        if self.story is not None:
            self.story.rules(self.frames)
        return self

    def job_prompt(self, prompt: str | None) -> str:
        """The job's prompt: ``prompt``, or with a story its label; ConfigError if both or neither are given."""
        if self.story is not None and prompt is not None:
            raise ConfigError("prompt: leave it out with a story (the story gives the prompts)")
        if self.story is None and not (prompt or "").strip():
            raise ConfigError("prompt: give a prompt or a story")
        return self.story.label() if self.story is not None else prompt  # type: ignore[return-value]

    def story_json(self) -> str | None:
        """The story's entries as a JSON list of ``{at, prompt}`` (manifests and status show it), or None."""
        return json.dumps([p.model_dump() for p in self.story.parts]) if self.story is not None else None

    def check_prompt(self, prompt: str) -> None:
        """Raise ConfigError when the model cannot render ``prompt`` (or a story part): a toy model knows only its
        world (the part of the grammar its ``miga.json`` names, shipped or a checkpoint directory)."""
        from .models import toy_checkpoint
        from .models.toy_world.world import GRAMMAR, World

        world = World.recorded(toy_checkpoint(self.model.name))
        if world is None:
            return
        texts = [(f"story[{k}] prompt", p.prompt) for k, p in enumerate(self.story.parts)] if self.story else [("prompt", prompt)]
        for what, text in texts:
            try:
                world.parse(text)
            except ValueError as exc:
                raise ConfigError(f"{what} {text!r} is outside the toy model's grammar: {exc}. Grammar: {GRAMMAR}") from None

    def output_settings(self) -> dict[str, Any]:
        """Every setting that changes the output pixels (not checkpoint cadence, evaluation, or the device; no story
        key for a plain prompt)."""
        exclude: dict[str, Any] = {"checkpoint": True, "evaluation": True, "model": {"device"}}
        if self.story is None:
            exclude["story"] = True
        return self.model_dump(exclude=exclude)

    def fingerprint(self) -> str:
        """Hash of ``output_settings``."""
        return hashlib.sha256(json.dumps(self.output_settings(), sort_keys=True).encode()).hexdigest()[:16]


def job_identity(prompt: str, cfg: RenderConfig, start: dict[str, Any] | None = None) -> dict[str, Any]:
    """What decides a job's output: the full prompt, every output-affecting setting (seed included), and
    what a continuation starts from (``start``: an init video's sha256, or the job an extension extends)."""
    identity = {"prompt": prompt, "render": cfg.output_settings()}
    return identity | {"start": start} if start else identity


def identity_hash(identity: dict[str, Any]) -> str:
    """sha256 (hex) of a job identity in canonical JSON."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def job_id_for(prompt: str, cfg: RenderConfig, start: dict[str, Any] | None = None) -> str:
    """The default job id: a readable slug of the prompt plus a short hash of the whole identity."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48].strip("-") or "job"
    return f"{slug}-{identity_hash(job_identity(prompt, cfg, start))[:12]}"


def shorten(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters, so messages never echo unbounded input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text)} chars)"


def _flatten(value: Any, key: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for name, sub in value.items():
            flat |= _flatten(sub, f"{key}.{name}" if key else str(name))
        return flat
    return {key: value}


def identity_differences(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """``key: stored X, requested Y`` for every field where two job identities differ (values shortened)."""
    a, b = _flatten(stored), _flatten(requested)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return [f"{k.removeprefix('render.')}: stored {shorten(a.get(k))}, requested {shorten(b.get(k))}" for k in keys]


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if error["type"] == "value_error" and not key:  # a cross-field rule: its message names the key
        return str(error["ctx"]["error"])
    return f"{key}: {error['msg']} (got {shorten(error.get('input'))})"


def read_text(path: Path, what: str, encoding: str = "utf-8", limit: int | None = None) -> str:
    """A text file's content; ConfigError if it is over ``limit`` bytes or naming the line of its first bad byte."""
    if limit is not None and path.stat().st_size > limit:
        raise ConfigError(f"{what}: larger than {limit} bytes")
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{what}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x})") from None


def build_config(data: dict[str, Any] | None = None) -> RenderConfig:
    """Validate a plain dict into a RenderConfig, or raise ConfigError listing every problem."""
    try:
        return RenderConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e) for e in exc.errors())) from None


YAML_MAX_BYTES = 1 << 20
YAML_MAX_NODES = 100_000


def _expanded_nodes(node: yaml.Node, seen: dict[int, int], path: set[int]) -> int:
    """Nodes in ``node`` with every alias expanded (memoised per node); ValueError on a recursive alias."""
    if id(node) in seen:
        return seen[id(node)]
    if id(node) in path:
        raise ValueError("a recursive alias")
    path.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        children: list[yaml.Node] = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    total = 1
    for child in children:
        total += _expanded_nodes(child, seen, path)
        if total > YAML_MAX_NODES:
            break
    path.discard(id(node))
    seen[id(node)] = total
    return total


def load_yaml(text: str, what: str) -> Any:
    """Parse YAML with limits: at most 1 MiB and 100,000 nodes with aliases expanded (no alias bombs).

    Errors are ConfigErrors naming ``what``; they never repeat more than a short snippet of the input.
    """
    if len(text.encode()) > YAML_MAX_BYTES:
        raise ConfigError(f"{what}: larger than {YAML_MAX_BYTES} bytes")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            nodes = _expanded_nodes(node, {}, set())
            if nodes > YAML_MAX_NODES:
                raise ConfigError(f"{what}: more than {YAML_MAX_NODES} YAML nodes once aliases are expanded")
        return yaml.safe_load(text)
    except ValueError as exc:  # a recursive alias
        raise ConfigError(f"{what}: not usable YAML: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: not valid YAML: {shorten(str(exc), 400)}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {shorten(text)}: expected key=value, e.g. sampler.miga.group=7")
    key, value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {shorten(text)}: empty key")
    return key.strip().split("."), load_yaml(value, f"--set {shorten(key.strip())}") if value.strip() else None


def story_data(value: Any, what: str) -> dict[str, Any]:
    """A story as given (a list of ``{at, prompt}`` entries, a mapping with ``parts`` and story settings, or
    either as YAML/JSON text) -> the mapping ``RenderConfig.story`` validates."""
    data = load_yaml(value, what) if isinstance(value, str) else value  # JSON is YAML
    if isinstance(data, list):
        return {"parts": data}
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a list of {{at, prompt}} entries or a mapping with parts")
    return data


def load_story(path: str | Path) -> dict[str, Any]:
    """A story file (YAML or JSON), as ``story_data`` reads it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--story {p}: no such file")
    return story_data(read_text(p, f"--story {p}", limit=YAML_MAX_BYTES), f"--story {p}")


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), story: dict[str, Any] | None = None, **fields: Any
) -> RenderConfig:
    """YAML file (optional) + ``--set key=value`` overrides + explicit fields, validated together; a ``story``
    (``load_story``) is merged over the file's and the overrides' story settings."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config {p}: no such file")
        data = load_yaml(read_text(p, f"--config {p}", limit=YAML_MAX_BYTES), f"--config {p}") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"--config {p}: the top level must be a mapping")
    for text in overrides:
        keys, value = parse_override(text)
        if len(keys) == 1 and fields.get(keys[0]) is not None:
            raise ConfigError(f"--set {keys[0]}=... and --{keys[0].replace('_', '-')}: both set {keys[0]}; give one of them")
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {shorten(text)}: {k} is not a section")
        node[keys[-1]] = value
    for key, value in fields.items():
        if value is not None:
            data[key] = value
    if story is not None:
        settings = data.get("story")
        data["story"] = {**(settings if isinstance(settings, dict) else {}), **story}
    return build_config(data)
