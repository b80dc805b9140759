"""Compare miga-ray's VideoCrafter2 port with the reference implementation and print the largest differences.

    OMP_NUM_THREADS=1 python jobs/compare_vc2_reference.py /tmp/vc_ref \
        [--write-keys tests/data/vc2_reference_keys.json.gz]

``/tmp/vc_ref`` is a checkout of AILab-CVC/VideoCrafter (its ``lvdm/`` and ``configs/``); it is
imported from there, never copied. It needs ``einops``, ``omegaconf``, ``open_clip_torch`` and
``ftfy``; ``torchvision``, ``pytorch_lightning``, ``kornia`` and ``cv2``, which the compared code never runs, are
replaced by stubs when missing.

What runs: the reference ``LatentDiffusion`` built from ``configs/inference_t2v_512_v2.0.yaml`` with
the sizes reduced (UNet width 32, VAE width 32, a 3-block text tower of width 64 under OpenCLIP's
real tokenizer); our parts get random weights, the reference loads them under the published key
names, our loader reads the reference's whole state dict back, and both run the same inputs:
the UNet (one timestep per video, and one per frame), the VAE encoder (posterior mean) and decoder frame by frame, the text
encoder from prompts, and one DDIM step per frame at every level. The full-size model is built on
the meta device only for its key names and shapes (``--write-keys`` saves them for the tests).

The reference UNet takes one timestep per video. MIGA's port of it changes two lines to take one
per frame (keep the per-frame time embeddings instead of repeating one per frame); that change is
applied to the imported module here, not to the checkout.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from miga_ray.models.vc2.autoencoder import LATENT_SCALE, DecoderConfig, FrameDecoder
from miga_ray.models.vc2.model import (
    FPS,
    TRAIN_STEPS,
    Parts,
    VC2Config,
    build_parts,
    checkpoint_state_dict,
    load_parts,
    lvdm_grid,
    vc2_grid,
)
from miga_ray.models.vc2.text import ClipTokenizer, TextConfig, find_bpe_vocab
from miga_ray.models.vc2.unet import UNetConfig
from miga_ray.sampling.grid import LevelGrid
from miga_ray.sampling.solvers import DDIM

TINY = VC2Config(
    unet=UNetConfig(model_channels=32, head_channels=16, context_dim=64),
    vae=DecoderConfig(channels=32),
    text=TextConfig(width=64, heads=4, layers=3),
)
TINY_CLIP = {  # an OpenCLIP model config of the tiny text tower (and a token vision tower)
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}
PROMPTS = [
    "A corgi running on a lawn, 4K, high quality.",
    "",
    "an astronaut floating in space &amp; the   Earth's   glow; it's 3:45pm (UTC+1) — café, naïve, 東京",
    " ".join(["a very long prompt that the tokenizer has to truncate"] * 12),
]
PER_FRAME_OLD = "        emb = emb.repeat_interleave(repeats=t, dim=0)\n"
PER_FRAME_NEW = "        if x.shape[0] == timesteps.shape[0]:  # one timestep per video\n    " + PER_FRAME_OLD


class _Anything:
    """Stand-in for any attribute or call of a stubbed module that the compared code never executes."""

    def __call__(self, *args, **kwargs) -> _Anything:
        return _Anything()

    def __getattr__(self, name: str) -> _Anything:
        return _Anything()


class _LightningModule(nn.Module):
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


STUBS = {
    "torchvision": ("torchvision.transforms", "torchvision.transforms.functional", "torchvision.utils",
                    "torchvision.ops", "torchvision.ops.misc"),
    "pytorch_lightning": (),
    "cv2": (),
    "kornia": (),
}  # fmt: skip


def install_stubs() -> list[str]:
    """Stub the packages of ``STUBS`` that are not installed; returns their names."""
    for name in ("transformers", "transformers.models.t5.modeling_t5", "transformers.models.clip.modeling_clip"):
        importlib.import_module(name)  # the reference and OpenCLIP import these; their import-time checks must not meet a stub
    missing = [top for top in STUBS if importlib.util.find_spec(top) is None]
    for top in missing:
        for name in (top, *STUBS[top]):
            module = types.ModuleType(name)
            module.__getattr__ = lambda attr: _Anything()  # type: ignore[method-assign]
            sys.modules[name] = module
            if "." in name:
                parent, child = name.rsplit(".", 1)
                setattr(sys.modules[parent], child, module)
    if "pytorch_lightning" in missing:
        sys.modules["pytorch_lightning"].LightningModule = _LightningModule
    return missing


def _on_cpu(fn, *args, **kwargs):
    with torch.device("cpu"):
        return fn(*args, **kwargs)


def import_reference(root: Path) -> types.SimpleNamespace:
    """The reference's modules, imported from ``root`` with the per-frame change and the stubs."""
    print("stubbed:", ", ".join(install_stubs()) or "nothing")
    sys.path.insert(0, str(root))
    import lvdm.modules.attention  # noqa: F401  (openaimodel3d's imports, before it is replaced)

    name, path = "lvdm.modules.networks.openaimodel3d", root / "lvdm/modules/networks/openaimodel3d.py"
    source = path.read_text()
    if source.count(PER_FRAME_OLD) != 1:
        raise SystemExit(f"{path}: the line MIGA changes for per-frame timesteps is not there once")
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path))
    exec(compile(source.replace(PER_FRAME_OLD, PER_FRAME_NEW), str(path), "exec"), module.__dict__)
    sys.modules[name] = module

    import open_clip
    from lvdm.models.samplers import ddim
    from omegaconf import OmegaConf
    from utils.utils import instantiate_from_config

    open_clip.factory._MODEL_CONFIGS["miga-tiny-text"] = TINY_CLIP
    create = open_clip.create_model_and_transforms  # build on the current default device (meta for the key list)
    open_clip.create_model_and_transforms = lambda arch, device=None, **kw: create(arch, device=torch.get_default_device(), **kw)
    ddim.DDIMSampler.register_buffer = lambda self, key, value: setattr(self, key, value)  # it moves them to CUDA
    from lvdm.models import ddpm3d

    schedule = ddpm3d.DDPM.register_schedule  # numpy and asserts on tensors: the CPU even when building on meta
    ddpm3d.DDPM.register_schedule = lambda self, *a, **k: _on_cpu(schedule, self, *a, **k)
    config = OmegaConf.load(root / "configs/inference_t2v_512_v2.0.yaml")
    return types.SimpleNamespace(config=config, instantiate=instantiate_from_config, ddim=ddim, open_clip=open_clip)


