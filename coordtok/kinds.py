"""The one table of kinds: every model the project trains, loads, evaluates or converts.

A config's top-level ``kind:`` (none for CoordTok) and a checkpoint's ``"kind"`` entry name a row
of :data:`KINDS`; every command reads the row instead of dispatching on the name itself:
``train`` (its config loader and training task), ``eval-recon`` / ``reconstruct`` / the demo (its
reconstructor), ``profile`` (its training step), ``convert`` (its converter).

The entries are ``"module:attribute"`` names, imported only when used: ``coordtok`` is the base
package and imports neither ``sit``, ``baselines`` nor ``eval``, while this table names objects in
all of them (like ``coordtok/cli.py``, it is a composition root). ``tests/test_kinds.py`` resolves
every entry, and builds, trains and reconstructs every tokenizer through this table.

Adding a tokenizer: its model (and model config), its run-config loader, its
:class:`coordtok.loop.Task`, a :class:`eval.tokenizers.Reconstructor`, and one row here.
"""

from __future__ import annotations

import dataclasses
import pkgutil
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, load_yaml

ROOT = Path(__file__).resolve().parents[1]  # the repository: the example configs are read from it


@dataclass(frozen=True)
class Kind:
    """One row: a kind of model and where each command finds its pieces."""

    name: str  # the config's ``kind:`` and the checkpoint's ``"kind"``
    title: str  # how messages and tables name it
    role: str  # "tokenizer" (``coordtok train``, eval-recon) or "generator" (``coordtok sit-train``)
    config: str | None  # ``(path_or_dict, overrides) -> run config``, read strictly (None: not trained here)
    model_config: str  # the model section's dataclass
    model: str  # ``(model config) -> nn.Module``
    task: str | None  # the :class:`coordtok.loop.Task`: ``(run config)``; a generator's ``(run config, latents)``
    example: str | None  # a small config of this kind (repository path): the tests and the demo train it
    reconstructor: str | None = None  # ``(checkpoint, **protocol options) -> Reconstructor`` (tokenizers)
    profile: str | None = (
        None  # ``(kind, model section, frames, mode, num_coords, batch, device) -> (model, inputs, step)``
    )
    converter: str | None = None  # ``(checkpoint dict, args) -> (state, info) | None`` for ``coordtok convert``
    note: str | None = None  # why an entry is missing, for the one-line error that names it

    def resolve(self, entry: str):
        """The object an entry names (imported now)."""
        target = getattr(self, entry)
        if target is None:
            why = f": {self.note}" if self.note else ""
            raise ConfigError(f"{self.title} has no {entry} (kind {self.name!r}){why}")
        return pkgutil.resolve_name(target)

    def load_config(self, path_or_dict, overrides: dict | None = None):
        """The run config of a file (or dict) of this kind, read and checked strictly."""
        return self.resolve("config")(path_or_dict, overrides)


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "coordtok",
            "CoordTok",
            "tokenizer",
            config="coordtok.config:load_tokenizer_config",
            model_config="coordtok.config:ModelConfig",
            model="coordtok.model:CoordTok",
            task="coordtok.train:TokenizerTask",
            example="configs/tokenizer/tiny.yaml",
            reconstructor="eval.tokenizers:CoordTokReconstructor.load",
            profile="eval.profile:coordtok_step",
            converter="coordtok.commands:convert_tokenizer",
        ),
        Kind(
            "magvit2",
            "MAGVIT-v2",
            "tokenizer",
            config="baselines.train:load_magvit2_run_config",
            model_config="baselines.magvit2:MagvitV2Config",
            model="baselines.magvit2:MagvitV2",
            task="baselines.train:MagvitV2Task",
            example="configs/baselines/magvit2-tiny.yaml",
            reconstructor="eval.tokenizers:MagvitReconstructor.load",
            profile="eval.profile:conv3d_step",
        ),
        Kind(
            "promag",
            "ProMAG",
            "tokenizer",
            config="baselines.train:load_promag_run_config",
            model_config="baselines.promag:ProMAGConfig",
            model="baselines.promag:ProMAG",
            task="baselines.train:ProMAGTask",
            example="configs/baselines/promag-tiny-4x.yaml",
            reconstructor="eval.tokenizers:ProMAGReconstructor.load",
            profile="eval.profile:conv3d_step",
        ),
        Kind(
            "regen",
            "REGEN",
            "tokenizer",
            config="baselines.regen_train:load_regen_run_config",
            model_config="baselines.regen:RegenConfig",
            model="baselines.regen:Regen",
            task="baselines.regen_train:RegenTask",
            example="configs/baselines/regen-tiny.yaml",
            reconstructor="eval.tokenizers:RegenReconstructor.load",
            profile="eval.profile:regen_step",
        ),
        Kind(
            "sit",
            "CoordTok-SiT",
            "generator",
            config="sit.config:load_sit_run_config",
            model_config="sit.config:SiTConfig",
            model="sit.models:TriplaneSiT",
            task="sit.train:SiTTask",
            example="configs/sit/tiny.yaml",
            profile="eval.profile:sit_step",
            converter="sit.commands:convert_sit_file",
        ),
    )
}


