"""fmmformer_pl: FMMformer attention (near field + far field) and models, in pure PyTorch.

Layers, lowest first (an import never points up this ladder):
    fmmformer_pl.attention  -- the math: near_field, far_field, the blended attention module
    fmmformer_pl.models     -- encoder, decoder LM, heads (plain nn.Module, no Lightning)
    fmmformer_pl.tasks      -- LightningModules wrapping the models
    cli.py                  -- LightningCLI entry point
"""

__version__ = "0.1.0"
