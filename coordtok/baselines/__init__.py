"""Conv-3D baseline tokenizers CoordTok is measured against.

* :mod:`.causal` -- causal 3D blocks (convs, per-frame GroupNorm, res blocks, adaptive norm,
  depth-to-space upsampler, image-kernel inflation) shared by MAGVIT-v2, ProMAG and REGEN;
* :mod:`.lfq` -- lookup-free quantization;
* :mod:`.magvit2` -- MAGVIT-v2 (Yu et al., ICLR 2024), its config and analytic parameter count;
* :mod:`.discriminator`, :mod:`.gan` -- its 3D StyleGAN discriminator and GAN/regularizer terms;
* :mod:`.chunking` -- long videos through a chunk tokenizer (drop or linear blend of overlaps).

Import from the submodules (``from coordtok.baselines.magvit2 import MagvitV2``): the package
itself imports nothing, so loading the shared causal blocks pulls in no model code.
"""