# Kinds of models from other libraries, reached as ``<prefix>:<which>``: ``diffusers:<ClassName>``
# (a diffusers autoencoder class, default config) or ``diffusers:<folder>`` (a pretrained one the
# user has). They are tokenizers to every command that evaluates or profiles one (eval-recon,
# reconstruct, profile), but have no config loader and no task: this project does not train them.
# Not in KINDS, so tokenizers() -- what `coordtok train` takes -- does not list them.
PREFIXED: dict[str, Kind] = {
    "diffusers": Kind(
        "diffusers",
        "diffusers autoencoder",
        "tokenizer",
        config=None,
        model_config="eval.diffusers_vae:DiffusersVAEConfig",
        model="eval.diffusers_vae:build_autoencoder",
        task=None,
        example=None,
        reconstructor="eval.diffusers_vae:DiffusersReconstructor.load",
        profile="eval.diffusers_vae:autoencoder_step",
        note="a pretrained video autoencoder of diffusers, evaluated and profiled here, not trained",
    ),
}


def prefixed_kind(name) -> Kind | None:
    """The row of a ``<prefix>:<which>`` name (:data:`PREFIXED`) named after it; None for other names."""
    prefix, sep, which = str(name).partition(":")
    row = PREFIXED.get(prefix) if sep and which else None
    return None if row is None else dataclasses.replace(row, name=str(name), title=f"{which} ({prefix})")


def get_kind(name: str | None, where: str = "kind", role: str | None = None) -> Kind:
    """The row of ``name`` (``None``: CoordTok, whose configs have no ``kind:``; ``<prefix>:<which>``:
    a :data:`PREFIXED` row); a one-line error naming ``where`` for an unknown kind, or one of another
    ``role`` than asked for."""
    name = name or "coordtok"
    kind = KINDS.get(name) or prefixed_kind(name)
    known = [k.name for k in KINDS.values() if role is None or k.role == role]
    known += [f"{p}:<ClassName or folder>" for p, k in PREFIXED.items() if role is None or k.role == role]
    if kind is None or (role is not None and kind.role != role):
        what = f"a {role}" if role else "a kind"
        raise ConfigError(
            f"{where}: kind: {name!r} is not {what} this project has (known: {', '.join(known)}; "
            f"a CoordTok config has no kind:)"
        )
    return kind


def kind_of_config(path_or_dict, role: str | None = None) -> Kind:
    """The row of a config file's (or dict's) top-level ``kind:``."""
    raw = path_or_dict if isinstance(path_or_dict, dict) else load_yaml(path_or_dict)
    return get_kind(raw.get("kind"), str(path_or_dict) if not isinstance(path_or_dict, dict) else "config", role)


def tokenizers() -> list[Kind]:
    """The rows ``coordtok train`` and ``eval-recon`` take."""
    return [k for k in KINDS.values() if k.role == "tokenizer"]
