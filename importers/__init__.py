"""Importers that turn pretrained teachers from other formats into dreidel modules."""
