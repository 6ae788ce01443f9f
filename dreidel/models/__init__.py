"""The model zoo: native dreidel models whose projections are built through `linear=` factories.

Each model lives in its own module (`dreidel.models.whisper`, `dreidel.models.llama`,
`dreidel.models.vit`, `dreidel.models.unet3d`); import the one you need.
"""
