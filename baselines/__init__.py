"""Conv-3D baseline tokenizers CoordTok is measured against.

* :mod:`.causal` -- causal 3D blocks (convs, per-frame GroupNorm, res blocks, adaptive norm,
  depth-to-space upsampler, image-kernel inflation) shared by MAGVIT-v2, ProMAG and REGEN;
* :mod:`.lfq` -- lookup-free quantization;
* :mod:`.magvit2` -- MAGVIT-v2 (Yu et al., ICLR 2024), its config and analytic parameter count;
* :mod:`.discriminator`, :mod:`.gan` -- its 3D StyleGAN discriminator and GAN/regularizer terms;
* :mod:`.promag` -- ProMAG (Mahapatra et al. 2025): Table 4 layouts, KL bottleneck, progressive
  growing, its PatchGAN;
* :mod:`.chunking` -- long videos through a chunk tokenizer (drop or linear blend of overlaps);
* :mod:`.train` -- MAGVIT-v2 and ProMAG training on :func:`coordtok.loop.fit`
  (``coordtok train --config configs/baselines/<name>.yaml``);
* :mod:`.checkpoint` -- :func:`~.checkpoint.load_baseline`, a trained MAGVIT-v2 or ProMAG.

REGEN's encoder is built from these blocks; its diffusion decoder and training live in
:mod:`baselines.regen` and :mod:`baselines.regen_train` (they use the SiT transport).

Import from the submodules (``from baselines.magvit2 import MagvitV2``): the package
itself imports nothing, so loading the shared causal blocks pulls in no model code.
"""