def reference_model(ref: types.SimpleNamespace, tiny: bool) -> nn.Module:
    """The reference ``LatentDiffusion`` of the VC2 config, or its reduced twin (``TINY``)."""
    cfg = copy.deepcopy(ref.config.model)
    if tiny:
        cfg.params.unet_config.params.update(model_channels=32, num_head_channels=16, context_dim=64, use_checkpoint=False)
        cfg.params.first_stage_config.params.ddconfig.ch = 32
        cfg.params.cond_stage_config.params.arch = "miga-tiny-text"
    return ref.instantiate(cfg).eval()


def shapes(state_dict: dict[str, Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state_dict.items()}


def check_keys(reference: dict[str, list[int]], config: VC2Config) -> dict[str, int]:
    """Our parts' keys and shapes against the reference's: the same, plus the keys we leave unread."""
    with torch.device("meta"):
        ours = shapes(checkpoint_state_dict(build_parts(config)))
    extra = sorted(set(ours) - set(reference))
    wrong = sorted(k for k in ours if k in reference and ours[k] != reference[k])
    unread = [k for k in reference if k not in ours]
    prefixed = [k for k in unread if k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model."))]
    surprises = [k for k in prefixed if not config.unused(k)]
    if extra or wrong or surprises:
        raise SystemExit(f"key mismatch: ours only {extra[:5]}, shapes {wrong[:5]}, unread {surprises[:5]}")
    return {"keys": len(reference), "ours": len(ours), "unread_prefixed": len(prefixed), "unread_other": len(unread) - len(prefixed)}


def perturb_norms(parts: Parts) -> None:
    """Norm layers start at weight 1, bias 0; move them off so their affine parameters are exercised."""
    gen = torch.Generator().manual_seed(1)
    for part in parts.named().values():
        for m in part.modules():
            if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
                m.weight.data += 0.1 * torch.randn(m.weight.shape, generator=gen)
                m.bias.data += 0.1 * torch.randn(m.bias.shape, generator=gen)


def diff(ours: Tensor, ref: Tensor) -> dict[str, float]:
    a, b = ours.double(), ref.double()
    return {"max_abs": (a - b).abs().max().item(), "max_rel": ((a - b).abs().max() / b.abs().max()).item(), "ref_max": b.abs().max().item()}


@torch.no_grad()
def compare_models(ref: types.SimpleNamespace) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    parts = build_parts(TINY)
    perturb_norms(parts)
    model = reference_model(ref, tiny=True)
    check_keys(shapes(model.state_dict()), TINY)
    model.load_state_dict(checkpoint_state_dict(parts), strict=False)  # check_keys: nothing unexpected
    parts = load_parts(model.state_dict(), TINY)  # our loader, on the reference's whole state dict
    unet, vae, text = parts.unet.eval(), parts.vae.eval(), parts.text.eval()
    gen = torch.Generator().manual_seed(2)
    out: dict[str, dict[str, float]] = {}

    x = torch.randn(2, 4, 16, 16, 16, generator=gen)
    ctx = torch.randn(2, 77, 64, generator=gen)
    t, fps = torch.tensor([981, 421]), torch.tensor([FPS, 24])
    out["unet, one timestep per video (B=2, F=16, 16x16)"] = diff(
        unet(x, t.float(), ctx, fps), model.apply_model(x, t, {"c_crossattn": [ctx], "fps": fps})
    )
    tf = torch.randint(0, 1000, (16,), generator=gen)
    out["unet, one timestep per frame (B=1, F=16, 16x16)"] = diff(
        unet(x[:1], tf[None].float(), ctx[:1], fps[:1]), model.apply_model(x[:1], tf, {"c_crossattn": [ctx[:1]], "fps": fps[:1]})
    )

    z = torch.randn(2, 4, 3, 8, 8, generator=gen)
    frames = torch.stack([vae(z[:, :, i] / LATENT_SCALE) for i in range(z.shape[2])], dim=2)
    out["vae decoder, per frame (64x64)"] = diff(frames, model.decode_first_stage_2DAE(z))
    ref_uint8 = ((model.decode_first_stage_2DAE(z).clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 4, 1)
    ours_uint8 = FrameDecoder(vae).push(z).double()
    out["vae decoder, uint8 frames"] = {"max_abs": (ours_uint8 - ref_uint8).abs().max().item(),
                                        "values_differing": int((ours_uint8 != ref_uint8).sum()), "values": ref_uint8.numel()}  # fmt: skip

    images = torch.rand(3, 3, 64, 64, generator=gen) * 2 - 1
    ours_z = vae.encode(images) * LATENT_SCALE
    out["vae encoder, posterior mean (64x64)"] = diff(ours_z, model.first_stage_model.encode(images).mode() * model.scale_factor)
    out["vae encode then decode, ours vs reference (64x64)"] = diff(vae(ours_z / LATENT_SCALE), model.decode_first_stage_2DAE(
        (model.first_stage_model.encode(images).mode() * model.scale_factor).transpose(0, 1)[None])[0].transpose(0, 1))

    tokenizer = ClipTokenizer(find_bpe_vocab())
    tokens, ref_tokens = tokenizer(PROMPTS), ref.open_clip.tokenize(PROMPTS)
    out["tokenizer ids"] = {"mismatches": int((tokens != ref_tokens).sum()), "tokens": tokens.numel()}
    out["text encoder, penultimate layer"] = diff(text(tokens), model.get_learned_conditioning(PROMPTS))
    return out


def ddim_step_reference(ref: types.SimpleNamespace, model: nn.Module, steps: int, spacing: str, use_scale: bool,
                        x: Tensor, eps: Tensor, noise: Tensor) -> Tensor:  # fmt: skip
    """The reference ``DDIMSampler.p_sample_ddim`` (eta 1), frame f at DDIM index f; ``spacing="miga"``
    swaps in MIGA's ``make_ddim_timesteps`` (round(linspace(0, 999, T)), no +1)."""
    ddim = ref.ddim
    original = ddim.make_ddim_timesteps
    if spacing == "miga":
        ddim.make_ddim_timesteps = lambda ddim_discr_method, num_ddim_timesteps, num_ddpm_timesteps, verbose=True: (
            np.linspace(0, num_ddpm_timesteps - 1, num_ddim_timesteps).round().astype(np.int64)
        )
    sampler = ddim.DDIMSampler(model)
    sampler.make_schedule(steps, ddim_eta=1.0, verbose=False)
    ddim.make_ddim_timesteps = original
    sampler.use_scale = use_scale
    outs = []
    for f in range(x.shape[2]):
        model.apply_model = lambda *a, f=f, **k: eps[:, :, f : f + 1]
        ddim.noise_like = lambda shape, device, repeat=False, f=f: noise[:, :, f : f + 1]
        t = torch.full((1,), int(sampler.ddim_timesteps[f]))
        outs.append(sampler.p_sample_ddim(x[:, :, f : f + 1], None, t, f)[0])
    del model.apply_model
    return torch.cat(outs, dim=2)


@torch.no_grad()
def compare_schedule(ref: types.SimpleNamespace) -> dict[str, dict[str, float]]:
    model = reference_model(ref, tiny=True)
    out = {}
    ours_abar = lvdm_grid(TRAIN_STEPS - 1).signal ** 2  # level k = training step k
    out["alphas_cumprod (1000 training steps)"] = diff(ours_abar, model.alphas_cumprod.double())
    out["latent scale factor"] = {"equal": LATENT_SCALE == float(ref.config.model.params.scale_factor), "value": LATENT_SCALE}
    gen = torch.Generator().manual_seed(3)
    cases: list[tuple[str, int, str, LevelGrid, bool]] = [
        ("LVDM spacing, T=50 (lvdm_grid)", 50, "lvdm", lvdm_grid(50), False),
        ("MIGA spacing, T=64 (vc2_grid)", 64, "miga", vc2_grid(64), False),
        ("MIGA spacing, T=64, reference use_scale on", 64, "miga", vc2_grid(64), True),
    ]
    for name, steps, spacing, grid, use_scale in cases:
        x, eps, noise = (torch.randn(1, 4, steps, 4, 4, generator=gen) for _ in range(3))
        levels = torch.arange(1, steps + 1)  # frame f at level f + 1 = DDIM index f
        ours = DDIM(grid, eta=1.0).step(x, eps, levels, noise)
        out[f"ddim step per frame, {name}"] = diff(ours, ddim_step_reference(ref, model, steps, spacing, use_scale, x, eps, noise))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="checkout of AILab-CVC/VideoCrafter")
    parser.add_argument("--write-keys", type=Path, help="save the full model's key names and shapes here (.json.gz)")
    args = parser.parse_args()
    ref = import_reference(args.reference.resolve())
    with torch.device("meta"):
        keys = shapes(reference_model(ref, tiny=False).state_dict())
    print("full-size key check:", json.dumps(check_keys(keys, VC2Config())))
    if args.write_keys:
        args.write_keys.write_bytes(gzip.compress(json.dumps(keys, separators=(",", ":")).encode(), mtime=0))  # reproducible bytes
        print(f"wrote {len(keys)} keys to {args.write_keys}")
    results = compare_models(ref) | compare_schedule(ref)
    width = max(map(len, results))
    for name, numbers in results.items():
        print(f"{name:<{width}}  " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items()))


if __name__ == "__main__":
    main()
